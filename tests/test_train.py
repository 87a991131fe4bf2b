"""Training core on tiny components and synthetic clips (CPU): configs, loss, dropout, resume, stage 2, failures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from marionet.train.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def tiny_config(root: Path, stage: int = 1, **overrides):
    """The tiny config of `stage` shrunk further (32 px, 4 short videos) with every output under `root`."""
    settings = {
        "output_dir": root / f"stage{stage}", "model.base_model": root / "base", "data.meta": root / "data/meta.json",
        "data.synthetic_videos": 4, "data.synthetic_frames": 24, "data.synthetic_size": 32, "data.image_size": 32,
        "data.min_gap": 8, "optim.max_train_steps": 6, "checkpoint.checkpointing_steps": 3,
        "validation.validation_steps": 0, "validation.num_samples": 1, "validation.num_inference_steps": 2,
        "report_to": "none", "log_every": 1,
    }
    if stage == 2:
        settings.update({"model.stage1_model": root / "stage1_model", "model.motion_module": root / "base/motion_adapter",
                         "data.n_frames": 4, "data.frame_stride": 2, "validation.frames": 4})
    settings.update(overrides)
    return load_config(REPO / f"configs/tiny/stage{stage}.yaml", [f"{k}={v}" for k, v in settings.items()])


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny base folder and a small synthetic data set, made by the same code the tiny configs run."""
    from marionet.train.tiny import prepare_tiny_assets

    root = tmp_path_factory.mktemp("train")
    prepare_tiny_assets(tiny_config(root))
    return root


def fresh_dir(assets: Path, name: str) -> Path:
    """A run folder beside the shared assets (so the config's relative defaults are not used)."""
    path = assets / name
    shutil.rmtree(path, ignore_errors=True)
    return path


# ------------------------------------------------------------------------------------------------ configs

