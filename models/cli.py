"""`marionet info` and `marionet tiny-model`."""
from __future__ import annotations

import importlib
import importlib.util
import platform


def register(subparsers) -> None:
    info = subparsers.add_parser("info", help="versions, device and optional accelerators",
                                 description="Print library versions, the compute device and optional extras.")
    info.set_defaults(func=run_info)

    tiny = subparsers.add_parser(
        "tiny-model", help="write a complete random-weight tiny model folder",
        description="Write a complete tiny model folder (random weights, same layout as exported trained models) "
                    "for smoke tests of every other command.")
    tiny.add_argument("--out", required=True, help="folder to create")
    tiny.add_argument("--with-motion", action="store_true", help="include AnimateDiff motion modules (video model)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    tiny.set_defaults(func=run_tiny_model)


def _version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as error:  # noqa: BLE001 - report, don't crash
        return f"installed but fails to import ({type(error).__name__}: {error})"


def run_info(args) -> int:
    import torch

    rows = [("python", platform.python_version())]
    rows += [(name, _version(name)) for name in ("torch", "diffusers", "transformers", "accelerate")]
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.device_count()} x {torch.cuda.get_device_name(0)})"
    else:
        device = f"cpu ({torch.get_num_threads()} threads); no CUDA device"
    rows.append(("device", device))
    rows.append(("bf16 on device", str(torch.cuda.is_available() and torch.cuda.is_bf16_supported())))
    rows += [(f"{name} (optional)", _version(name)) for name in ("xformers", "deepspeed", "onnxruntime", "decord")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def run_tiny_model(args) -> int:
    from pathlib import Path

    from ..errors import UserError

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} exists and is not empty (use --overwrite to replace it)")
    from .tiny import write_tiny_model

    write_tiny_model(out, with_motion=args.with_motion, seed=args.seed)
    print(f"wrote tiny {'video' if args.with_motion else 'image'} model to {out}")
    return 0
