"""Zero-shot cost per denoising step for each of the method's settings (source pass, guidance), on tiny random
components: relative cost, not the absolute speed of SD1.5 weights.

    python inference/bench_zero_shot.py
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a clone: import marionet from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])


def benchmark(size: int = 128, steps: int = 10, repeats: int = 2) -> None:
    """Print seconds per denoising step of the method's settings on tiny random components (CPU or GPU).

    Figures show relative cost (source pass, guidance), not absolute speed of real SD1.5 weights.
    `python inference/bench_zero_shot.py` runs it.
    """
    import copy
    import time

    import numpy as np
    import torch
    from diffusers import ControlNetModel

    from marionet.inference.zero_shot import ZeroShotOptions, ZeroShotPoseTransferPipeline
    from marionet.models import build_tiny_components

    parts = build_tiny_components(seed=0)
    controlnet = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=(8, 16, 32, 64))
    pipe = ZeroShotPoseTransferPipeline(vae=parts["vae"], unet=copy.deepcopy(parts["unet"]),
                                        scheduler=parts["scheduler"], controlnet=controlnet)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    pose = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    settings = [("swap off, guidance 1", False, 1.0), ("swap on,  guidance 1", True, 1.0),
                ("swap off, guidance 3", False, 3.0), ("swap on,  guidance 3", True, 3.0)]
    print(f"device {pipe.device}, threads {torch.get_num_threads()}, {size}x{size} px "
          f"({size // 8}x{size // 8} latent), {steps} steps, best of {repeats}")
    for label, swap, guidance in settings:
        best = float("inf")
        for _ in range(repeats):
            calls.clear()
            start = time.perf_counter()
            pipe(source, pose, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                 options=ZeroShotOptions(swap=swap), generator=torch.Generator().manual_seed(0))
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        print(f"{label}: {1000 * best / steps:7.1f} ms/step, {len(calls) / steps:.0f} UNet call(s)/step")


if __name__ == "__main__":
    benchmark()