def test_every_shipped_config_loads_and_rejects_unknown_keys():
    for name in ("stage1.yaml", "stage2.yaml", "tiny/stage1.yaml", "tiny/stage2.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert cfg.stage == (1 if "stage1" in name else 2)
    full = load_config(REPO / "configs/stage1.yaml")
    assert (full.data.image_size, full.optim.train_batch_size, full.optim.max_train_steps) == (768, 4, 30000)
    assert full.noise.reference_dropout == 0.1 and full.noise.snr_gamma == 5.0 and full.optim.max_grad_norm == 1.0
    video = load_config(REPO / "configs/stage2.yaml")
    assert (video.data.image_size, video.data.n_frames, video.data.frame_stride) == (512, 24, 4)
    assert video.optim.gradient_checkpointing and video.optim.max_train_steps == 10000
    assert load_config(REPO / "configs/tiny/stage1.yaml", ["optim.learning_rate=3e-3"]).optim.learning_rate == 3e-3
    with pytest.raises(ConfigError, match="learnin_rate"):
        load_config(REPO / "configs/tiny/stage1.yaml", ["optim.learnin_rate=1"])
    with pytest.raises(ConfigError, match="prediction_type"):
        load_config(REPO / "configs/tiny/stage1.yaml", ["noise.prediction_type=sample"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(REPO / "configs/nope.yaml")


def test_min_snr_weights_follow_the_prediction_type_and_survive_zero_terminal_snr():
    from marionet.models import training_scheduler
    from marionet.train.core import make_training_scheduler, min_snr_weights
    from marionet.train.config import NoiseConfig

    scheduler = make_training_scheduler(training_scheduler().config, NoiseConfig(zero_terminal_snr=True))
    assert scheduler.config.timestep_spacing == "trailing" and scheduler.alphas_cumprod[-1] < 1e-6
    t = torch.tensor([0, 500, 999])
    alphas = scheduler.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    eps = min_snr_weights(scheduler, t, 5.0, "epsilon")
    v = min_snr_weights(scheduler, t, 5.0, "v_prediction")
    assert torch.isfinite(eps).all() and torch.isfinite(v).all()
    assert torch.allclose(eps[:2], snr.clamp(max=5)[:2] / snr[:2])
    assert torch.allclose(v, snr.clamp(max=5) / (snr + 1))
    assert eps[0] < 1 and v[-1] == 0  # t=0: clipped; t=T under zero-terminal SNR: no signal, no v weight


# ------------------------------------------------------------------------------------------------ the step

def load_stage1_parts(cfg):
    from marionet.train import stage1

    torch.manual_seed(0)
    return stage1.load_frozen(cfg), stage1.build_animator(cfg)


def fixed_batch(cfg, frozen, count: int = 2):
    from marionet.data.datasets import Stage1Dataset, collate_skipping
    from marionet.train.core import encode_batch

    dataset = Stage1Dataset(cfg.data.meta, cfg.data.image_size, frozen.feature_extractor, min_gap=8, seed=0)
    batch = collate_skipping([dataset[i] for i in range(count)])
    return encode_batch(batch, frozen, "cpu", torch.Generator().manual_seed(0))


def test_stage1_loss_falls_on_a_fixed_batch(assets):
    from marionet.train.core import diffusion_loss, sample_noise

    cfg = tiny_config(assets, **{"noise.reference_dropout": 0.0})
    frozen, animator = load_stage1_parts(cfg)
    inputs = fixed_batch(cfg, frozen)
    noise, timesteps, dropped = sample_noise(inputs["latents"], frozen.scheduler, cfg.noise,
                                             torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW([p for p in animator.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(30):
        loss, _ = diffusion_loss(animator, inputs, noise, timesteps, dropped, frozen.scheduler, cfg.noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, losses


def test_dropped_rows_take_exactly_the_unconditional_path(assets):
    from tests.conftest import randomize_
    from marionet.train.core import diffusion_loss

    cfg = tiny_config(assets)
    frozen, animator = load_stage1_parts(cfg)
    randomize_(animator.pose_guider)
    inputs = fixed_batch(cfg, frozen)
    noise = torch.randn_like(inputs["latents"])
    timesteps = torch.tensor([300, 700])
    dropped = torch.tensor([True, False])
    with torch.no_grad():
        _, prediction = diffusion_loss(animator, inputs, noise, timesteps, dropped, frozen.scheduler, cfg.noise)
        noisy = frozen.scheduler.add_noise(inputs["latents"], noise, timesteps)
        args = (noisy, timesteps, inputs["ref_latents"], inputs["image_embeds"], inputs["pose_images"])
        unconditional = animator(*args, drop_reference=torch.tensor([True, True]))
        conditional = animator(*args)
    assert torch.allclose(prediction[0], unconditional[0], atol=1e-5)
    assert torch.allclose(prediction[1], conditional[1], atol=1e-5)
    assert not torch.allclose(prediction[0], conditional[0], atol=1e-3)  # dropping really changes the row


# ------------------------------------------------------------------------------------------------ whole runs

def test_resumed_run_repeats_the_uninterrupted_losses(assets):
    from marionet.models import Animator
    from marionet.train.core import OutputExists, list_checkpoints, run

    whole = run(tiny_config(assets, output_dir=fresh_dir(assets, "whole"), **{"validation.validation_steps": 3}))
    assert sorted(whole.losses) == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in list_checkpoints(whole.output_dir)] == ["checkpoint-3", "checkpoint-6"]
    assert (whole.model_dir / "model_index.json").is_file()
    assert {p.name for p in whole.validation_media} == {"step-000003.png", "step-000006.png"}
    assert [v.step for v in whole.validation] == [3, 6] and 0 < whole.validation[-1].figures["ssim"] <= 1
    scheduler = json.loads((whole.model_dir / "scheduler/scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "epsilon" and scheduler["beta_schedule"] == "scaled_linear"
    Animator.from_pretrained(whole.model_dir)

    split = fresh_dir(assets, "split")
    first = run(tiny_config(assets, output_dir=split, stop_at_step=3))
    assert first.model_dir is None and [p.name for p in list_checkpoints(split)] == ["checkpoint-3"]
    with pytest.raises(OutputExists, match="resume_from_checkpoint=latest"):
        run(tiny_config(assets, output_dir=split))
    second = run(tiny_config(assets, output_dir=split, **{"checkpoint.resume_from_checkpoint": "latest"}))
    assert sorted(second.losses) == [4, 5, 6]
    combined = {**first.losses, **second.losses}
    for step, loss in whole.losses.items():
        assert combined[step] == pytest.approx(loss, rel=1e-5, abs=1e-7), step


def test_half_written_checkpoint_is_never_resumed(assets):
    from marionet.train.checkpoints import list_checkpoints, resolve_resume

    out = fresh_dir(assets, "crashed")
    (out / "checkpoint-4").mkdir(parents=True)  # e.g. a copy interrupted before its state file was written
    (out / ".checkpoint-6.partial").mkdir()
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "training_state_0.json").write_text("{}")  # written before manifests: still used
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert resolve_resume("latest", out).name == "checkpoint-2"


def test_bad_files_are_skipped_and_counted(assets):
    from marionet.train.core import run

    data = fresh_dir(assets, "bad_data")
    shutil.copytree(assets / "data", data)
    entries = json.loads((data / "meta.json").read_text())
    (data / entries[0]["video_path"]).write_bytes(b"not a video")
    result = run(tiny_config(assets, output_dir=fresh_dir(assets, "bad_run"), **{
        "data.meta": data / "meta.json", "optim.max_train_steps": 3, "validation.num_samples": 0,
        "noise.prediction_type": "v_prediction", "noise.zero_terminal_snr": True}))
    assert sorted(result.losses) == [1, 2, 3] and result.skipped_samples > 0
    assert all(torch.isfinite(torch.tensor(loss)) for loss in result.losses.values())
    # the schedule this run trained with is the one exported for inference
    scheduler = json.loads((result.model_dir / "scheduler/scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["rescale_betas_zero_snr"]
    assert scheduler["timestep_spacing"] == "trailing"


def test_nonfinite_losses_are_skipped_then_stop_the_run_keeping_the_last_checkpoint(assets, monkeypatch):
    import marionet.train.core as core

    real_loss = core.diffusion_loss
    calls = {"n": 0}

    def loss_that_explodes_after_two_steps(*args, **kwargs):
        calls["n"] += 1
        loss, prediction = real_loss(*args, **kwargs)
        return (loss * float("nan") if calls["n"] > 2 else loss), prediction

    monkeypatch.setattr(core, "diffusion_loss", loss_that_explodes_after_two_steps)
    out = fresh_dir(assets, "nan")
    cfg = tiny_config(assets, output_dir=out, **{"checkpoint.checkpointing_steps": 2,
                                                 "checkpoint.max_consecutive_nonfinite": 3})
    with pytest.raises(core.TrainingDiverged, match="checkpoint-2"):
        core.run(cfg)
    # steps 3 and 4 were skipped (no checkpoint saved mid-divergence), step 5 stopped the run
    assert [p.name for p in core.list_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "model").exists()


def test_stage2_trains_motion_modules_only_and_exports_a_loadable_video_model(assets):
    from marionet.models import Animator, write_tiny_model
    from marionet.train import stage2
    from marionet.train.core import run

    stage1_model = assets / "stage1_model"
    if not stage1_model.exists():
        write_tiny_model(stage1_model, with_motion=False, seed=3)
    cfg = tiny_config(assets, stage=2, output_dir=fresh_dir(assets, "stage2"), **{
        "optim.max_train_steps": 2, "checkpoint.checkpointing_steps": 2, "optim.learning_rate": 1e-2})
    animator = stage2.build_animator(cfg)
    trainable = {n for n, p in animator.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("denoising_unet.") and "motion_modules" in n for n in trainable)
    assert trainable == {n for n in dict(animator.named_parameters()) if "motion_modules" in n}

    result = run(cfg)
    before = Animator.from_pretrained(stage1_model)
    after = Animator.from_pretrained(result.model_dir)
    assert after.is_video_model
    assert {p.suffix for p in result.validation_media} == {".mp4", ".gif", ".png"}
    for part in ("reference_unet", "pose_guider"):
        old, new = getattr(before, part).state_dict(), getattr(after, part).state_dict()
        assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old), part
    old, new = before.denoising_unet.state_dict(), after.denoising_unet.state_dict()
    spatial = [k for k in new if "motion_modules" not in k]
    assert set(spatial) == set(old) and all(torch.equal(old[k], new[k]) for k in spatial)
    initial = stage2.load_motion_adapter(cfg.model.motion_module).state_dict()
    changed = [k for k, v in new.items() if "motion_modules" in k and not torch.equal(v, initial[k])]
    assert changed, "no motion-module weight moved"

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = after(torch.randn(1, 4, 4, 4, 4, generator=gen), torch.tensor([10]), torch.randn(1, 4, 4, 4, generator=gen),
                    torch.randn(1, 1, 32, generator=gen), torch.rand(1, 3, 4, 32, 32, generator=gen))
    assert out.shape == (1, 4, 4, 4, 4) and torch.isfinite(out).all()


def test_frame_noise_correlation_shares_part_of_the_noise_across_frames():
    from types import SimpleNamespace

    from marionet.train.core import sample_noise
    from marionet.models import training_scheduler

    latents = torch.zeros(64, 4, 6, 8, 8)
    for rho in (0.0, 0.5, 1.0):
        cfg = SimpleNamespace(frame_noise_correlation=rho, noise_offset=0.0, reference_dropout=0.1)
        noise, _, _ = sample_noise(latents, training_scheduler(), cfg, torch.Generator().manual_seed(0))
        a, b = noise[:, :, 0].flatten(), noise[:, :, 4].flatten()
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item() - rho) < 0.05, rho
        assert abs(noise.std().item() - 1.0) < 0.05


def test_validation_shows_what_the_exported_model_renders(assets):
    """The final validation grid's result column equals the exported folder's pipeline output, bit for bit."""
    import numpy as np
    from PIL import Image

    from marionet.inference.pipeline import render_video
    from marionet.train.core import run

    result = run(tiny_config(assets, output_dir=fresh_dir(assets, "validated"), **{"optim.max_train_steps": 2,
                                                                                  "validation.num_samples": 2}))
    grid = np.asarray(Image.open(result.output_dir / "validation" / "step-000002.png").convert("RGB"))
    size = 32
    assert grid.shape == (2 * size, 4 * size, 3)
    card = (result.model_dir / "README.md").read_text()
    assert "stage 1" in card and "validation.png" in card and "psnr" in card
    assert (result.model_dir / "validation.png").is_file()
    for row in range(2):
        panels = [grid[row * size:(row + 1) * size, col * size:(col + 1) * size] for col in range(4)]
        reference, pose, shown = panels[:3]
        rendered = render_video(result.model_dir, reference, pose[None], num_inference_steps=2, guidance_scale=2.0,
                                seed=0)  # the tiny config's validation guidance and seed
        assert np.array_equal(rendered[0], shown), row


def test_video_validation_draws_the_noise_the_exported_video_model_samples_from(tmp_path):
    """A stage-2 model trained with correlated frame noise is validated with that noise, as its folder renders."""
    import numpy as np

    from marionet.inference.pipeline import PoseToVideoPipeline
    from marionet.models import Animator, build_tiny_components, export_model_folder
    from marionet.train.core import Frozen
    from marionet.train.validation import render_items, validation_pipeline
    from tests.conftest import randomize_

    parts = build_tiny_components(seed=0, with_motion=True)
    animator = Animator.from_base_unet(parts["unet"], parts["pose_guider"], parts["motion_adapter"])
    randomize_(animator.denoising_unet, seed=1)  # motion modules start at zero: give them weights
    frozen = Frozen(parts["vae"], parts["image_encoder"], parts["feature_extractor"], parts["scheduler"])
    gen = torch.Generator().manual_seed(0)
    items = [{"reference": torch.rand(3, 32, 32, generator=gen) * 2 - 1, "pose": torch.rand(4, 3, 32, 32, generator=gen)}]
    for rho in (0.0, 0.8):
        shown = render_items(validation_pipeline(animator, frozen, rho), items, 2, 2.0, seed=5)[0]
        folder = export_model_folder(tmp_path / f"m{rho}", animator, parts["vae"], parts["image_encoder"],
                                     parts["feature_extractor"], parts["scheduler"], frame_noise_correlation=rho)
        pipe = PoseToVideoPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        exported = render_items(pipe, items, 2, 2.0, seed=5)[0]
        # The same draw and weights, but the reloaded folder's tensors are read from safetensors files at addresses
        # that are not 64-byte aligned, and MKL rounds unaligned data a last bit apart on some CPUs (an AVX-512 EPYC:
        # CLIP embeddings 3e-7 apart, 1 pixel of 12288 one level off). Another noise would move every pixel (below).
        moved = np.abs(shown.astype(int) - exported.astype(int))
        assert shown.shape == (4, 32, 32, 3) and moved.max() <= 1 and (moved > 0).mean() < 1e-3, (rho, moved.max())
        if rho == 0.0:
            independent = shown
    # the correlation changes the render, by far more than the rounding above: the check can fail
    assert np.abs(independent.astype(int) - shown.astype(int)).mean() > 1.0


def test_stock_model_trains_without_a_reference_net_and_every_pipeline_reads_its_clip_token(assets):
    """model.reference_net=false: no ReferenceNet trained or written; the CLIP token is the only appearance input, in
    PoseToVideoPipeline (guided over it) and in the zero-shot pipeline (its prompt), and swap off there is exactly the
    stock model's own sampling."""
    from tests.conftest import randomize_
    from marionet.inference.pipeline import PoseToVideoPipeline
    from marionet.inference.zero_shot import ZeroShotOptions, ZeroShotPoseTransferPipeline
    from marionet.models import Animator
    from marionet.train import stage1
    from marionet.train.core import run

    cfg = tiny_config(assets, output_dir=fresh_dir(assets, "stock"), **{
        "model.reference_net": "false", "optim.max_train_steps": 2, "checkpoint.checkpointing_steps": 2})
    animator = stage1.build_animator(cfg)
    assert not animator.has_reference_net and animator.reference_layers == []
    assert not any(n.startswith("reference_unet.") for n, _ in animator.named_parameters())
    model_dir = run(cfg).model_dir
    assert not (model_dir / "reference_unet").exists()
    assert json.loads((model_dir / "model_index.json").read_text())["reference_net"] is False
    stock = Animator.from_pretrained(model_dir)
    assert not stock.has_reference_net
    randomize_(stock.pose_guider, seed=3)  # two steps leave the zero-initialised output near zero
    stock.pose_guider.save_pretrained(model_dir / "pose_guider")

    rng = np.random.default_rng(0)
    references = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    poses = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    pipe = PoseToVideoPipeline.from_pretrained(model_dir)
    assert pipe.reference_unet is None
    pipe.set_progress_bar_config(disable=True)

    def render(p, reference, **kwargs):
        return p(reference, poses, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np", **kwargs).frames[0]

    guided = [render(pipe, r, guidance_scale=3.5) for r in references]
    assert not np.allclose(guided[0], guided[1], atol=1e-4)  # the reference reaches the result (CLIP token)
    floor = [render(pipe, r, guidance_scale=0.0) for r in references]  # pose-only: zero token, nothing else
    assert np.allclose(floor[0], floor[1], atol=1e-6)

    zero_shot = ZeroShotPoseTransferPipeline.from_model_folder(model_dir)
    zero_shot.set_progress_bar_config(disable=True)
    assert zero_shot.uses_image_token
    plain = render(zero_shot, references[0], options=ZeroShotOptions(swap=False))
    assert np.allclose(plain, render(pipe, references[0], guidance_scale=1.0), atol=1e-5)
    swapped = render(zero_shot, references[0])
    assert not np.allclose(swapped, plain, atol=1e-4)  # the swap adds the source's own tokens


def test_stage1_can_start_from_a_stock_or_stage1_model_folder(assets):
    """model.init_model: a stock folder's UNet starts both UNets (two separate modules) and its Pose Guider is kept; a
    stage-1 folder continues with its own ReferenceNet; bad folders and conflicting keys are refused by name."""
    from tests.conftest import randomize_
    from marionet.models.loading import MissingWeightsError
    from marionet.train import stage1

    def state(module):
        return {k: v.clone() for k, v in module.state_dict().items()}

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    stock = stage1.build_animator(tiny_config(assets, **{"model.reference_net": "false"}))
    randomize_(stock, seed=5)
    stock_dir = fresh_dir(assets, "init_stock")
    stock.save_pretrained(stock_dir)
    (stock_dir / "model_index.json").write_text(json.dumps({"reference_net": False}))

    fresh = stage1.build_animator(tiny_config(assets))
    started = stage1.build_animator(tiny_config(assets, **{"model.init_model": stock_dir}))
    assert started.has_reference_net and started.reference_unet is not started.denoising_unet
    assert same(state(started.denoising_unet), state(stock.denoising_unet))
    assert same(state(started.reference_unet), state(stock.denoising_unet))
    assert same(state(started.pose_guider), state(stock.pose_guider))
    assert not same(state(fresh.denoising_unet), state(started.denoising_unet))  # the check can fail

    with torch.no_grad():  # a ReferenceNet of its own, as training leaves it
        for param in started.reference_unet.parameters():
            param.add_(0.01)
    stage1_dir = fresh_dir(assets, "init_stage1")
    started.save_pretrained(stage1_dir)
    resumed = stage1.build_animator(tiny_config(assets, **{"model.init_model": stage1_dir}))
    assert same(state(resumed.reference_unet), state(started.reference_unet))
    assert not same(state(resumed.reference_unet), state(resumed.denoising_unet))
    as_stock = stage1.build_animator(tiny_config(assets, **{"model.init_model": stage1_dir,
                                                            "model.reference_net": "false"}))
    assert not as_stock.has_reference_net

    with pytest.raises(MissingWeightsError, match="model.init_model.*nowhere"):
        stage1.build_animator(tiny_config(assets, **{"model.init_model": assets / "nowhere"}))
    (stage1_dir / "motion_adapter").mkdir()
    with pytest.raises(MissingWeightsError, match="motion modules"):
        stage1.build_animator(tiny_config(assets, **{"model.init_model": stage1_dir}))
    with pytest.raises(ConfigError, match="drop model.controlnet"):
        tiny_config(assets, **{"model.init_model": stock_dir, "model.controlnet": stock_dir})
    with pytest.raises(ConfigError, match="for stage 1"):
        tiny_config(assets, stage=2, **{"model.init_model": stock_dir})
