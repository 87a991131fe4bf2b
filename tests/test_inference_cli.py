"""`marionet animate`: written files (read back with decord) and one-line messages for bad input."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from marionet.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from marionet.data.video import write_video
    from marionet.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("animate")
    write_tiny_model(root / "video_model", with_motion=True)
    write_tiny_model(root / "image_model", with_motion=False)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)).save(root / "ref.png")
    poses = np.zeros((7, 64, 48, 3), np.uint8)
    for i in range(7):
        poses[i, 10:50, 4 + 4 * i:12 + 4 * i] = 255
    write_video(root / "pose.mp4", poses, fps=12)
    Image.fromarray(poses[0]).save(root / "pose.png")
    return root


def animate(workspace, *extra):
    return main(["animate", "--model", str(workspace / "video_model"), "--ref", str(workspace / "ref.png"),
                 "--steps", "2", *map(str, extra)])


def test_animate_writes_a_playable_mp4_with_every_frame(workspace, capsys):
    from marionet.data.video import read_video, video_info  # decord underneath

    out = workspace / "out" / "result.mp4"
    assert animate(workspace, "--pose", workspace / "pose.mp4", "--out", out, "--context", 4, "--overlap", 1,
                   "--gif", "--side-by-side") == 0
    frames, fps, width, height = video_info(out)
    assert (frames, width, height) == (7, 48, 64) and abs(fps - 12) < 0.1  # the pose video's fps
    assert read_video(out).shape == (7, 64, 48, 3)
    assert read_video(workspace / "out" / "result_side_by_side.mp4").shape == (7, 64, 144, 3)
    assert (workspace / "out" / "result.gif").is_file()
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "s/frame" in printed and "peak memory" in printed

    # never overwritten silently
    assert animate(workspace, "--pose", workspace / "pose.mp4", "--out", out) == 2
    assert "already exist" in capsys.readouterr().err


def test_image_mode_writes_one_png_and_rounds_the_size(workspace, capsys):
    out = workspace / "single.png"
    code = main(["animate", "--model", str(workspace / "image_model"), "--ref", str(workspace / "ref.png"),
                 "--pose", str(workspace / "pose.png"), "--out", str(out), "--steps", "1", "--width", "50"])
    assert code == 0
    assert np.asarray(Image.open(out)).shape == (64, 48, 3)
    assert "rounded down to 48x64" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["bad_ref", "bad_pose", "empty_pose", "missing_component", "no_pose"])
def test_bad_input_gives_one_line_messages(workspace, tmp_path, capsys, case):
    ref, pose, model = workspace / "ref.png", workspace / "pose.mp4", workspace / "video_model"
    expected = None
    if case == "bad_ref":
        ref = tmp_path / "ref.png"
        ref.write_text("not an image")
        expected = f"{ref}: cannot be read as an image"
    elif case == "bad_pose":
        pose = tmp_path / "pose.mp4"
        pose.write_bytes(b"\x00" * 64)
        expected = f"{pose}: cannot be read as a video"
    elif case == "empty_pose":
        pose = tmp_path / "empty.mp4"
        pose.touch()
        expected = f"{pose}: empty file"
    elif case == "missing_component":
        model = tmp_path / "model"
        shutil.copytree(workspace / "image_model", model)
        shutil.rmtree(model / "vae")
        expected = "missing its vae component"
    args = ["animate", "--model", str(model), "--ref", str(ref), "--out", str(tmp_path / "o.mp4"), "--steps", "1"]
    if case == "no_pose":
        expected = "give either --pose"
    else:
        args += ["--pose", str(pose)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cuda_requested_without_cuda(workspace, tmp_path, capsys):
    assert animate(workspace, "--pose", workspace / "pose.png", "--out", tmp_path / "o.png", "--device", "cuda") == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_extract_pose_without_onnx_files_names_them(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MARIONET_DWPOSE_DIR", str(tmp_path / "nowhere"))
    code = animate(workspace, "--driving", workspace / "pose.mp4", "--extract-pose", "--out", tmp_path / "o.mp4")
    assert code == 2
    err = capsys.readouterr().err
    assert "yolox_l.onnx" in err and "--det" in err


def test_extract_and_align_pose_from_a_driving_video(workspace, tmp_path, capsys):
    """The DWPose path end to end, with the tiny stand-in ONNX models of the DWPose tests."""
    dwpose_tests = pytest.importorskip("tests.test_data_pose_dwpose")
    from marionet.data import dwpose
    from marionet.data.video import video_info

    det = dwpose_tests.make_detector(tmp_path / dwpose.DET_FILENAME)
    pose_model = dwpose_tests.make_pose_model(tmp_path / dwpose.POSE_FILENAME)
    dwpose_tests._write_blob_video(tmp_path / "driving.mp4", frames=5)
    Image.fromarray(dwpose_tests.blob_image()).save(tmp_path / "ref.png")
    out = tmp_path / "out.mp4"
    code = main(["animate", "--model", str(workspace / "video_model"), "--ref", str(tmp_path / "ref.png"),
                 "--driving", str(tmp_path / "driving.mp4"), "--extract-pose", "--align-pose", "--det", str(det),
                 "--pose-model", str(pose_model), "--out", str(out), "--steps", "1", "--width", "64",
                 "--height", "48", "--side-by-side"])
    assert code == 0, capsys.readouterr().err
    frames, _, width, height = video_info(out)
    assert (frames, width, height) == (5, 64, 48)
