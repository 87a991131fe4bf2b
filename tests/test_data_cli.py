"""The data commands through the real `marionet` entry point: outputs, messages and user errors."""
import json

import pytest

from marionet.cli import main


def test_help_lists_data_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "synth" in out and "data" in out
    for argv in (["synth", "--help"], ["data", "index", "--help"], ["data", "shard", "--help"],
                 ["data", "bench", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "usage: marionet" in capsys.readouterr().out


def test_synth_index_shard_pipeline(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--videos", "2", "--frames", "6", "--size", "32", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "meta.json") in printed
    assert len(list((out / "videos").glob("*.mp4"))) == 2 and len(list((out / "poses").glob("*.mp4"))) == 2

    # An existing dataset is a user error: one line, exit code 2.
    assert main(["synth", "--out", str(out), "--videos", "1", "--frames", "4", "--size", "32"]) == 2
    assert "already exists" in capsys.readouterr().err

    meta = tmp_path / "meta.json"
    (out / "videos" / "extra.mp4").write_text("not a video")
    assert main(["data", "index", "--videos", str(out / "videos"), "--poses", str(out / "poses"),
                 "--out", str(meta), "--min-frames", "4"]) == 0
    printed = capsys.readouterr().out
    assert "2 pairs accepted, 1 rejected" in printed and "extra.mp4" in printed
    assert len(json.loads(meta.read_text())) == 2

    assert main(["data", "shard", "--meta", str(meta), "--out", str(tmp_path / "shards"), "--max-size", "1MB"]) == 0
    printed = capsys.readouterr().out
    assert "2 samples" in printed and str(tmp_path / "shards") in printed
    assert (tmp_path / "shards" / "manifest.json").is_file()


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["data", "index", "--videos", str(tmp_path / "nope"), "--poses", str(tmp_path),
                 "--out", str(tmp_path / "m.json")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["data", "shard", "--meta", str(tmp_path / "missing.json"), "--out", str(tmp_path / "s")]) == 2
    assert "missing.json" in capsys.readouterr().err
    (tmp_path / "m.json").write_text("[]")
    assert main(["data", "shard", "--meta", str(tmp_path / "m.json"), "--out", str(tmp_path / "s"),
                 "--max-size", "lots"]) == 2
    assert main(["synth", "--out", str(tmp_path / "x"), "--videos", "0"]) == 2
    assert "videos" in capsys.readouterr().err


def test_registration_is_import_light():
    import subprocess
    import sys

    code = ("import sys, argparse, marionet.data.cli as cli; p = argparse.ArgumentParser(); "
            "cli.register(p.add_subparsers()); "
            "print(sorted(m for m in ('torch', 'decord', 'numpy', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
