"""What clusters do to a run (issue 14), on tiny stage-1 runs: a second launch on a busy output_dir, damaged
checkpoints, full disks and other failed writes (checkpoint, export, validation media, animate and compare outputs),
and outputs other users can read."""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from marionet.atomic import OutputWriteError
from tests.test_train import assets, fresh_dir, tiny_config  # noqa: F401 - `assets` is a fixture

HOLD_LOCK = """
import sys, time
from marionet.train.lock import RunLock
RunLock(sys.argv[1]).acquire()
print("holding", flush=True)
time.sleep(600)
"""
NO_SPACE = OSError(errno.ENOSPC, "No space left on device")
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 6726080 vs 6725972")


def short(assets, name, **overrides):
    settings = {"optim.max_train_steps": 2, "checkpoint.checkpointing_steps": 2, "validation.num_samples": 0}
    return tiny_config(assets, output_dir=fresh_dir(assets, name), **{**settings, **overrides})


# ------------------------------------------------------------------------------------------------ one run per folder
def test_second_launch_on_a_busy_output_dir_is_refused_naming_the_holder(assets, capsys):
    from marionet.train.core import run
    from marionet.train.lock import OutputLocked
    from marionet.train.core import main

    cfg = short(assets, "busy")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, cfg.output_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(OutputLocked, match=f"pid {holder.pid}, started"):
            run(cfg)
        overrides = [f"output_dir={cfg.output_dir}", f"model.base_model={cfg.model.base_model}",
                     f"data.meta={cfg.data.meta}", "data.image_size=32", "report_to=none"]
        assert main(1, ["--config", "tiny/stage1.yaml", *overrides]) == 2  # the script: one line, no traceback
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is in use by another run (host" in err[0] and str(holder.pid) in err[0]
        assert sorted(p.name for p in Path(cfg.output_dir).iterdir()) == [".marionet-run.lock"]
    finally:
        holder.kill()  # SIGKILL: the holder cleans nothing up
        holder.wait()
    result = run(cfg)  # the kernel dropped the dead holder's lock: nothing stale to clear by hand
    assert result.model_dir.is_dir()


# ------------------------------------------------------------------------------------------------ checkpoints
def test_damaged_newest_checkpoint_is_skipped_and_the_run_repeats_the_uninterrupted_losses(assets, capsys):
    from marionet.train.checkpoints import verify_checkpoint
    from marionet.train.config import ConfigError
    from marionet.train.core import run

    every_two = {"checkpoint.checkpointing_steps": 2, "checkpoint.checkpoints_total_limit": "null",
                 "validation.num_samples": 0}
    whole = run(tiny_config(assets, output_dir=fresh_dir(assets, "faults_whole"), **every_two))
    split = fresh_dir(assets, "faults_split")
    first = run(tiny_config(assets, output_dir=split, stop_at_step=4, **every_two))
    damaged = split / "checkpoint-4"
    optimizer = damaged / "optimizer.bin"
    size = optimizer.stat().st_size
    with open(optimizer, "r+b") as stream:  # what a full disk or a dying node leaves
        stream.truncate(size // 2)
    assert verify_checkpoint(damaged) == f"optimizer.bin has {size // 2} bytes, the manifest says {size}"
    with pytest.raises(ConfigError, match="checkpoint-4 is damaged"):
        run(tiny_config(assets, output_dir=split, **every_two, **{"checkpoint.resume_from_checkpoint": damaged}))
    capsys.readouterr()
    second = run(tiny_config(assets, output_dir=split, **every_two,
                             **{"checkpoint.resume_from_checkpoint": "latest"}))
    out = capsys.readouterr().out
    assert "checkpoint-4 is damaged (optimizer.bin has" in out and "resuming from checkpoint-2" in out
    assert sorted(second.losses) == [3, 4, 5, 6]
    combined = {**{k: v for k, v in first.losses.items() if k <= 2}, **second.losses}
    for step, loss in whole.losses.items():
        assert combined[step] == pytest.approx(loss, rel=1e-5, abs=1e-7), step

    # Same size, other bytes: the checksum notices; sizes alone would not.
    flipped = whole.output_dir / "checkpoint-6" / "model.safetensors"
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF
    flipped.write_bytes(bytes(data))
    assert verify_checkpoint(flipped.parent) == "model.safetensors does not match its checksum"

    # Outputs other users can read: no 0600 weights (safetensors' default) and no 0700 folders (mkdtemp's).
    umask = os.umask(0)
    os.umask(umask)
    for root in (whole.output_dir / "checkpoint-2", whole.model_dir):
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o777 if path.is_dir() else 0o666) & ~umask, (path, oct(mode))


def test_no_whole_checkpoint_left_stops_with_the_command_to_start_over(assets):
    from marionet.train.checkpoints import CheckpointDamaged
    from marionet.train.core import run

    cfg = short(assets, "all_damaged", stop_at_step=2, **{"optim.max_train_steps": 4})
    run(cfg)
    (Path(cfg.output_dir) / "checkpoint-2" / "model.safetensors").unlink()
    with pytest.raises(CheckpointDamaged, match="model.safetensors is missing.*overwrite=true"):
        run(tiny_config(assets, output_dir=cfg.output_dir, **{"optim.max_train_steps": 4, "validation.num_samples": 0,
                                                              "checkpoint.resume_from_checkpoint": "latest"}))


# ------------------------------------------------------------------------------------------------ failed writes
@pytest.mark.parametrize("failure", [NO_SPACE, TORCH_FULL], ids=["ENOSPC", "torch-serializer"])
def test_full_disk_while_checkpointing_names_the_step_the_disk_and_the_last_good_checkpoint(assets, monkeypatch,
                                                                                          failure):
    from accelerate import Accelerator

    from marionet.train.checkpoints import list_checkpoints, verify_checkpoint
    from marionet.train.core import run

    real_save = Accelerator.save_state
    calls = []

    def save_until_the_disk_is_full(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 1:
            return real_save(self, output_dir, **kwargs)
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "model.safetensors"), "wb") as stream:
            stream.write(b"half a file")
        raise failure

    monkeypatch.setattr(Accelerator, "save_state", save_until_the_disk_is_full)
    cfg = short(assets, "disk_full", **{"optim.max_train_steps": 4})
    with pytest.raises(OutputWriteError) as caught:
        run(cfg)
    message = str(caught.value)
    out = Path(cfg.output_dir)
    assert "\n" not in message and "(step 4)" in message and "MiB free on" in message
    assert f"last good checkpoint: {out / 'checkpoint-2'}" in message and "resume_from_checkpoint=latest" in message
    assert ("No space left on device" if failure is NO_SPACE else "unexpected pos") in message
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"] and verify_checkpoint(out / "checkpoint-2") is None
    assert not list(out.glob(".checkpoint-*")) and not (out / "model").exists()


