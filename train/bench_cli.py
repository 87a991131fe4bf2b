"""`marionet bench memory|gpu|speed`: figures from benchmarks that live in the package (the script-style benchmarks are
`python train/bench.py`, `python inference/bench.py`, `python -m marionet.data.bench`)."""
from __future__ import annotations

import argparse


def _memory(args) -> int:
    from . import memory

    return memory.run(args)


def _speed(args) -> int:
    from ..inference import bench_speed

    return bench_speed.main(args)


def _gpu(args) -> int:
    from . import bench_gpu

    return bench_gpu.run(args)


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="measured figures: memory and FLOPs at SD1.5 size",
                                  description=__doc__)
    kinds = bench.add_subparsers(dest="bench", metavar="KIND", required=True)
    memory = kinds.add_parser(
        "memory", help="peak GPU memory and FLOPs of training and inference at SD1.5 size, without a GPU",
        description="Peak GPU memory (weights / gradients / optimizer / activations / frozen parts) and FLOPs of "
                    "marionet's own training step and pipeline at SD1.5 size, on fake tensors: no GPU, weights or "
                    "memory needed. See marionet/train/memory.py for the method.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    memory.add_argument("--quick", action="store_true", help="only the cases the README's table quotes")
    memory.add_argument("--out", help="write the report as JSON here")
    memory.add_argument("--update-docs", action="store_true",
                        help="rewrite the memory tables in README.md and docs/benchmarks.md from this run")
    memory.add_argument("--from", dest="from_report", metavar="JSON",
                        help="instead of measuring, take an earlier run's --out file (e.g. docs/memory.json)")
    memory.set_defaults(func=_memory)
    gpu = kinds.add_parser(
        "gpu", help="the GPU acceptance run (CUDA tests, SD1.5-size steps and renders, ~8 min on an H100/H200)",
        description="Run on a GPU machine: the CUDA-only tests, SD1.5-size training steps and renders against the "
                    "memory estimates, and the render variants; writes gpu.json and gpu.md. With --prepare-wheels, "
                    "only fetch the wheels a bare GPU image lacks. See marionet/train/bench_gpu.py.")
    gpu.add_argument("--out", default="gpu-report", help="folder for gpu.json and gpu.md")
    gpu.add_argument("--quick", action="store_true", help="skip the render variants (compile, SDPA backends)")
    gpu.add_argument("--prepare-wheels", metavar="DIR",
                     help="only download/build the wheels the GPU image lacks into DIR (run where pip has network)")
    gpu.add_argument("--python-version", default="3.12", help="the GPU machine's Python (for --prepare-wheels)")
    gpu.set_defaults(func=_gpu)
    speed = kinds.add_parser(
        "speed", help="UNet FLOPs, time and quality of each solver / step-cache setting on trained models",
        description="Per setting (solver, steps, step cache): UNet FLOPs per frame counted at SD1.5 size on the "
                    "meta device and on the measured model, wall time relative to DDIM-25 in the same run, and "
                    "quality on held-out videos against the ground truth and against a DDIM-50 render of the same "
                    "model and seed. See marionet/inference/bench_speed.py.")
    speed.add_argument("--demo", help="a `marionet demo` output folder: its stage-2 model and held-out videos")
    speed.add_argument("--model", help="model folder (instead of the demo's stage-2 model)")
    speed.add_argument("--data", help="held-out meta.json or shards (instead of the demo's)")
    speed.add_argument("--videos", type=int, default=2, help="held-out videos (default 2)")
    speed.add_argument("--frames", type=int, default=16, help="frames per video (default 16)")
    speed.add_argument("--context", type=int, default=16, help="context window (default 16)")
    speed.add_argument("--guidance", type=float, default=3.5, help="reference guidance (default 3.5)")
    speed.add_argument("--seed", type=int, default=0)
    speed.add_argument("--quick", action="store_true", help="five settings only (a smoke test)")
    speed.add_argument("--out", help="write the report as JSON here (e.g. docs/speed.json)")
    speed.add_argument("--update-docs", action="store_true",
                       help="rewrite the speed tables in README.md and docs/benchmarks.md from this run")
    speed.set_defaults(func=_speed)
