"""The `marionet` command answers --help and info; tiny-model writes a loadable folder."""
import subprocess
import sys

import pytest

from marionet.cli import main as marionet_main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        marionet_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "info" in out and "tiny-model" in out


def test_info_prints_versions_and_device():
    result = subprocess.run([sys.executable, "-m", "marionet", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for key in ("torch", "diffusers", "transformers", "accelerate", "device", "xformers", "deepspeed"):
        assert key in result.stdout


def test_tiny_model_refuses_to_overwrite_and_writes_loadable_folder(tmp_path, capsys):
    from marionet.models import Animator

    out = tmp_path / "tiny"
    assert marionet_main(["tiny-model", "--out", str(out)]) == 0
    assert Animator.from_pretrained(out).is_video_model is False
    for part in ("vae", "image_encoder", "feature_extractor", "scheduler"):
        assert (out / part).is_dir(), part
    assert marionet_main(["tiny-model", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
