"""`convert moore-aa`: a tiny fake Moore-AnimateAnyone release (their file names and key names) -> our Animator,
checked against their forward recomputed from their code's semantics (tests/test_convert_formats.py)."""
from __future__ import annotations

import copy

import pytest
import torch

from test_convert_formats import (moore_pose_guider, original_motion_state, replace_motion_modules,
                                  wire_their_reference_attention)

HEADS = 2
POSE_CHANNELS = (4, 8, 8, 16)


def _pose_guider_state(width: int, seed: int = 5) -> dict:
    """Their PoseGuider naming: conv_in, blocks.{2i: 3x3, 2i+1: 3x3 stride 2}, conv_out (trained: nonzero)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"conv_in": (POSE_CHANNELS[0], 3)}
    for i, (c_in, c_out) in enumerate(zip(POSE_CHANNELS[:-1], POSE_CHANNELS[1:])):
        shapes[f"blocks.{2 * i}"] = (c_in, c_in)
        shapes[f"blocks.{2 * i + 1}"] = (c_out, c_in)
    shapes["conv_out"] = (width, POSE_CHANNELS[-1])
    state = {}
    for name, (c_out, c_in) in shapes.items():
        state[name + ".weight"] = torch.randn(c_out, c_in, 3, 3, generator=gen) * 0.2
        state[name + ".bias"] = torch.randn(c_out, generator=gen) * 0.05
    return state


@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_parts):
    """denoising_unet.pth / reference_unet.pth (SD naming; the reference without conv_norm_out/conv_out),
    pose_guider.pth, motion_module.pth (AnimateDiff's original naming), as plain torch.save state dicts."""
    root = tmp_path_factory.mktemp("moore")
    base = tiny_parts["unet"].state_dict()
    gen = torch.Generator().manual_seed(11)
    files = {
        "denoising_unet.pth": {k: v + 0.03 * torch.randn(v.shape, generator=gen) for k, v in base.items()},
        "reference_unet.pth": {k: v + 0.03 * torch.randn(v.shape, generator=gen) for k, v in base.items()
                               if not k.startswith(("conv_norm_out.", "conv_out."))},
        "pose_guider.pth": _pose_guider_state(tiny_parts["unet"].config.block_out_channels[0]),
        "motion_module.pth": original_motion_state(channels=(32, 64), layers=1, max_len=24, seed=7),
    }
    for name, state in files.items():
        torch.save(state, root / name)
    return root, files


def _theirs(files, tiny_parts, ref_latents, image_embeds, latents, pose, t, guidance: bool):
    """Their pipeline's numbers: ReferenceNet at t=0 on [uncond; cond] CLIP tokens, reader with their pairing and
    unconditional rows as plain self-attention, pose features added after conv_in, original motion modules."""
    from diffusers import UNet2DConditionModel, UNetMotionModel

    config = tiny_parts["unet"].config
    reference = UNet2DConditionModel.from_config(config).eval()
    reference.load_state_dict(files["reference_unet.pth"], strict=False)  # their ReferenceNet has no tail
    denoising = UNet2DConditionModel.from_config(config).eval()
    denoising.load_state_dict(files["denoising_unet.pth"])
    video = latents.ndim == 5
    frames = latents.shape[2] if video else 1
    if video:
        denoising = UNetMotionModel.from_unet2d(denoising, copy.deepcopy(tiny_parts["motion_adapter"])).eval()
        replace_motion_modules(denoising, files["motion_module.pth"], HEADS, groups=32)
    wire_their_reference_attention(reference, denoising, frames, guidance)

    pose_frames = pose.permute(0, 2, 1, 3, 4).flatten(0, 1) if video else pose
    pose_features = moore_pose_guider(files["pose_guider.pth"], pose_frames)
    context = image_embeds
    if guidance:
        context = torch.cat([torch.zeros_like(image_embeds), image_embeds])
        ref_latents, latents, pose_features = (torch.cat([x, x]) for x in (ref_latents, latents, pose_features))
    denoising.conv_in.register_forward_hook(lambda m, i, out: out + pose_features)
    reference(ref_latents, torch.zeros(ref_latents.shape[0], dtype=torch.long), encoder_hidden_states=context)
    return denoising(latents, t, encoder_hidden_states=context.repeat_interleave(frames, dim=0)).sample


def _inputs(batch, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = 8
    latent_shape = (batch, 4, frames, h, h) if frames else (batch, 4, h, h)
    pose_shape = (batch, 3, frames, 8 * h, 8 * h) if frames else (batch, 3, 8 * h, 8 * h)
    return (torch.randn(batch, 4, h, h, generator=g), torch.randn(batch, 1, 32, generator=g),
            torch.randn(*latent_shape, generator=g), torch.rand(*pose_shape, generator=g))


def test_video_with_guidance_equals_their_forward(release, tiny_parts):
    from marionet.models.convert.moore_aa import convert_moore_release

    root, files = release
    animator, report = convert_moore_release(root, dict(tiny_parts["unet"].config), heads=HEADS)
    animator.eval()
    assert animator.is_video_model and len(report["files"]) == 4
    assert [f.split(" ")[0] for f in report["filled"]] == ["reference_unet.conv_norm_out.weight",
                                                           "reference_unet.conv_norm_out.bias",
                                                           "reference_unet.conv_out.weight",
                                                           "reference_unet.conv_out.bias"]
    ref_latents, embeds, latents, pose = _inputs(batch=1, frames=4)
    with torch.no_grad():
        animator.encode_reference(ref_latents, embeds)
        features = animator.encode_pose(pose)
        ours = animator.denoise(torch.cat([latents, latents]), 300, torch.cat([embeds, embeds]),
                                torch.cat([features, features]), drop_reference=torch.tensor([True, False]))
        theirs = _theirs(files, tiny_parts, ref_latents, embeds, latents, pose, 300, guidance=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # the reference path matters here: without the bank the conditional half would differ
    with torch.no_grad():
        animator.reference_state.bank = {}  # same CLIP token, no reference tokens
        unreferenced = animator.denoise(torch.cat([latents, latents]), 300, torch.cat([embeds, embeds]),
                                        torch.cat([features, features]), drop_reference=torch.tensor([True, False]))
    assert (unreferenced[1:] - theirs[1:]).abs().max() > 1e-3


def test_stage1_image_model_equals_their_training_forward(release, tiny_parts):
    from marionet.models.convert.moore_aa import convert_moore_release

    root, files = release
    animator, report = convert_moore_release(root, dict(tiny_parts["unet"].config), use_motion=False)
    assert not animator.is_video_model
    ref_latents, embeds, latents, pose = _inputs(batch=2, frames=0, seed=1)
    t = torch.tensor([100, 800])
    with torch.no_grad():
        ours = animator.eval()(latents, t, ref_latents, embeds, pose)
        theirs = _theirs(files, tiny_parts, ref_latents, embeds, latents, pose, t, guidance=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_cli_writes_a_model_folder_that_loads_to_the_same_numbers(release, tiny_parts, tmp_path):
    from marionet.cli import main
    from marionet.models import Animator, save_base_folder
    from marionet.models.convert.moore_aa import convert_moore_release

    root, _ = release
    base = save_base_folder({k: v for k, v in tiny_parts.items() if k not in ("pose_guider", "motion_adapter")},
                            tmp_path / "base")
    out = tmp_path / "model"
    assert main(["convert", "moore-aa", "--weights", str(root), "--base", str(base), "--vae", str(base / "vae"),
                 "--image-encoder", str(base / "image_encoder"), "--out", str(out),
                 "--motion-heads", str(HEADS)]) == 0
    for sub in ("reference_unet", "denoising_unet", "pose_guider", "motion_adapter", "vae", "image_encoder",
                "feature_extractor", "scheduler", "model_index.json", "README.md"):
        assert (out / sub).exists(), sub
    card = (out / "README.md").read_text()
    assert "marionet convert moore-aa" in card and "reference_unet.pth" in card and "v_prediction" in card
    loaded = Animator.from_pretrained(out).eval()
    direct, _ = convert_moore_release(root, dict(tiny_parts["unet"].config), heads=HEADS)
    ref_latents, embeds, latents, pose = _inputs(batch=1, frames=3, seed=2)
    with torch.no_grad():
        a = loaded(latents, 500, ref_latents, embeds, pose)
        b = direct.eval()(latents, 500, ref_latents, embeds, pose)
    assert torch.equal(a, b)
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(out / "scheduler")
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
    assert scheduler.config.beta_schedule == "scaled_linear"
    from marionet.models.convert.moore_aa import release_scheduler

    assert release_scheduler("released-inference").config.beta_schedule == "linear"


@pytest.mark.parametrize("damage", ["unexpected", "shape", "missing_file"])
def test_bad_release_is_reported_and_nothing_is_written(release, tiny_parts, tmp_path, damage):
    from marionet.cli import main

    root, files = release
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, state in files.items():
        state = dict(state)
        if name == "denoising_unet.pth" and damage == "unexpected":
            state["down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"] = torch.zeros(32, 32)
        if name == "pose_guider.pth" and damage == "shape":
            state["blocks.1.weight"] = torch.zeros(8, 4, 5, 5)
        if name == "reference_unet.pth" and damage == "missing_file":
            continue
        torch.save(state, bad / name)
    base = tmp_path / "base"
    from marionet.models import save_base_folder

    save_base_folder({k: v for k, v in tiny_parts.items() if k not in ("pose_guider", "motion_adapter")}, base)
    out = tmp_path / "model"
    code = main(["convert", "moore-aa", "--weights", str(bad), "--base", str(base), "--out", str(out)])
    assert code == 2 and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]  # no half-written temp folder


def test_bad_release_messages_name_the_file_and_key(release, tiny_parts, tmp_path):
    from marionet.models.convert.common import ConversionError
    from marionet.models.convert.moore_aa import convert_moore_release

    root, files = release
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, state in files.items():
        state = dict(state)
        if name == "denoising_unet.pth":
            state["down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"] = torch.zeros(32, 32)
        torch.save(state, bad / name)
    with pytest.raises(ConversionError, match=r"denoising_unet\.pth: 1 unexpected keys: down_blocks\.0\.attentions"
                                              r"\.0\.transformer_blocks\.0\.attn_temp\.to_q\.weight"):
        convert_moore_release(bad, dict(tiny_parts["unet"].config), heads=HEADS)


# Every key of the DDIMScheduler config each of their scripts builds (Moore-AnimateAnyone at a914ef3): the keys they
# set (configs/inference/inference_v2.yaml; configs/train/stage1.yaml + train_stage_1.py's enable_zero_snr update)
# and DDIMScheduler's defaults for the keys they leave out.
THEIR_DDIM_DEFAULTS = {"trained_betas": None, "set_alpha_to_one": True, "thresholding": False,
                       "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0}
THEIR_DEMO_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                        "beta_schedule": "linear", "clip_sample": False, "steps_offset": 1,
                        "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                        "timestep_spacing": "trailing", **THEIR_DDIM_DEFAULTS}
THEIR_TRAINING_SCHEDULER = {**THEIR_DEMO_SCHEDULER, "beta_schedule": "scaled_linear"}


@pytest.mark.parametrize("schedule,expected", [("released-inference", THEIR_DEMO_SCHEDULER),
                                               ("trained", THEIR_TRAINING_SCHEDULER)])
def test_exported_scheduler_is_theirs_key_for_key(release, tiny_parts, tmp_path, schedule, expected):
    import json

    from marionet.cli import main
    from marionet.models import save_base_folder

    root, _ = release
    base = save_base_folder({k: v for k, v in tiny_parts.items() if k not in ("pose_guider", "motion_adapter")},
                            tmp_path / "base")
    out = tmp_path / "model"
    args = ["convert", "moore-aa", "--weights", str(root), "--base", str(base), "--out", str(out),
            "--motion-heads", str(HEADS), "--no-motion"] + (["--schedule", schedule] if schedule != "trained" else [])
    assert main(args) == 0
    saved = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert saved.pop("_class_name") == "DDIMScheduler"
    saved.pop("_diffusers_version")
    assert saved == expected
    from marionet.inference.pipeline import PoseToVideoPipeline

    scheduler = PoseToVideoPipeline.from_pretrained(out).scheduler
    assert scheduler.final_alpha_cumprod == 1.0  # their last DDIM step lands on alpha 1
    assert f"`{schedule}`" in (out / "README.md").read_text()
