"""The GPU acceptance run: one command, at most ~8 minutes on one H100/H200, that checks what a CPU cannot.

    # here (with network): the wheels the GPU image lacks, for its Python
    marionet bench gpu --prepare-wheels wheels/ --python-version 3.12
    # there (the repository copied over, no network): install them and run everything
    pip install --no-deps --no-index wheels/*.whl && PYTHONPATH=. python -m marionet.train.bench_gpu --out $OUT/gpu

It runs, in order, each part timed and any failure recorded instead of stopping the run:
1. the CUDA-only tests, `pytest -m gpu` (fp16/bf16 training steps, SDPA and xformers processors, model CPU offload);
2. at SD1.5 size with random weights (`models.sd15`): stage-1 training steps (512² and 768², batch 4, bf16,
   gradient checkpointing, 8-bit AdamW if bitsandbytes is there, else AdamW), a stage-2 step (512², 24 frames),
   and a render (24 frames, 768x512, 25 steps, guidance 3.5): seconds per step, samples per second, MFU from the
   FLOP counts of `marionet bench memory`, `torch.cuda.max_memory_allocated` beside the fake-tensor estimate;
3. the render's variants: bf16 vs fp16, channels_last, regional `torch.compile` of the UNets' blocks, SDPA backends.

It writes `gpu.json` and `gpu.md` (the tables docs/benchmarks.md quotes) into --out.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

# What the GPU image (torch, transformers, accelerate, safetensors, numpy preinstalled) lacks for these checks.
WHEELS = ("diffusers", "omegaconf", "antlr4-python3-runtime", "pytest", "pluggy", "iniconfig", "webdataset",
          "braceexpand")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks (vendor figures)


def wheel_specs() -> list[str]:
    """Each wheel pinned to the version installed here, so both machines run the same code."""
    from importlib import metadata

    specs = []
    for name in WHEELS:
        try:
            specs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            specs.append(name)
    return specs


def prepare_wheels(dest, python_version: str = "3.12", platform_tag: str = "manylinux2014_x86_64") -> list[str]:
    """Download (or build, for sdist-only packages such as antlr4) the wheels into `dest`; returns the commands."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    commands = []
    for spec in wheel_specs():
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    python_version, "--platform", platform_tag, "-d", str(dest), spec]
        if subprocess.run(download, capture_output=True).returncode != 0:  # no wheel on the index: build one
            download = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dest), spec]
            subprocess.run(download, check=True, capture_output=True)
        commands.append(" ".join(download))
    return commands


# ------------------------------------------------------------------------------------------------ measurements
@functools.lru_cache(maxsize=1)
def _components() -> dict:
    """The SD1.5-size random-weight components, built once on the CPU (the slow part) and shared by every part."""
    from ..models.sd15 import build_sd15_components

    return build_sd15_components(video=True)


@functools.lru_cache(maxsize=None)
def _inference_estimate(dtype: str, frames: int, height: int, width: int) -> float:
    from .memory import InferenceCase, track_inference

    return track_inference(InferenceCase(frames, height, width, precision=dtype))["peak"]


def _sync():
    import torch

    torch.cuda.synchronize()


def _timed(work, repeats: int) -> float:
    work()  # warm-up (allocator, kernels, compilation)
    _sync()
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    _sync()
    return (time.perf_counter() - start) / repeats


