"""Solvers on the trained schedule, and the speed switches (`--scheduler`, `--step-cache`, `--fast`) reaching the
denoising loop of every command that renders: animate, zero-shot, compare (flags and SPEC options)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from marionet.cli import main
from marionet.inference import speed as S
from marionet.inference.sampling import SamplingMixin
from marionet.inference.schedulers import SCHEDULERS, TRAINED_KEYS, make_scheduler, scheduler_name
from marionet.models.tiny import training_scheduler

NAMES = list(SCHEDULERS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("zero_snr", [False, True], ids=["eps", "v-zero-snr"])
def test_each_solver_keeps_the_trained_schedule(name, zero_snr):
    trained = training_scheduler("v_prediction" if zero_snr else "epsilon", zero_terminal_snr=zero_snr)
    solver = make_scheduler(name, trained.config)
    assert scheduler_name(solver) == name
    for key in TRAINED_KEYS:
        assert solver.config.get(key) == trained.config.get(key), key
    torch.testing.assert_close(solver.alphas_cumprod, trained.alphas_cumprod)  # same betas (rescaled or not)
    trained.set_timesteps(10)
    solver.set_timesteps(10)
    # Zero terminal SNR: the trained DDIM's trailing timesteps exactly, from t = 999. Otherwise (DDIM steps excepted)
    # Karras sigmas: from the top of the schedule down to the cleanest level, denser at low noise.
    ours, theirs = [int(t) for t in solver.timesteps], [int(t) for t in trained.timesteps]
    if zero_snr or name == "ddim":
        assert ours == theirs
    else:
        assert solver.config.use_karras_sigmas and ours[0] >= theirs[0] and ours == sorted(ours, reverse=True)
        assert ours[-1] <= theirs[-1] and ours[-2] - ours[-1] < ours[0] - ours[1]
    assert len(ours) == 10
    # A round trip DDIM -> solver -> DDIM loses nothing of the trained schedule.
    back = make_scheduler("ddim", solver.config)
    assert {k: back.config.get(k) for k in trained.config if not k.startswith("_")} == \
        {k: v for k, v in trained.config.items() if not k.startswith("_")}


@pytest.mark.parametrize("name", NAMES)
def test_each_solver_denoises_a_gaussian_to_its_mean(name):
    """With the exact prediction for a point mass at x0, every solver must land on x0: a real check that
    the solver runs the schedule (a wrong prediction type or sigma handling misses by a lot)."""
    trained = training_scheduler("v_prediction", zero_terminal_snr=True)
    solver = make_scheduler(name, trained.config)
    solver.set_timesteps(8)
    x0 = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    sample = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)) * solver.init_noise_sigma
    alphas = solver.alphas_cumprod
    first = solver.scale_model_input(sample, solver.timesteps[0])
    a_first = alphas[int(solver.timesteps[0])]
    eps0 = (first - a_first.sqrt() * x0) / (1 - a_first).sqrt()
    for t in solver.timesteps:
        model_input = solver.scale_model_input(sample, t)  # the VP sample x_t = sqrt(a) x0 + sqrt(1 - a) eps
        a = alphas[int(t)]
        eps = (model_input - a.sqrt() * x0) / (1 - a).sqrt().clamp(min=1e-8)
        v = a.sqrt() * eps - (1 - a).sqrt() * x0
        sample = solver.step(v, t, sample).prev_sample
    # The solvers end on sigma 0 (x0 itself); DDIM, as trained (set_alpha_to_one=False), on alphas_cumprod[0],
    # i.e. x0 with the initial noise direction at the first training timestep's tiny level.
    a0 = alphas[0]
    expected = x0 if name != "ddim" else a0.sqrt() * x0 + (1 - a0).sqrt() * eps0
    torch.testing.assert_close(sample, expected, atol=2e-3, rtol=0)


def test_unknown_names_and_bad_settings():
    with pytest.raises(ValueError, match="unknown scheduler 'plms'"):
        make_scheduler("plms", training_scheduler().config)
    with pytest.raises(ValueError, match="unknown scheduler"):
        S.Speed(scheduler="plms").validate()
    with pytest.raises(ValueError, match="interval"):
        S.Speed(cache_interval=0).validate()
    assert S.FAST.validate() is S.FAST and S.FAST.steps is not None


@pytest.fixture
def seen(monkeypatch):
    """What each denoising loop ran with: (scheduler name, step cache interval/skips or None, number of steps)."""
    calls = []
    original = SamplingMixin.denoise

    def spy(self, latents, timesteps, scheduler, *args, **kwargs):
        cache = self.step_cache
        calls.append((scheduler_name(scheduler), None if cache is None else (cache.interval, cache.skips),
                      len(timesteps)))
        return original(self, latents, timesteps, scheduler, *args, **kwargs)

    monkeypatch.setattr(SamplingMixin, "denoise", spy)
    return calls


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from marionet.data.synth import generate_dataset
    from marionet.data.video import write_video
    from marionet.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("speed")
    write_tiny_model(root / "video_model", with_motion=True)
    write_tiny_model(root / "image_model", with_motion=False)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(root / "ref.png")
    poses = np.zeros((3, 64, 48, 3), np.uint8)
    for i in range(3):
        poses[i, 10:50, 4 + 4 * i:12 + 4 * i] = 255
    write_video(root / "pose.mp4", poses, fps=12)
    (root / "synth.txt").write_text(str(generate_dataset(root / "synth", videos=1, frames=3, size=32, seed=0)))
    return root


CASES = [
    ([], ("ddim", None, 25)),
    (["--scheduler", "unipc", "--steps", "3"], ("unipc", None, 3)),
    (["--scheduler", "euler", "--step-cache", "2", "--step-cache-skips", "1", "--steps", "3"],
     ("euler", (2, 1), 3)),
    (["--fast"], (S.FAST.scheduler, (S.FAST.cache_interval, S.FAST.cache_skips), S.FAST.steps)),
    (["--fast", "--scheduler", "ddim", "--steps", "2"], ("ddim", (S.FAST.cache_interval, S.FAST.cache_skips), 2)),
]


@pytest.mark.parametrize("extra, expected", CASES[1:], ids=["unipc", "euler-cache", "fast", "fast-override"])
def test_animate_switches_reach_the_loop(files, tmp_path, seen, extra, expected):
    out = tmp_path / "out.mp4"
    assert main(["animate", "--model", str(files / "video_model"), "--ref", str(files / "ref.png"),
                 "--pose", str(files / "pose.mp4"), "--out", str(out), "--context", "3", "--overlap", "1", *extra]) == 0
    assert seen == [expected] and out.exists()


def test_default_is_ddim_without_caching(files, tmp_path, monkeypatch):
    calls = []  # the loop itself is not run: 25 steps would only cost time

    def record(self, latents, timesteps, scheduler, *args, **kwargs):
        calls.append((scheduler_name(scheduler), self.step_cache, len(timesteps)))
        return latents

    monkeypatch.setattr(SamplingMixin, "denoise", record)
    assert main(["animate", "--model", str(files / "image_model"), "--ref", str(files / "ref.png"),
                 "--pose", str(files / "pose.mp4"), "--out", str(tmp_path / "o.mp4")]) == 0
    assert calls == [CASES[0][1]]


@pytest.mark.parametrize("extra, expected", [CASES[2], CASES[3]], ids=["euler-cache", "fast"])
def test_zero_shot_switches_reach_the_loop(files, tmp_path, seen, extra, expected):
    out = tmp_path / "out.mp4"
    assert main(["zero-shot", "--model", str(files / "image_model"), "--ref", str(files / "ref.png"),
                 "--pose", str(files / "pose.mp4"), "--out", str(out), *extra]) == 0
    assert seen == [expected] and out.exists()


def test_compare_flags_and_spec_options_reach_every_method(files, tmp_path, seen):
    model = files / "image_model"
    out = tmp_path / "report"
    assert main(["compare", "--data", (files / "synth.txt").read_text(), "--out", str(out), "--frames", "2", "--steps", "2",
                 "--scheduler", "dpm++", "--step-cache", "2",
                 "--method", f"a=trained:model={model}",
                 "--method", f"b=trained:model={model},scheduler=unipc,step_cache=1,steps=3",
                 "--method", f"c=zero-shot:model={model},fast=1",
                 "--method", f"d=pose-only:model={model},scheduler=euler"]) == 0
    assert seen == [("dpm++", (2, 2), 2), ("unipc", None, 3),
                    (S.FAST.scheduler, (S.FAST.cache_interval, S.FAST.cache_skips), S.FAST.steps),
                    ("euler", (2, 2), 2)]
    settings = json.loads((out / "report.json").read_text())
    assert settings["settings"]["speed"]["scheduler"] == "dpm++"


def test_too_many_step_cache_skips_is_one_line(files, tmp_path, capsys):
    assert main(["animate", "--model", str(files / "image_model"), "--ref", str(files / "ref.png"),
                 "--pose", str(files / "pose.mp4"), "--out", str(tmp_path / "o.mp4"), "--steps", "2",
                 "--step-cache", "2", "--step-cache-skips", "99"]) == 2
    assert "skips must be between 1 and" in capsys.readouterr().err


def test_app_speed_widgets_read_like_the_cli():
    from marionet.inference.app import DEFAULT, MarionetApp

    app = MarionetApp()
    fast = app._speed(DEFAULT, 0, True, 0, 25)  # widgets left at their defaults, fast ticked: the preset
    assert fast == S.FAST
    assert app._speed(DEFAULT, 0, False, 0, 25) == S.Speed(steps=25)  # nothing ticked: DDIM-25, no caching
    assert app._speed("unipc", 3, True, 12, 25) == S.Speed("unipc", 3, S.FAST.cache_skips, 12)  # explicit wins
