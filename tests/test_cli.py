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


HELP_PROBE = r"""
import argparse, json, sys
from marionet.cli import build_parser, main

def commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from commands(sub, prefix + (name,))

found = [list(c) for c in commands(build_parser())]
for command in [[]] + found:
    try:
        main(command + ["--help"])
    except SystemExit:
        pass
print(json.dumps({"commands": found, "heavy": sorted(m for m in ("torch", "diffusers", "transformers", "accelerate")
                                                     if m in sys.modules)}))
"""


def test_every_help_answers_without_importing_torch_or_model_libraries(tmp_path):
    """`marionet --help` and every `marionet COMMAND --help` import no torch, diffusers, transformers."""
    import json

    result = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["commands"]) >= 20 and ["convert", "moore-aa"] in report["commands"]
    assert report["heavy"] == [], f"--help imported {report['heavy']}"


def test_config_command_lists_shows_and_copies_the_shipped_configs(tmp_path, capsys):
    assert marionet_main(["config", "list"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"stage1.yaml", "tiny/stage1.yaml", "accelerate/deepspeed_zero2.yaml"} <= set(listed)
    assert marionet_main(["config", "show", "tiny/stage2.yaml"]) == 0
    assert "stage: 2" in capsys.readouterr().out
    assert marionet_main(["config", "copy", "configs/stage1.yaml", str(tmp_path)]) == 0
    assert "image_size: 768" in (tmp_path / "stage1.yaml").read_text()
    assert marionet_main(["config", "copy", "stage1.yaml", str(tmp_path)]) == 2  # never overwrites silently
    assert marionet_main(["config", "show", "nope.yaml"]) == 2
    assert "shipped" in capsys.readouterr().err
