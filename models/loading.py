"""Local-only loading helpers: every component comes from a folder on disk, and a missing one is named."""
from __future__ import annotations

import os
from pathlib import Path


class MissingWeightsError(FileNotFoundError):
    """A weight folder or file the user pointed at (or a model folder needs) does not exist."""


def require_dir(path, what: str, must_contain: tuple = ("config.json",)) -> Path:
    """Return `path` as a Path if it is a folder holding `must_contain`; else raise naming the folder and part."""
    path = Path(path)
    if not path.is_dir():
        raise MissingWeightsError(f"{what}: folder not found: {path}")
    for name in must_contain:
        if not (path / name).exists():
            raise MissingWeightsError(f"{what}: {path} has no {name} (is this a diffusers/transformers folder?)")
    return path


def require_file(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{what}: file not found: {path}")
    return path


def offline_kwargs() -> dict:
    """Arguments that keep diffusers/transformers `from_pretrained` from ever touching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return {"local_files_only": True}


def clip_image_processor_class():
    """The CLIP preprocessor class: transformers 5 without torchvision has the PIL one (same config format)."""
    try:
        from transformers import CLIPImageProcessorPil as processor
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as processor
    return processor


def load_image_encoder(path, torch_dtype=None):
    """A CLIPVisionModelWithProjection folder, offline (transformers calls the dtype argument `dtype`)."""
    from transformers import CLIPVisionModelWithProjection

    folder = require_dir(path, "CLIP image encoder folder")
    return CLIPVisionModelWithProjection.from_pretrained(
        folder, **offline_kwargs(), **({"dtype": torch_dtype} if torch_dtype is not None else {}))
