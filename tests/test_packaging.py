"""The distribution as a user installs it: one import name, configs shipped as package data, an instant CLI, and
`marionet demo --quick` from a wheel installed in a fresh virtual environment outside the repository."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("marionet", "models", "data", "train", "inference", "configs", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout (the checkout itself gets no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in SOURCES:
        target = REPO / name
        if target.is_dir():
            shutil.copytree(target, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(target, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    return next((root / "dist").glob("marionet-*.whl"))


def test_the_wheel_installs_one_import_name_and_ships_the_configs(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/top_level.txt"))
    assert top_level.split() == ["marionet"]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"marionet"}
    for config in ("stage1.yaml", "stage2.yaml", "tiny/stage1.yaml", "tiny/stage2.yaml",
                   "accelerate/deepspeed_zero2.yaml"):
        assert f"marionet/configs/{config}" in names, config
    for module in ("models/animator.py", "inference/sampling.py", "train/core.py", "data/video.py", "cli.py"):
        assert f"marionet/{module}" in names, module


@pytest.mark.slow
def test_fresh_venv_outside_the_repository_runs_the_demo(wheel, tmp_path):
    """pip install <wheel> into a new venv (dependencies reached through a .pth file pointing at this environment's
    site-packages, so nothing is downloaded), then run from a folder that is not the repository."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args, timeout=120):
        return subprocess.run(list(args), cwd=work, capture_output=True, text=True, timeout=timeout)

    probe = run(str(python), "-c", "import marionet, marionet.models; print(marionet.__file__)")
    assert probe.returncode == 0 and probe.stdout.strip().startswith(purelib), probe.stdout + probe.stderr
    missing = run(str(python), "-c", "import models")
    assert missing.returncode != 0 and "No module named 'models'" in missing.stderr
    start = time.perf_counter()
    helped = run(str(venv / "bin" / "marionet"), "--help")
    print(f"marionet --help from the installed wheel: {time.perf_counter() - start:.2f} s")
    assert helped.returncode == 0 and "demo" in helped.stdout

    out = work / "demo"
    result = run(str(venv / "bin" / "marionet"), "demo", "--quick", "--out", str(out),
                 "--set", "unet_attention_heads=4", timeout=600)  # not the default: the setting must reach every UNet
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report" / "report.json").read_text())
    assert set(report["methods"]) == {"trained-stage2", "trained-stage1", "zero-shot", "stock", "pose-only"}
    assert report["methods"]["zero-shot"]["settings"]["backbone"] == "stock model folder"
    for metrics in report["methods"].values():
        assert np.isfinite(metrics["psnr"]["mean"]) and np.isfinite(metrics["ssim"]["mean"])
    summary = json.loads((out / "demo.json").read_text())
    assert len(summary["phases_s"]) == 6 and summary["stage0"]["reconstruction_psnr_db"] > 0
    assert not (out / "stock" / "model" / "reference_unet").exists()  # the stock stand-in has no ReferenceNet
    assert (out / "stage1" / "model" / "model_index.json").is_file()
    assert (out / "stage2" / "model" / "motion_adapter").is_dir()
    assert summary["settings"]["unet_attention_heads"] == 4  # diffusers names the head count attention_head_dim
    for unet in ("stock/model/denoising_unet", "stage1/model/reference_unet", "stage1/model/denoising_unet",
                 "stage2/model/denoising_unet"):
        assert json.loads((out / unet / "config.json").read_text())["attention_head_dim"] == 4, unet
    assert "stage 2" in (out / "stage2" / "model" / "README.md").read_text()  # the model card
    assert any((out / "stage1" / "logs").rglob("events.out.tfevents*"))  # TensorBoard logs
    assert "report.md" in result.stdout and "total" in result.stdout
    assert {c["claim"] for c in report["claims"]} >= {"trained-stage2 > zero-shot on PSNR (dB)",
                                                      "zero-shot > stock on SSIM", "stock > pose-only on PSNR (dB)",
                                                      "trained-stage2 < trained-stage1 on Temporal err"}
    # the README's demo section is written from a run's report, not typed
    (work / "README.md").write_text("intro\n<!-- demo:table -->\nSTALE TEXT\n<!-- /demo:table -->\nend\n")
    (work / "docs" / "images").mkdir(parents=True)
    updated = run(str(venv / "bin" / "marionet"), "demo", "--update-readme", "--from", str(out))
    assert updated.returncode == 0, updated.stderr
    readme = (work / "README.md").read_text()
    assert "STALE TEXT" not in readme and "95% interval" in readme
    assert "| trained-stage2 (ReferenceNet + motion modules: the method, video) |" in readme
    assert "stands for SD1.5 + ControlNet + IP-Adapter" in readme
    assert (work / "docs" / "images" / "demo_grid.png").is_file()
    # the runs it was made from are kept in the repository, and remake the same section from there
    kept = work / "docs" / "demo_runs" / "run1"
    assert json.loads((kept / "report" / "report.json").read_text()) == report
    assert json.loads((kept / "demo.json").read_text()) == summary
    (work / "README.md").write_text("intro\n<!-- demo:table -->\nSTALE TEXT\n<!-- /demo:table -->\nend\n")
    remade = run(str(venv / "bin" / "marionet"), "demo", "--update-readme", "--from", str(kept))
    assert remade.returncode == 0, remade.stderr
    assert (work / "README.md").read_text() == readme
    # the demo never overwrites silently
    again = run(str(venv / "bin" / "marionet"), "demo", "--quick", "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr
