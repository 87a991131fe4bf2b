"""Atomic file output: write under a temporary name in the target's folder, then os.replace it into place.

A crash never leaves a half-written file under the final name, and readers never see a partial file.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path, overwrite: bool = True):
    """Yield a temporary path next to `path` (same suffix, so tools that infer the format from it still work);
    on success it replaces `path` with normal file permissions, on failure it is removed."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (refusing to overwrite it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    try:
        yield temp
        os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp creates 0600 files
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def write_json(path, payload, overwrite: bool = True, indent: int | None = 1) -> Path:
    with atomic_path(path, overwrite) as temp:
        with open(temp, "w") as stream:
            json.dump(payload, stream, indent=indent, separators=None if indent else (",", ":"))
    return Path(path)