def peak_tflops(name: str) -> float | None:
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def train_step_figures(case, steps: int = 3) -> dict:
    """s/step, samples/s, MFU and peak memory of marionet's training step at SD1.5 size on the GPU."""
    import torch

    from ..models import Animator
    from .config import NoiseConfig
    from .core import Frozen, make_training_scheduler, store_frozen_in
    from .memory import _Loss, track_training, training_batch, training_flops

    parts = _components()
    animator = Animator(parts["reference_unet"], parts["denoising_unet"], parts["pose_guider"],
                        parts["motion_adapter"] if case.stage == 2 else None)
    if case.stage == 2:
        animator.freeze_except_motion()
    else:
        animator.requires_grad_(True)
        animator._wire_reference()  # re-freezes the ReferenceNet tail
    device = torch.device("cuda")
    animator.to(device).train()
    half = torch.bfloat16 if case.precision == "bf16" else torch.float16
    if case.frozen_half:
        store_frozen_in(animator, half)
    frozen = Frozen(parts["vae"].to(device, half).requires_grad_(False),
                    parts["image_encoder"].to(device, half).requires_grad_(False), None,
                    make_training_scheduler(parts["scheduler"].config, NoiseConfig()))
    if case.checkpointing:
        animator.enable_gradient_checkpointing()
    params = [p for p in animator.parameters() if p.requires_grad]
    try:
        import bitsandbytes

        optimizer, optimizer_name = bitsandbytes.optim.AdamW8bit(params, lr=1e-5), "adamw8bit"
    except ImportError:
        optimizer, optimizer_name = torch.optim.AdamW(params, lr=1e-5, foreach=True), "ddp"
    step = _Loss(animator, frozen, case.precision, "cuda")
    batch = {k: v.to(device) for k, v in training_batch(case, frozen.image_encoder.config.image_size).items()}

    def one():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=case.precision != "fp32"):
            loss = step(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    seconds = _timed(one, steps)
    allocated = torch.cuda.max_memory_allocated()
    del optimizer
    animator.to("cpu")
    if case.frozen_half:
        store_frozen_in(animator, torch.float32)
    flops = training_flops(case) * case.batch
    estimate, _ = track_training(case).peak(optimizer_name)
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name)
    return {"case": case.label, "optimizer": optimizer_name, "s_per_step": round(seconds, 3),
            "samples_per_s": round(case.batch / seconds, 2),
            "mfu": round(flops / seconds / (peak * 1e12), 3) if peak else None,
            "max_allocated_gib": round(allocated / 2**30, 2), "estimate_gib": round(estimate / 2**30, 2)}


def render_figures(frames: int = 24, height: int = 768, width: int = 512, steps: int = 25, dtype: str = "fp16",
                   channels_last: bool = False, compile_blocks: bool = False, sdpa: str | None = None,
                   fast: bool = False) -> dict:
    """Seconds and peak memory of a render at SD1.5 size, with one variant switched on (fast: the `--fast`
    preset's solver, steps and step cache)."""
    import contextlib

    import numpy as np
    import torch

    from ..inference.pipeline import PoseToVideoPipeline

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    parts = dict(_components())
    pipe = PoseToVideoPipeline(**parts).to("cuda", torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    if fast:
        from ..inference import speed

        speed.apply(pipe, speed.FAST)
        steps = speed.FAST.steps
    if channels_last:
        for unet in (pipe.reference_unet, pipe.denoising_unet):
            unet.to(memory_format=torch.channels_last)
    if compile_blocks:  # regional compilation: each down/up block once, instead of the whole UNet
        for unet in (pipe.reference_unet, pipe.denoising_unet):
            for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
                block.compile()
    reference = np.zeros((height, width, 3), np.uint8)
    poses = np.zeros((frames, height, width, 3), np.uint8)
    kernel = contextlib.nullcontext()
    if sdpa:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = sdpa_kernel(getattr(SDPBackend, sdpa.upper()))
    torch.cuda.reset_peak_memory_stats()
    with kernel:
        seconds = _timed(lambda: pipe(reference, poses, num_inference_steps=steps, guidance_scale=3.5,
                                      generator=torch.Generator().manual_seed(0), output_type="latent"), 1)
    allocated = torch.cuda.max_memory_allocated()
    pipe.disable_step_cache()  # the components are shared with the next parts
    pipe.to("cpu", torch.float32)
    estimate = _inference_estimate(dtype, frames, height, width)
    return {"render": f"{frames} frames {width}x{height}, {steps} steps, {dtype}"
                      + (", channels_last" if channels_last else "") + (", compiled blocks" if compile_blocks else "")
                      + (f", SDPA {sdpa}" if sdpa else "") + (", fast preset" if fast else ""),
            "seconds": round(seconds, 2), "s_per_frame": round(seconds / frames, 3),
            "max_allocated_gib": round(allocated / 2**30, 2), "estimate_gib": round(estimate / 2**30, 2)}


# ------------------------------------------------------------------------------------------------ the run
def plan(quick: bool = False) -> list[tuple[str, dict]]:
    """(part, arguments) in the order they run: the tests, training steps, renders."""
    from .memory import TrainCase

    parts = [("tests", {})]
    parts += [("train", {"case": TrainCase(1, 512, 4, checkpointing=True)}),
              ("train", {"case": TrainCase(1, 768, 4, checkpointing=True)}),
              ("train", {"case": TrainCase(2, 512, 1, 24, checkpointing=True, frozen_half=True)})]
    parts += [("render", {}), ("render", {"fast": True}), ("render", {"dtype": "bf16"})]
    if not quick:  # compilation changes the shared modules for good: last
        parts += [("render", {"channels_last": True}), ("render", {"sdpa": "flash_attention"}),
                  ("render", {"sdpa": "efficient_attention"}), ("render", {"compile_blocks": True})]
    return parts


def run_part(kind: str, arguments: dict, repo: Path) -> dict:
    start = time.perf_counter()
    try:
        if kind == "tests":
            result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=repo,
                                    capture_output=True, text=True, timeout=300)
            outcome = {"returncode": result.returncode, "summary": result.stdout.strip().splitlines()[-1:]}
        elif kind == "train":
            outcome = train_step_figures(arguments["case"])
        else:
            outcome = render_figures(**arguments)
        outcome["ok"] = outcome.get("returncode", 0) == 0
    except Exception as error:  # noqa: BLE001 - record and go on: one failing part must not hide the others
        outcome = {"ok": False, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-2000:]}
    finally:
        import gc

        gc.collect()
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            sys.modules["torch"].cuda.empty_cache()
    outcome["part"], outcome["seconds_total"] = kind, round(time.perf_counter() - start, 1)
    return outcome


