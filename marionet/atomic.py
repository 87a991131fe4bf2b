"""Atomic output, the one implementation every writer in marionet uses: files and folders are written under a
temporary name beside their target and moved into place only when complete.

A crash never leaves a half-written file or folder under the final name, and readers never see a partial one.
Temporary names start with "." so listings (checkpoints, model folders) skip them. What is published gets the
permissions a plain `open()` / `mkdir()` would give under the user's umask (mkstemp/mkdtemp create 0600/0700, which
would hide a model a teammate trained on a shared filesystem).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
FOLDER_MODE = 0o777 & ~_UMASK


@contextlib.contextmanager
def atomic_path(path, overwrite: bool = True):
    """Yield a temporary file path next to `path` (same suffix, so tools that infer the format from it still work);
    on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (refusing to overwrite it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    try:
        yield temp
        publish_file(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def publish_file(temp, path) -> Path:
    """Move a finished file into place (same filesystem), with normal permissions."""
    os.chmod(temp, FILE_MODE)
    os.replace(temp, path)
    return Path(path)


def write_json(path, payload, overwrite: bool = True, indent: int | None = 1) -> Path:
    with atomic_path(path, overwrite) as temp:
        with open(temp, "w") as stream:
            json.dump(payload, stream, indent=indent, separators=None if indent else (",", ":"))
    return Path(path)


def write_text(path, text: str, overwrite: bool = True) -> Path:
    with atomic_path(path, overwrite) as temp:
        Path(temp).write_text(text)
    return Path(path)


def staging_folder(final, prefix: str = "tmp") -> Path:
    """An empty hidden folder beside `final` (same filesystem, so publishing it is a rename)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.{prefix}-", dir=final.parent))


def publish_folder(temp, final) -> Path:
    """Swap a finished folder into `final`; an existing one is only deleted once the new one is in place."""
    temp, final = Path(temp), Path(final)
    os.chmod(temp, FOLDER_MODE)
    old = None
    if final.exists():
        old = staging_folder(final, "old")
        os.replace(final, old / final.name)
    os.replace(temp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def atomic_folder(final, overwrite: bool = True):
    """Yield an empty temporary folder; when the block completes it becomes `final` (replacing an older one only
    if `overwrite`); if the block fails it is removed and `final` is left as it was."""
    final = Path(final)
    if not overwrite and final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise FileExistsError(f"{final} exists and is not empty (use --overwrite to replace it)")
    temp = staging_folder(final)
    try:
        yield temp
        publish_folder(temp, final)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
