"""Shared pieces of every converter: reading a weights file safely, loading a state dict exactly (every missing,
unexpected or mis-shaped key reported, nothing skipped silently) and writing an output folder atomically."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ...atomic import atomic_folder
from ..loading import require_file

WRAPPER_KEYS = ("state_dict", "module", "model")


class ConversionError(ValueError):
    """Weights that do not fit what they claim to be: the message names the file and the offending keys."""


def read_state_dict(path, what: str, allow_pickle: bool = False) -> dict:
    """Tensors of a .safetensors / .ckpt / .pth / .bin file as a flat dict.

    Pickled files are opened with `torch.load(weights_only=True)`, which refuses anything but tensors and plain
    containers. A file that needs arbitrary code to unpickle is refused unless `allow_pickle` (only for files you
    trust: unpickling can run code). Lightning-style wrappers ({"state_dict": ...}) and DDP's "module." are removed.
    """
    path = require_file(path, what)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0][:200]
        raise ConversionError(f"{what}: {path} cannot be read with torch.load(weights_only=True) ({reason}); "
                              "if you trust the file, pass --allow-pickle, or re-save it as safetensors") from error
    except Exception as error:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise ConversionError(f"{what}: cannot read {path}: {type(error).__name__}: {error}") from error
    while isinstance(state, dict) and len(state) <= 3 and any(k in state for k in WRAPPER_KEYS):
        inner = next(state[k] for k in WRAPPER_KEYS if k in state)
        if not isinstance(inner, dict):
            break
        state = inner
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(f"{what}: {path} is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def empty_model(build):
    """`build()` on the meta device: no memory and no random init for weights that are about to be replaced
    (an SD1.5 UNet's random init costs seconds and 3.4 GB). `load_exact` then gives it real tensors."""
    with torch.device("meta"):
        return build()


def load_exact(model: torch.nn.Module, state: dict, what: str) -> None:
    """Load `state` into `model` only if keys and shapes match exactly; otherwise raise naming every difference.
    A model built by `empty_model` takes the tensors themselves (cast to the model's dtype)."""
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in sorted(set(state) & set(expected))
             if state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches: {'; '.join(wrong[:8])}")
    if problems:
        raise ConversionError(f"{what}: " + " | ".join(problems))
    empty = any(t.is_meta for t in expected.values())
    # Fresh, allocator-aligned copies: tensors read from a file can sit at unaligned offsets, where CPU kernels take
    # other code paths and round differently (~1e-6) from the same weights loaded any other way.
    state = {k: v.to(dtype=expected[k].dtype, memory_format=torch.contiguous_format, copy=True)
             for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=empty)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:  # a non-persistent buffer of an empty model: nothing in a state dict can fill it
        raise ConversionError(f"{what}: {len(left)} tensors were not filled: {_listing(left)}")


def prepare_output(out, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def write_folder_atomically(out, write, overwrite: bool = False) -> Path:
    """`write(tmp)` fills a temporary folder beside `out`, which is renamed to `out` only when complete."""
    with atomic_folder(out, overwrite=overwrite) as tmp:
        write(tmp)
    return Path(out)
