"""The demo's parts: stage 0 (the tiny autoencoder), its settings, the spread between runs and the kept runs
(docs/demo_runs). `marionet demo --quick` end to end runs from an installed wheel in tests/test_packaging.py."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch


def puppet_like_frames(count=48, size=32, seed=0):
    """Flat backgrounds with a coloured rectangle: enough structure for an autoencoder to learn quickly."""
    rng = np.random.default_rng(seed)
    frames = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        frames[i] = rng.integers(0, 256, 3)
        y, x = rng.integers(2, size // 2, 2)
        frames[i, y:y + size // 3, x:x + size // 4] = rng.integers(0, 256, 3)
    return frames


def test_fit_autoencoder_learns_and_scaling_gives_unit_variance_latents():
    from diffusers import AutoencoderKL

    from marionet.models.tiny import tiny_vae_config
    from marionet.train.autoencoder import fit_autoencoder, reconstruction_psnr, set_latent_scaling

    frames = puppet_like_frames()
    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_vae_config((16, 32), norm_num_groups=4, mid_block_attention=False))
    before = reconstruction_psnr(vae, frames)
    losses = fit_autoencoder(vae, frames, steps=60, batch_size=8, lr=3e-3, crop_size=16, progress=False)
    after = reconstruction_psnr(vae, frames)
    assert after > before + 3.0, (before, after)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    factor = set_latent_scaling(vae, frames)
    assert vae.config.scaling_factor == factor
    with torch.no_grad():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        latents = vae.encode(x).latent_dist.mean * factor
    assert abs(latents.std().item() - 1.0) < 1e-3


def test_spread_between_runs_and_claims_held_in_every_run():
    from marionet.inference.demo import spread

    def run(psnr, holds):
        methods = {"a": {m: {"mean": v} for m, v in (("psnr", psnr), ("ssim", 0.3), ("temporal", 0.01))},
                   "b": {m: {"mean": v} for m, v in (("psnr", 12.0), ("ssim", 0.2), ("temporal", 0.02))}}
        claims = [{"claim": "a > b on PSNR (dB)", "holds": holds}, {"claim": "a > b on SSIM", "holds": True}]
        return {"methods": methods, "claims": claims, "settings": {"videos": 2, "frames": 4, "steps": 3, "seed": 0},
                "software": {"torch": "x"}}, {"cpu_threads": 2, "torch_threads": 1, "total_s": 9}

    text = spread([run(14.0, True), run(14.5, False)])
    assert "at most 0.50 dB PSNR" in text and "1 of 2 claimed orderings held in every run: a > b on SSIM." in text


def test_archived_runs_can_be_set_beside_new_ones(tmp_path):
    from marionet.inference.demo import _load_run, archive_runs

    def demo_folder(name, psnr):
        folder = tmp_path / name
        (folder / "report").mkdir(parents=True)
        (folder / "report" / "report.json").write_text(json.dumps({"methods": {"a": {"psnr": {"mean": psnr}}}}))
        (folder / "demo.json").write_text(json.dumps({"total_s": psnr}))
        return folder

    archive = tmp_path / "docs" / "demo_runs"
    archive_runs([_load_run(demo_folder("old", 14.0))], archive)
    # the archive's own run1 is read before the archive is replaced, so it becomes run2 beside the new run
    archive_runs([_load_run(demo_folder("new", 15.0)), _load_run(archive / "run1")], archive)
    assert [_load_run(archive / f"run{i}")[1]["total_s"] for i in (1, 2)] == [15.0, 14.0]
    assert sorted(p.name for p in archive.iterdir()) == ["run1", "run2"]  # nothing left over from the swap
    assert not [p for p in archive.parent.iterdir() if p.name.startswith(".")]


def test_cpu_description_names_the_vector_unit_and_math_library_pins(monkeypatch):
    from marionet.inference.demo import MATH_PINS, cpu_description

    for key in MATH_PINS:
        monkeypatch.delenv(key, raising=False)
    plain = cpu_description()
    assert plain.endswith(f"({torch.backends.cpu.get_cpu_capability()})")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    assert cpu_description() == plain[:-1] + "; ONEDNN_MAX_CPU_ISA=AVX2; MKL_CBWR=AVX2)"


def test_set_overrides_take_each_settings_type():
    from marionet.inference.demo import parse_settings

    assert parse_settings(["stage1_steps=400", "guidance=2.5", "unet_channels=16,32", "score=validation",
                           "zero_shot_source_pose=off"]) == {
        "stage1_steps": 400, "guidance": 2.5, "unet_channels": (16, 32), "score": "validation",
        "zero_shot_source_pose": False}
    assert parse_settings(["zero_shot_source_pose=on"]) == {"zero_shot_source_pose": True}
    for bad, message in (("nope=1", "KEY one of"), ("stage1_steps=many", "not a valid int"),
                         ("zero_shot_source_pose=maybe", "not a valid on/off")):
        with pytest.raises(ValueError, match=message):
            parse_settings([bad])


def test_stage1_start_is_checked_and_named_in_the_labels(tmp_path):
    from marionet.errors import UserError
    from marionet.inference.demo import METHOD_LABELS, method_labels, run_demo

    with pytest.raises(UserError, match="stage1_init must be stock or base"):
        run_demo(tmp_path / "demo", quick=True, stage1_init="sd15")
    assert not (tmp_path / "demo").exists()  # refused before anything is written
    assert "fine-tuned from the stock model" in method_labels({"stage1_init": "stock"})["trained-stage1"]
    assert method_labels({"stage1_init": "base"}) == METHOD_LABELS


def test_each_stage_trains_with_its_own_settings(tmp_path, monkeypatch):
    """The stock model trains at stock_lr, stage 1 (fine-tuned from it) at stage1_lr, stage 2 at its frame stride;
    all three with EMA at ema_decay (0: none)."""
    import marionet.train.core as core
    from marionet.inference import demo

    seen = {}

    def fake_run(config):
        seen[Path(config.output_dir).name] = config
        return core.TrainResult(Path(config.output_dir), None, losses={1: 0.5, 2: 0.25})

    monkeypatch.setattr(core, "run", fake_run)
    settings = demo.DemoSettings(stock_lr=3e-4, stage1_lr=1e-4, stage2_lr=7e-4, stage2_frame_stride=3)
    meta = tmp_path / "meta.json"
    demo.train_stage(1, settings, tmp_path, meta, meta, stock=True)
    demo.train_stage(1, settings, tmp_path, meta, meta)
    demo.train_stage(2, settings, tmp_path, meta, meta)
    assert seen["stock"].optim.learning_rate == 3e-4 and not seen["stock"].model.reference_net
    assert seen["stage1"].optim.learning_rate == 1e-4
    assert seen["stage1"].model.init_model == str(tmp_path / "stock" / "model")
    assert seen["stage2"].optim.learning_rate == 7e-4 and seen["stage2"].data.frame_stride == 3
    assert all(config.optim.use_ema and config.optim.ema_decay == settings.ema_decay for config in seen.values())
    demo.train_stage(2, demo.DemoSettings(ema_decay=0.0), tmp_path, meta, meta)
    assert not seen["stage2"].optim.use_ema


@pytest.mark.parametrize("score,videos", [("heldout", 5), ("validation", 7)])
def test_compare_scores_compare_videos_held_out_and_every_validation_puppet(tmp_path, monkeypatch, score, videos):
    """Held-out scoring takes compare_videos; choosing settings (score=validation) scores all validation puppets."""
    import marionet.inference.compare as compare_module
    from marionet.inference import demo

    seen = {}
    monkeypatch.setattr(compare_module, "run_comparison", lambda meta, methods, out, **kw: seen.update(kw) or {})
    demo.compare(demo.DemoSettings(compare_videos=5, validation_videos=7, score=score), tmp_path, tmp_path / "m.json")
    assert seen["videos"] == videos and len(seen["claims"]) == 10


def test_zero_shot_swap_steps_are_checked_passed_to_the_method_and_named(tmp_path, monkeypatch):
    """zero_shot_swap_steps reaches the zero-shot method spec (parsed as compare parses it), a bad value is refused
    before anything is written, and the report's label says in which steps the swap ran."""
    import marionet.inference.compare as compare_module
    from marionet.errors import UserError
    from marionet.inference import demo

    with pytest.raises(UserError, match="zero_shot_swap_steps"):
        demo.run_demo(tmp_path / "demo", quick=True, zero_shot_swap_steps="0.8:0.2")
    assert not (tmp_path / "demo").exists()

    seen = {}
    monkeypatch.setattr(compare_module, "run_comparison", lambda meta, methods, *a, **k: seen.update(methods=methods))
    demo.compare(demo.DemoSettings(zero_shot_swap_steps="0:0.6"), tmp_path, tmp_path / "meta.json")
    spec = compare_module.parse_method(next(m for m in seen["methods"] if m.startswith("zero-shot=")))
    assert compare_module._zero_shot_options(spec, dict(spec.options)).swap_steps == (0.0, 0.6)

    assert "in the noisiest 60% of the steps" in demo.method_labels({"zero_shot_swap_steps": "0:0.6"})["zero-shot"]
    assert demo.method_labels({})["zero-shot"] == demo.METHOD_LABELS["zero-shot"]  # runs from before: every step


def test_unet_attention_heads_split_the_same_weights():
    """The head count only splits the attention channels: a tiny set with 2 heads has every UNet attention at 2 heads
    and the same seeded weights as one with 8 (so the demo's stage 0 and initial UNet do not depend on it)."""
    from marionet.models.tiny import build_tiny_components

    sizes = dict(seed=0, unet_channels=(32, 64), norm_num_groups=8, pose_guider_channels=(8, 16, 32))
    eight, two = build_tiny_components(**sizes)["unet"], build_tiny_components(**sizes, attention_heads=2)["unet"]
    heads = {module.heads for module in two.modules() if type(module).__name__ == "Attention"}
    assert heads == {2} and {module.heads for module in eight.modules() if type(module).__name__ == "Attention"} == {8}
    assert two.config.attention_head_dim == 2
    weights = eight.state_dict()
    assert all(torch.equal(weights[name], value) for name, value in two.state_dict().items())
