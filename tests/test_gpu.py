"""CUDA-only checks (`pytest -m gpu`, run by `marionet bench gpu`): half-precision training steps, the attention
kernels the reference processors choose, and model CPU offload on a real accelerator. Skipped without CUDA."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def tiny_pipeline(dtype=torch.float16):
    from marionet.inference.pipeline import PoseToVideoPipeline
    from marionet.models import build_tiny_components, clone_unet
    from tests.conftest import randomize_

    parts = build_tiny_components(seed=0, with_motion=True)
    randomize_(parts["pose_guider"], seed=1)
    unet = parts.pop("unet")
    pipe = PoseToVideoPipeline(reference_unet=clone_unet(unet), denoising_unet=unet, **parts).to("cuda", dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(frames=4, size=64):
    rng = np.random.default_rng(0)
    poses = np.zeros((frames, size, size, 3), np.uint8)
    for i in range(frames):
        poses[i, 10:50, 8 + 6 * i:16 + 6 * i] = 255
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8), poses


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_training_step_under_cuda_autocast_is_finite(tiny_parts, dtype):
    from tests.conftest import make_animator

    animator = make_animator(tiny_parts).cuda().train()
    optimizer = torch.optim.AdamW([p for p in animator.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.autocast("cuda", dtype=dtype):
        out = animator(torch.randn(2, 4, 8, 8, device="cuda", generator=gen), torch.tensor([10, 900], device="cuda"),
                       torch.randn(2, 4, 8, 8, device="cuda", generator=gen),
                       torch.randn(2, 1, 32, device="cuda", generator=gen),
                       torch.rand(2, 3, 64, 64, device="cuda", generator=gen), drop_reference=torch.tensor([0, 1]))
        loss = out.float().square().mean()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss)


def test_sdpa_kernels_and_model_offload_keep_the_render():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    reference, poses = inputs()
    pipe = tiny_pipeline()
    kwargs = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="latent")
    expected = pipe(reference, poses, **kwargs).frames.float()
    for backend in (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel(backend):
            kwargs["generator"] = torch.Generator().manual_seed(0)
            torch.testing.assert_close(pipe(reference, poses, **kwargs).frames.float(), expected, rtol=2e-2, atol=2e-2)
    pipe.enable_model_cpu_offload()
    kwargs["generator"] = torch.Generator().manual_seed(0)
    torch.testing.assert_close(pipe(reference, poses, **kwargs).frames.float().cuda(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(importlib.util.find_spec("xformers") is None, reason="xformers is not installed")
def test_xformers_keeps_the_reference_processors_and_the_render():
    from marionet.models import ReferenceAttnProcessor

    reference, poses = inputs()
    pipe = tiny_pipeline()
    kwargs = dict(num_inference_steps=3, output_type="latent")
    expected = pipe(reference, poses, generator=torch.Generator().manual_seed(0), **kwargs).frames.float()
    pipe.enable_xformers_memory_efficient_attention()
    kernels = {p.kernel for p in pipe.denoising_unet.attn_processors.values() if isinstance(p, ReferenceAttnProcessor)}
    assert kernels == {"xformers"}
    got = pipe(reference, poses, generator=torch.Generator().manual_seed(0), **kwargs).frames.float()
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
