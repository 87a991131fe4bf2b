"""Atomic output, the one implementation every writer in marionet uses: files and folders are written under a
temporary name beside their target and moved into place only when complete.

A crash never leaves a half-written file or folder under the final name, and readers never see a partial one.
Temporary names start with "." so listings (checkpoints, model folders) skip them. What is published gets the
permissions a plain `open()` / `mkdir()` would give under the user's umask (mkstemp/mkdtemp create 0600/0700, which
would hide a model a teammate trained on a shared filesystem).

A write that fails for lack of space or an I/O error (an OSError such as ENOSPC, or torch's serializer failing
mid-file) becomes one `OutputWriteError` naming the target, the reason and the free space left; the temporary file
or folder is removed.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
FOLDER_MODE = 0o777 & ~_UMASK
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
# What torch's zip serializer says when the file under it stops growing (a full disk, a lost mount).
TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "inline_container", "unexpected pos", "file write failed")


class OutputWriteError(OSError):
    """Writing an output failed (disk full, quota, I/O): the message names what, where and why."""


def is_write_failure(error: BaseException, target=None) -> bool:
    """Does `error` say that writing (to `target`) failed, rather than something about the inputs?"""
    if isinstance(error, OutputWriteError):
        return True
    if isinstance(error, OSError):
        inside = target is not None and error.filename is not None and \
            str(Path(error.filename).resolve()).startswith(str(Path(target).resolve().parent))
        return error.errno in WRITE_ERRNOS or (inside and error.errno in (errno.EACCES, errno.EPERM))
    return isinstance(error, RuntimeError) and any(text in str(error) for text in TORCH_WRITE_FAILURES)


def free_space(path) -> str:
    """'123 MiB free on /mount' for the filesystem holding `path` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return "free space unknown"
    mount = path
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return f"{usage.free / 2**20:.0f} MiB free on {mount}"


def write_failure(what: str, target, error: BaseException) -> OutputWriteError:
    """One clear error for a failed write of `what` at `target`."""
    if isinstance(error, OutputWriteError):
        return error
    if isinstance(error, OSError) and error.strerror:
        reason = f"{error.strerror} (errno {error.errno})"
    else:
        reason = str(error).strip().splitlines()[0][:200] or type(error).__name__
    return OutputWriteError(f"could not write {what} to {target}: {reason}; {free_space(target)}")


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
    except (OSError, RuntimeError) as error:
        if is_write_failure(error, path):
            raise write_failure(path.name, path, error) from error
        raise
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


def normal_permissions(folder) -> None:
    """Give a folder tree the permissions plain `mkdir` / `open` give under the umask: mkdtemp makes 0700 folders and
    some writers (safetensors) 0600 files, which teammates and services on a shared filesystem cannot read."""
    os.chmod(folder, FOLDER_MODE)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), FOLDER_MODE)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, FILE_MODE | (os.stat(path).st_mode & 0o111 & ~_UMASK))  # keep executables so


def publish_folder(temp, final) -> Path:
    """Swap a finished folder into `final` (with normal permissions); an existing one is only deleted once the new
    one is in place."""
    temp, final = Path(temp), Path(final)
    normal_permissions(temp)
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
    except (OSError, RuntimeError) as error:
        if is_write_failure(error, final):
            raise write_failure(final.name, final, error) from error
        raise
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