def _can_mount_tmpfs(path) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True)
    if probe.returncode != 0:
        return False
    subprocess.run(["umount", str(path)], check=True)
    return True


def test_a_real_full_disk_keeps_the_last_good_checkpoint(assets, tmp_path):
    """The issue's case: a 40 MB tmpfs as output_dir; one tiny checkpoint (26 MB) fits, the second does not."""
    from marionet.train.checkpoints import list_checkpoints, verify_checkpoint
    from marionet.train.core import run

    disk = tmp_path / "small_disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs root and tmpfs mounts (CI has both)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)], check=True)
    try:
        cfg = tiny_config(assets, output_dir=disk / "run", **{"optim.max_train_steps": 4, "validation.num_samples": 0,
                                                              "checkpoint.checkpointing_steps": 2})
        with pytest.raises(OutputWriteError) as caught:
            run(cfg)
        message = str(caught.value)
        assert "checkpoint-4" in message and "(step 4)" in message and "MiB free on" in message, message
        assert f"last good checkpoint: {disk / 'run' / 'checkpoint-2'}" in message
        assert [p.name for p in list_checkpoints(disk / "run")] == ["checkpoint-2"]
        assert verify_checkpoint(disk / "run" / "checkpoint-2") is None
        assert not list((disk / "run").glob(".checkpoint-*"))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_failed_export_leaves_no_model_folder(assets, monkeypatch):
    import marionet.models.export as export

    def card_on_a_full_disk(*args, **kwargs):
        raise NO_SPACE

    monkeypatch.setattr(export, "model_folder_card", card_on_a_full_disk)  # the export's last write
    from marionet.train.core import run

    cfg = short(assets, "export_full")
    with pytest.raises(OutputWriteError, match="while exporting the model folder.*checkpoint-2"):
        run(cfg)
    out = Path(cfg.output_dir)
    assert not (out / "model").exists() and not list(out.glob(".model.*"))
    assert (out / "checkpoint-2" / "manifest.json").is_file()


def test_failed_validation_write_is_one_clear_error(assets, monkeypatch):
    from PIL import Image

    from marionet.train.core import run

    def save_on_a_full_disk(self, *args, **kwargs):
        raise NO_SPACE

    monkeypatch.setattr(Image.Image, "save", save_on_a_full_disk)
    cfg = short(assets, "validation_full", **{"validation.num_samples": 1, "validation.validation_steps": 1})
    with pytest.raises(OutputWriteError, match="step-000001.png.*No space left.*validation media at step 1"):
        run(cfg)
    assert not list((Path(cfg.output_dir) / "validation").glob("*.png"))


def test_animate_and_compare_report_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    import marionet.atomic as atomic
    from marionet.cli import main
    from marionet.data.synth import generate_dataset
    from marionet.models import write_tiny_model

    model = write_tiny_model(tmp_path / "model")
    meta = generate_dataset(tmp_path / "data", 1, 4, 32, 0)
    reference = tmp_path / "ref.png"
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(reference)

    def publish_on_a_full_disk(*args, **kwargs):
        raise NO_SPACE

    monkeypatch.setattr(atomic, "publish_file", publish_on_a_full_disk)
    monkeypatch.setattr(atomic, "publish_folder", publish_on_a_full_disk)
    pose = next((tmp_path / "data" / "poses").glob("*.mp4"))
    capsys.readouterr()
    assert main(["animate", "--model", str(model), "--ref", str(reference), "--pose", str(pose), "--steps", "1",
                 "--out", str(tmp_path / "out.mp4")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("marionet")]
    assert len(err) == 1 and "out.mp4" in err[0] and "No space left on device" in err[0] and "MiB free" in err[0]
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".out*"))
    assert main(["compare", "--data", str(meta), "--method", f"a={model}", "--out", str(tmp_path / "report"),
                 "--steps", "1", "--frames", "2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("marionet")]
    assert len(err) == 1 and "report" in err[0] and "No space left on device" in err[0]
    assert not (tmp_path / "report").exists() and not list(tmp_path.glob(".report*"))
