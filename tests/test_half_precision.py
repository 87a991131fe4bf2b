"""Half precision exercised on CPU: tiny stage-1 / stage-2 training under bf16 autocast, and renders in bf16 and fp16,
against fp32, with the dtype seams checked (bank, pose features, VAE/CLIP in half, latents and scheduler in fp32).

Tolerances are measured, with margin: bf16 keeps 8 bits of mantissa (relative rounding ~4e-3 per op), so a training
loss moves by a few percent at most; a rendered video lands ~40-50 dB from its fp32 render (fp16, 11 bits: more)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_train import assets, fresh_dir, tiny_config  # noqa: F401 - `assets` is a fixture


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def test_stage1_trains_under_bf16_autocast_close_to_fp32(assets):
    from marionet.train.core import run

    settings = {"optim.max_train_steps": 3, "checkpoint.checkpointing_steps": 3, "validation.num_samples": 0}
    fp32 = run(tiny_config(assets, output_dir=fresh_dir(assets, "fp32"), **settings))
    bf16 = run(tiny_config(assets, output_dir=fresh_dir(assets, "bf16"), **settings,
                           **{"optim.mixed_precision": "bf16"}))
    for step, loss in fp32.losses.items():
        assert np.isfinite(bf16.losses[step])
        assert abs(bf16.losses[step] - loss) / loss < 0.05, (step, loss, bf16.losses[step])
    assert bf16.losses != fp32.losses  # bf16 really ran (CPU autocast), it is not fp32 again


def test_stage2_bf16_with_half_precision_frozen_weights_exports_them_unchanged(assets):
    from marionet.models import Animator, write_tiny_model
    from marionet.train.core import run

    stage1_model = assets / "stage1_model"
    if not stage1_model.exists():
        write_tiny_model(stage1_model, with_motion=False, seed=3)
    cfg = tiny_config(assets, stage=2, output_dir=fresh_dir(assets, "stage2_bf16"), **{
        "optim.max_train_steps": 2, "checkpoint.checkpointing_steps": 2, "optim.learning_rate": 1e-2,
        "optim.mixed_precision": "bf16", "optim.half_precision_frozen": True, "optim.gradient_checkpointing": True})
    result = run(cfg)
    assert all(np.isfinite(loss) for loss in result.losses.values())
    before, after = Animator.from_pretrained(stage1_model), Animator.from_pretrained(result.model_dir)
    for part in ("reference_unet", "pose_guider"):  # stored in bf16 while training, exported in fp32 unchanged
        old, new = getattr(before, part).state_dict(), getattr(after, part).state_dict()
        assert all(new[k].dtype == torch.float32 and torch.equal(old[k], new[k]) for k in old), part
    old, new = before.denoising_unet.state_dict(), after.denoising_unet.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old)  # every spatial weight
    assert any("motion_modules" in k for k in new)


def test_gradient_checkpointing_of_motion_modules_keeps_the_gradients(tiny_parts):
    """marionet checkpoints a motion UNet's transformers and motion modules too (diffusers: resnets only)."""
    from tests.conftest import make_animator, randomize_

    def gradients(checkpointing: bool):
        animator = make_animator(tiny_parts, with_motion=True)
        randomize_(animator.denoising_unet, seed=4)
        animator.freeze_except_motion()
        if checkpointing:
            animator.enable_gradient_checkpointing()
        animator.train()
        gen = torch.Generator().manual_seed(0)
        out = animator(torch.randn(1, 4, 3, 8, 8, generator=gen), torch.tensor([300]),
                       torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 1, 32, generator=gen),
                       torch.rand(1, 3, 3, 64, 64, generator=gen))
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in animator.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    from marionet.models import Animator, build_tiny_components, export_model_folder
    from tests.conftest import randomize_

    parts = build_tiny_components(seed=0, with_motion=True)
    animator = Animator.from_base_unet(parts.pop("unet"), parts.pop("pose_guider"), parts.pop("motion_adapter"))
    randomize_(animator, seed=5)  # zero-initialised outputs (Pose Guider, motion modules) get weights
    return export_model_folder(tmp_path_factory.mktemp("half") / "model", animator, **parts)


@pytest.mark.parametrize("dtype,floor_db", [(torch.bfloat16, 35.0), (torch.float16, 45.0)])
def test_render_in_half_precision_stays_close_to_fp32(video_folder, dtype, floor_db):
    from marionet.inference.pipeline import PoseToVideoPipeline
    from marionet.inference.sampling import to_uint8

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    poses = np.zeros((4, 64, 64, 3), np.uint8)
    for i in range(4):
        poses[i, 10:50, 8 + 6 * i:16 + 6 * i] = 255

    def render(torch_dtype):
        pipe = PoseToVideoPipeline.from_pretrained(video_folder, torch_dtype=torch_dtype)
        pipe.set_progress_bar_config(disable=True)
        seen = {}

        def watch(p, step, t, tensors):
            seen["latents"] = tensors["latents"].dtype
            seen["bank"] = {v.dtype for v in p.animator.reference_state.bank.values()}
            return {}

        original = pipe.encode_pose
        pipe.encode_pose = lambda poses: seen.setdefault("pose", original(poses))  # the Pose Guider's output
        out = pipe(reference, poses, num_inference_steps=4, guidance_scale=2.5, generator=torch.Generator().manual_seed(1),
                   callback_on_step_end=watch, callback_on_step_end_tensor_inputs=["latents"]).frames[0]
        return to_uint8(out), seen, pipe

    full, _, _ = render(torch.float32)
    half, seen, pipe = render(dtype)
    assert np.isfinite(half).all()
    assert seen["latents"] == torch.float32  # the scheduler steps in fp32 whatever the models' dtype
    assert seen["bank"] == {dtype} and seen["pose"].dtype == dtype
    assert pipe.vae.dtype == dtype and pipe.image_encoder.dtype == dtype
    quality = psnr(half / 255.0, full / 255.0)
    print(f"{dtype}: {quality:.1f} dB against the fp32 render")
    assert quality > floor_db, quality
