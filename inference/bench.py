"""Inference benchmark: seconds per frame, peak memory, and the ReferenceNet / denoising / VAE split.

    python inference/bench.py [--arch sd15|tiny] [--frames 24] [--width 512 --height 768] [--steps 25]

Weights are random (the SD1.5 architecture comes from marionet.models.sd15; nothing is downloaded), which does not
change the cost. Each configuration is run twice: the pipeline as shipped (ReferenceNet once per video) and with the
ReferenceNet recomputed before every window of every step, as a naive implementation would, to show what running it
once saves. The timings come from `TimedPipeline`, a subclass that wraps the pipeline's stages with timers: the
shipped `__call__` has no benchmark switches. On a shared CPU box the wall clock depends on the load; the process CPU
seconds are printed beside it.
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

import torch  # noqa: E402

from marionet.inference.pipeline import PoseToVideoPipeline  # noqa: E402


class TimedPipeline(PoseToVideoPipeline):
    """PoseToVideoPipeline with timers around its stages; `naive = True` reruns the ReferenceNet before every
    window of every step (what not caching the bank would cost)."""

    naive = False

    def reset_timings(self) -> None:
        self.timings = {"reference_s": 0.0, "reference_calls": 0, "encode_s": 0.0, "decode_s": 0.0, "windows": 0}
        self._bank_inputs = None

    def _timed(self, key: str, work):
        device = self._execution_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.timings[key] += time.perf_counter() - start
        return result

    def encode_image(self, reference):
        return self._timed("encode_s", lambda: super(TimedPipeline, self).encode_image(reference))

    def encode_reference_latents(self, reference, height, width):
        return self._timed("encode_s", lambda: super(TimedPipeline, self).encode_reference_latents(
            reference, height, width))

    def write_reference_bank(self, ref_latents, image_embeds):
        self._bank_inputs = (ref_latents, image_embeds)
        self.timings["reference_calls"] += 1
        return self._timed("reference_s", lambda: super(TimedPipeline, self).write_reference_bank(
            ref_latents, image_embeds))

    def predict_window(self, latents, t, cond, frames, step=0):
        self.timings["windows"] += 1
        if self.naive:
            self.write_reference_bank(*self._bank_inputs)
        return super().predict_window(latents, t, cond, frames, step)

    def decode_latents(self, latents, chunk_size=8):
        return self._timed("decode_s", lambda: super(TimedPipeline, self).decode_latents(latents, chunk_size))


def build_tiny(video: bool) -> dict:
    from marionet.models import build_tiny_components, clone_unet

    parts = build_tiny_components(seed=0, with_motion=video)
    unet = parts.pop("unet")
    return dict(reference_unet=clone_unet(unet), denoising_unet=unet, **parts)


def peak_memory(device) -> str:
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
    parser.add_argument("--skip-naive", action="store_true", help="do not run the ReferenceNet-every-window variant")
    args = parser.parse_args(argv)

    import numpy as np

    from marionet.models.sd15 import build_sd15_components

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    build = build_sd15_components if args.arch == "sd15" else build_tiny
    start = time.perf_counter()
    pipe = TimedPipeline(**build(video=not args.image_model))
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
    variants = [("reference once", False)] + ([] if args.skip_naive else [("reference every window", True)])
    for label, naive in variants:
        pipe.naive = naive
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        best = None
        for _ in range(max(1, args.repeat)):
            pipe.reset_timings()
            wall, cpu = time.perf_counter(), time.process_time()
            pipe(reference, poses, num_inference_steps=args.steps, guidance_scale=args.guidance,
                 context_frames=args.context, context_overlap=args.overlap,
                 generator=torch.Generator().manual_seed(0), output_type="np")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if best is None or wall < best[0]:
                best = (wall, cpu, dict(pipe.timings))
        wall, cpu, t = best
        denoise = wall - t["reference_s"] - t["encode_s"] - t["decode_s"]
        print(f"[{label}] {wall:.2f} s wall ({wall / args.frames:.3f} s/frame), {cpu:.1f} s process CPU; "
              f"ReferenceNet {t['reference_s']:.2f} s ({t['reference_calls']} calls), denoising and the rest "
              f"{denoise:.2f} s ({t['windows'] // args.steps} windows/step), "
              f"VAE+CLIP {t['encode_s'] + t['decode_s']:.2f} s; "
              f"peak {peak_memory(device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
