"""One run per output directory: an advisory lock file held by the main process while a run uses `output_dir`.

A second launch on a busy folder (the same command started twice, a job scheduler retrying too early) refuses at
start-up with one line naming the holder (host, pid, start time) instead of interleaving logs and overwriting the
other run's checkpoints. The lock is an `flock` on `output_dir/.marionet-run.lock`: the kernel drops it when the
holder exits or dies, so a crash never leaves a stale lock (the file stays, describing the last holder). Only the main
process of a launch takes it, so multi-process and multi-node launches of one run work as before.
"""
from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

LOCK_NAME = ".marionet-run.lock"


class OutputLocked(RuntimeError):
    """Another run holds output_dir."""


class RunLock:
    def __init__(self, output_dir):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_NAME
        self._fd = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLocked(f"{self.output_dir} is in use by another run ({self.holder()}): wait for it to end, "
                               "stop it, or give this run another output_dir") from None
        except OSError as error:  # a filesystem without locks: run, but say what is not protected
            warnings.warn(f"{self.path}: file locks are not supported here ({error.strerror}); a second run on "
                          f"{self.output_dir} would not be detected")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, started {info.get('started', '?')}"

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_output_dir(accelerator, output_dir) -> RunLock | None:
    """The main process takes the lock; every process raises `OutputLocked` if it is held elsewhere."""
    from accelerate.utils import broadcast_object_list

    lock, message = None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock(output_dir).acquire()
        except OutputLocked as error:
            message = str(error)
    if accelerator.num_processes > 1:
        message = broadcast_object_list([message])[0]
    if message is not None:
        raise OutputLocked(message)
    return lock
