"""Checkpoints that prove they are whole, and resuming from the newest one that is.

A checkpoint is written as `.checkpoint-<step>.partial` (accelerate's `save_state` from every process, plus one
`training_state_<rank>.json` each), then the main process records what it holds in `manifest.json` (every file with
its size and SHA-256) and renames the folder into place. A crash or a full disk at any moment leaves nothing that
looks complete: a failed write removes the partial folder and stops the run with one line naming the disk, the step
and the last good checkpoint.

`resume_from_checkpoint=latest` verifies the newest checkpoint against its manifest (a truncated file, a missing file
or, with checksums, changed bytes) and falls back to the previous complete one, saying so; an explicitly named
damaged checkpoint is refused. Checkpoints written before manifests existed are used as they are (they cannot be
verified), as before.
"""
from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from ..atomic import OutputWriteError, is_write_failure, publish_folder, write_failure, write_json
from .config import ConfigError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "manifest.json"
STATE_FILE = "training_state_0.json"


class CheckpointDamaged(RuntimeError):
    """No checkpoint that resuming may use is whole; the message says which and what to run."""


def list_checkpoints(output_dir) -> list[Path]:
    """Checkpoints renamed into place and holding a manifest (or, written before manifests, their state file),
    oldest first. Whether their files are whole is `verify_checkpoint`'s job."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and ((path / MANIFEST).is_file() or (path / STATE_FILE).is_file()):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, step: int, checksum: bool) -> dict:
    """manifest.json: every file of `folder` with its size (and SHA-256), written last."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        entry = {"bytes": path.stat().st_size}
        if checksum:
            entry["sha256"] = _sha256(path)
        files[path.relative_to(folder).as_posix()] = entry
    manifest = {"step": step, "files": files, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(folder / MANIFEST, manifest)
    return manifest


def verify_checkpoint(folder: Path) -> str | None:
    """None if the checkpoint is whole, else what is wrong with it (one line). No manifest: nothing to check."""
    import json

    manifest_path = Path(folder) / MANIFEST
    if not manifest_path.is_file():
        return None if (Path(folder) / STATE_FILE).is_file() else "no manifest.json and no training state"
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError) as error:
        return f"its manifest.json is unreadable ({error})"
    for name, entry in files.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{name} has {size} bytes, the manifest says {entry['bytes']}"
        if "sha256" in entry and _sha256(path) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def save_checkpoint(accelerator, output_dir: Path, state: dict, keep: int | None, checksum: bool = True) -> Path:
    """save_state into a hidden partial folder, a manifest, then the rename: a crash or a failed write mid-way
    leaves nothing that looks done. A failed write on any process stops every process with one clear error."""
    step = state["global_step"]
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    failure = None
    try:
        accelerator.save_state(str(partial))
        write_json(partial / f"training_state_{accelerator.process_index}.json", state)
    except (OSError, RuntimeError) as error:
        if not is_write_failure(error, partial):
            raise
        failure = write_failure(f"checkpoint-{step}", partial, error)
    failed = accelerator.reduce(torch.tensor(float(failure is not None), device=accelerator.device), "sum")
    if accelerator.is_main_process and failed == 0:
        try:
            write_manifest(partial, step, checksum)
            publish_folder(partial, final)
        except (OSError, RuntimeError) as error:
            if not is_write_failure(error, partial):
                raise
            failure = write_failure(f"checkpoint-{step}", partial, error)
    failed = accelerator.reduce(torch.tensor(float(failure is not None), device=accelerator.device), "sum")
    if failed > 0:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        last = list_checkpoints(output_dir)
        reason = str(failure) if failure is not None else f"another process could not write its part of {partial}"
        raise OutputWriteError(
            f"{reason} (step {step}); the partial checkpoint was removed; last good checkpoint: "
            f"{last[-1] if last else 'none'}. Free space, then resume with checkpoint.resume_from_checkpoint=latest")
    if accelerator.is_main_process and keep is not None:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def rerun_command(extra: str) -> str:
    """What to run: the same command with `extra` appended (this process's command line as the example)."""
    return f"run the same command with `{extra}` appended (here: {shlex.join(sys.argv)} {extra})"


def resolve_resume(wanted: str | None, output_dir: Path, say=print) -> Path | None:
    """The checkpoint to resume from: None (start fresh), the newest whole one for "latest" (falling back over
    damaged ones, each reported with `say`), or the named folder if it is whole."""
    if not wanted:
        return None
    if wanted != "latest":
        path = Path(wanted)
        if not path.is_dir() or not ((path / MANIFEST).is_file() or (path / STATE_FILE).is_file()):
            raise ConfigError(f"checkpoint.resume_from_checkpoint: {path} is not a complete checkpoint folder")
        problem = verify_checkpoint(path)
        if problem:
            raise ConfigError(f"checkpoint.resume_from_checkpoint: {path} is damaged ({problem}); name an earlier "
                              "checkpoint, or use checkpoint.resume_from_checkpoint=latest to take the newest whole one")
        return path
    found = list_checkpoints(output_dir)
    damaged = []
    for path in reversed(found):
        problem = verify_checkpoint(path)
        if problem is None:
            if damaged:
                say(f"resuming from {path.name}: skipped damaged " + "; ".join(damaged))
            return path
        damaged.append(f"{path.name} ({problem})")
        say(f"{path.name} is damaged ({problem}): trying the previous checkpoint")
    if damaged:
        raise CheckpointDamaged(f"no whole checkpoint left in {output_dir}: " + "; ".join(damaged) +
                                f". To start over, {rerun_command('overwrite=true checkpoint.resume_from_checkpoint=null')}")
    return None
