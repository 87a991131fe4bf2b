"""Inference benchmark: seconds per frame, peak memory, and the ReferenceNet / denoising / VAE split.

    python inference/bench.py [--arch sd15|tiny] [--frames 24] [--width 512 --height 768] [--steps 25]

Weights are random (the SD1.5 architecture is built from its configs written below; nothing is downloaded), which
does not change the cost. Each configuration is run twice: the pipeline as shipped (ReferenceNet once per video) and
with the ReferenceNet recomputed at every step and window, as a naive implementation would, to show what running it
once saves. On a shared CPU box the wall clock depends on the load; the process CPU seconds are printed beside it.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a clone: import marionet from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, sample_size=512)
CLIP_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                    image_size=224, patch_size=14, projection_dim=768)


def build_sd15(video: bool):
    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from marionet.models.pose_guider import PoseGuider
    from marionet.models.tiny import training_scheduler
    from marionet.inference.pipeline import _image_processor_class

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET)
    reference = UNet2DConditionModel(**SD15_UNET)
    adapter = MotionAdapter(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                            motion_max_seq_length=32) if video else None
    return dict(reference_unet=reference, denoising_unet=unet, pose_guider=PoseGuider(),
                vae=AutoencoderKL(**SD15_VAE),
                image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_L14)),
                feature_extractor=_image_processor_class()(size={"shortest_edge": 224},
                                                           crop_size={"height": 224, "width": 224}),
                scheduler=training_scheduler(), motion_adapter=adapter)


def build_tiny(video: bool):
    import copy

    from diffusers import UNet2DConditionModel

    from marionet.models.tiny import build_tiny_components

    parts = build_tiny_components(seed=0, with_motion=video)
    unet = parts.pop("unet")
    reference = UNet2DConditionModel.from_config(unet.config)
    reference.load_state_dict(copy.deepcopy(unet.state_dict()))
    return dict(reference_unet=reference, denoising_unet=unet, **parts)


def peak_memory(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU allocated"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process peak RSS"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["sd15", "tiny"], default="sd15")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--context", type=int, default=24)
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument("--image-model", action="store_true", help="stage-1 model (no motion modules)")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                        help="default: fp16 on cuda, fp32 on cpu")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per variant; the fastest (least disturbed by other load) is reported")
    parser.add_argument("--skip-naive", action="store_true", help="do not run the ReferenceNet-every-step variant")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from marionet.inference.pipeline import PoseToVideoPipeline

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    build = build_sd15 if args.arch == "sd15" else build_tiny
    start = time.perf_counter()
    pipe = PoseToVideoPipeline(**build(video=not args.image_model))
    if device.type != "cpu" or dtype != torch.float32:
        pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    print(f"built {args.arch} {'image' if args.image_model else 'video'} model (random weights) in "
          f"{time.perf_counter() - start:.1f} s")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "") + f", {dtype}")

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    poses = np.zeros((args.frames, args.height, args.width, 3), np.uint8)
    for i in range(args.frames):
        poses[i, args.height // 4: args.height // 2, (i * 7) % (args.width // 2):(i * 7) % (args.width // 2) + 16] = 255

    print(f"{args.frames} frames {args.width}x{args.height}, {args.steps} steps, guidance {args.guidance}, "
          f"context {args.context}/{args.overlap}")
    variants = [("reference once", False)] + ([] if args.skip_naive else [("reference every step", True)])
    for label, naive in variants:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        best = None
        for _ in range(max(1, args.repeat)):
            wall, cpu = time.perf_counter(), time.process_time()
            pipe(reference, poses, num_inference_steps=args.steps, guidance_scale=args.guidance,
                 context_frames=args.context, context_overlap=args.overlap, seed=0,
                 recompute_reference_every_step=naive)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if best is None or wall < best[0]:
                best = (wall, cpu, dict(pipe.timings))
        wall, cpu, t = best
        print(f"[{label}] {wall:.2f} s wall ({wall / args.frames:.3f} s/frame), {cpu:.1f} s process CPU; "
              f"ReferenceNet {t['reference_s']:.2f} s ({t['reference_calls']} calls), denoising "
              f"{t['denoise_s']:.2f} s ({t['windows']} windows), VAE+CLIP {t['vae_s']:.2f} s; "
              f"peak {peak_memory(device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
