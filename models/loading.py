"""Local-only loading helpers: every component comes from a folder on disk, and a missing one is named."""
from __future__ import annotations

import os
import shutil
import tempfile
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


def save_folder_atomically(final: Path, write) -> None:
    """Call `write(tmp_folder)`, then swap the finished folder into `final` (replacing an older one)."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{tmp.name[-8:]}")
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