def write_report(results: list[dict], out) -> tuple[Path, Path]:
    """gpu.json (everything) and gpu.md (the training and render tables) in `out`."""
    from ..atomic import write_json, write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gpu.json", {"results": results, "machine": machine()}, indent=1)
    lines = [f"Machine: {machine()}", "", "| training step | optimizer | s/step | samples/s | MFU | max allocated GiB "
             "| estimate GiB |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if r["part"] == "train" and r.get("ok"):
            lines.append(f"| {r['case']} | {r['optimizer']} | {r['s_per_step']} | {r['samples_per_s']} | "
                         f"{r['mfu']} | {r['max_allocated_gib']} | {r['estimate_gib']} |")
    lines += ["", "| render | s | s/frame | max allocated GiB | estimate GiB |", "|---|---|---|---|---|"]
    for r in results:
        if r["part"] == "render" and r.get("ok"):
            lines.append(f"| {r['render']} | {r['seconds']} | {r['s_per_frame']} | {r['max_allocated_gib']} | "
                         f"{r['estimate_gib']} |")
    failed = [r for r in results if not r.get("ok")]
    if failed:
        lines += ["", "Failed parts: " + "; ".join(f"{r['part']}: {r.get('error') or r.get('summary')}"
                                                   for r in failed)]
    md = write_text(out / "gpu.md", "\n".join(lines) + "\n")
    return out / "gpu.json", md


def machine() -> str:
    try:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
        return f"{device}, torch {torch.__version__}, Python {platform.python_version()}"
    except ImportError:
        return f"Python {platform.python_version()} (no torch)"


def run(args) -> int:
    if args.prepare_wheels:
        for command in prepare_wheels(args.prepare_wheels, args.python_version):
            print(command)
        print(f"wheels in {args.prepare_wheels}: install there with pip install --no-deps --no-index "
              f"{args.prepare_wheels}/*.whl")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("marionet bench gpu: no CUDA device here; this run is for the GPU machine "
              "(see `marionet bench gpu --help`)", file=sys.stderr)
        return 2
    repo = Path(__file__).resolve().parents[1]
    results = []
    for kind, arguments in plan(args.quick):
        results.append(run_part(kind, arguments, repo))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "trace"}), flush=True)
    paths = write_report(results, args.out)
    print("wrote " + ", ".join(map(str, paths)))
    return 0 if all(r.get("ok") for r in results) else 1


def main(argv=None) -> int:
    """`python -m marionet.train.bench_gpu ARGS` = `marionet bench gpu ARGS`."""
    from .bench_cli import register

    parser = argparse.ArgumentParser(prog="marionet")
    register(parser.add_subparsers())
    return run(parser.parse_args(["bench", "gpu", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
