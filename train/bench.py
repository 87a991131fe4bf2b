"""Training throughput benchmark: N training steps of the real loss path on random weights; prints figures.

    python train/bench.py --config configs/stage1.yaml --arch sd15 --resolution 768 --batch 4 --steps 20
    python train/bench.py --config configs/tiny/stage1.yaml --arch tiny --resolution 64 --batch 2 --steps 10

--arch sd15 builds the full SD1.5 architecture (UNet, VAE, CLIP ViT-L/14 image encoder, Pose Guider; with
--frames > 1 an AnimateDiff v2-sized MotionAdapter, and only motion modules train, as in stage 2) from
marionet.models.sd15, with random weights: nothing is downloaded. --arch tiny uses models.tiny. The first step is a
warm-up and is not timed. Peak memory is CUDA max-allocated on a GPU, else the process's peak RSS.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a clone: import marionet from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402


def build(arch: str, video: bool):
    """(Animator, VAE, image encoder, scheduler, CLIP input size) with random weights; stage 2 trains motion only."""
    from marionet.models import Animator, build_tiny_components
    from marionet.models.sd15 import CLIP_VISION_CONFIG, build_sd15_components

    if arch == "tiny":
        parts = build_tiny_components(seed=0, with_motion=video)
        animator = Animator.from_base_unet(parts["unet"], parts["pose_guider"], parts.get("motion_adapter"))
        clip_size = 32
    else:
        parts = build_sd15_components(video=video)
        animator = Animator(parts["reference_unet"], parts["denoising_unet"], parts["pose_guider"],
                            parts.get("motion_adapter"))
        clip_size = CLIP_VISION_CONFIG["image_size"]
    if video:
        animator.freeze_except_motion()
    return animator, parts["vae"], parts["image_encoder"], parts["scheduler"], clip_size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="training config whose optim/noise settings to use (default: built-ins)")
    parser.add_argument("--arch", choices=("sd15", "tiny"), default="tiny")
    parser.add_argument("--resolution", type=int, default=None, help="square pixels (default: config's image_size)")
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default: config's batch)")
    parser.add_argument("--frames", type=int, default=1, help="> 1: stage-2 clips with motion modules")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None)
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    from marionet.train.config import TrainConfig, load_config
    from marionet.train.core import Frozen, diffusion_loss, encode_batch, make_training_scheduler, sample_noise, \
        step_generator

    cfg = load_config(args.config) if args.config else None
    optim, noise_cfg = (cfg.optim, cfg.noise) if cfg else (TrainConfig().optim, TrainConfig().noise)
    resolution = args.resolution or (cfg.data.image_size if cfg else 512)
    batch = args.batch or optim.train_batch_size
    checkpointing = optim.gradient_checkpointing if args.gradient_checkpointing is None else args.gradient_checkpointing
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = (args.mixed_precision or optim.mixed_precision) if device.type == "cuda" else "no"
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    video = args.frames > 1

    animator, vae, encoder, base_scheduler, clip_size = build(args.arch, video)
    frozen = Frozen(vae.requires_grad_(False).to(device, half), encoder.requires_grad_(False).to(device, half),
                    None, make_training_scheduler(base_scheduler.config, noise_cfg))
    animator.to(device).train()
    if checkpointing:
        animator.enable_gradient_checkpointing()
    params = [p for p in animator.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-2)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    frames_shape = (batch, args.frames) if video else (batch,)
    gen = torch.Generator().manual_seed(0)
    pixels = {"target": torch.rand(*frames_shape, 3, resolution, resolution, generator=gen) * 2 - 1,
              "pose": torch.rand(*frames_shape, 3, resolution, resolution, generator=gen),
              "reference": torch.rand(batch, 3, resolution, resolution, generator=gen) * 2 - 1,
              "clip_image": torch.randn(batch, 3, clip_size, clip_size, generator=gen)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    times = []
    for step in tqdm(range(args.steps + 1), desc="bench", unit="step"):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        generator = step_generator(0, 0, step, 0)
        inputs = encode_batch(pixels, frozen, device, generator)
        noise, timesteps, dropped = sample_noise(inputs["latents"], frozen.scheduler, noise_cfg, generator)
        with torch.autocast(device.type, dtype=half, enabled=precision != "no"):
            loss, _ = diffusion_loss(animator, inputs, noise, timesteps, dropped, frozen.scheduler, noise_cfg)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step > 0:  # step 0 is warm-up (allocator, kernels)
            times.append(time.perf_counter() - start)

    per_step = sum(times) / len(times)
    if device.type == "cuda":
        memory = f"peak CUDA allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        name = torch.cuda.get_device_name()
    else:
        memory = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
        name = f"CPU, {torch.get_num_threads()} threads"
    trainable = sum(p.numel() for p in params) / 1e6
    print(f"arch={args.arch} resolution={resolution} batch={batch} frames={args.frames} "
          f"precision={precision} gradient_checkpointing={checkpointing} trainable={trainable:.1f}M device={name}")
    print(f"{per_step:.3f} s/step   {batch / per_step:.2f} samples/s   {batch * args.frames / per_step:.2f} frames/s   "
          f"{memory}   ({len(times)} timed steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
