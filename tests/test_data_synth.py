"""data.synth: deterministic, varied, person-shaped synthetic dance videos with exact skeletons."""
import json

import numpy as np
import pytest
from PIL import Image

from marionet.data.skeleton import draw_pose, load_keypoints
from marionet.data.synth import ensure_synthetic_dataset, generate_dataset, render_video, sample_grid
from marionet.data.video import read_video, video_info


def test_deterministic_by_seed_and_varied_across_seeds():
    video_a, pose_a, kps_a = render_video(seed=3, index=0, frames=12, size=48)
    video_b, pose_b, kps_b = render_video(seed=3, index=0, frames=12, size=48)
    np.testing.assert_array_equal(video_a, video_b)
    np.testing.assert_array_equal(pose_a, pose_b)
    other_video, _, other_kps = render_video(seed=4, index=0, frames=12, size=48)
    assert np.abs(video_a.astype(int) - other_video).mean() > 10  # another puppet and background
    motion = np.stack([k["body"][:, :2] for k in kps_a])
    other_motion = np.stack([k["body"][:, :2] for k in other_kps])
    # Different motions, not just a shifted copy: compare joint trajectories relative to the neck.
    relative = motion - motion[:, 1:2]
    other_relative = other_motion - other_motion[:, 1:2]
    assert np.abs((relative - relative[0]) - (other_relative - other_relative[0])).max() > 0.02
    assert np.abs(relative[-1] - relative[0]).max() > 0.01  # the puppet actually moves


def test_pose_video_is_the_skeleton_of_the_true_joints():
    video, poses, keypoints = render_video(seed=0, index=1, frames=4, size=64)
    for frame, record in zip(poses, keypoints):
        np.testing.assert_array_equal(frame, draw_pose(record["body"], 64, 64, hands=record["hands"]))
    body = keypoints[0]["body"]
    assert body.shape == (18, 3) and body[:, :2].min() >= 0 and body[:, :2].max() <= 1


def test_figure_is_person_shaped(tmp_path):
    """The puppet covers its skeleton (head, torso, limbs) and little else: a figure, not noise."""
    for index in range(4):
        video, _, keypoints = render_video(seed=11, index=index, frames=1, size=96)
        frame, body = video[0].astype(int), keypoints[0]["body"]
        corners = np.concatenate([frame[:4, :4].reshape(-1, 3), frame[:4, -4:].reshape(-1, 3)])
        background = np.median(corners, 0)
        on_body = []
        for name_index in (0, 1, 2, 5, 8, 11, 9, 12):  # nose, neck, shoulders, hips, knees
            x, y = (body[name_index, :2] * 96).astype(int)
            on_body.append(np.abs(frame[y, x] - background).sum())
        assert np.median(on_body) > 40, (index, on_body)
        # The figure is taller than wide and occupies a modest part of the frame.
        xs, ys = body[body[:, 2] > 0, 0], body[body[:, 2] > 0, 1]
        assert ys.max() - ys.min() > 0.4 and ys.max() - ys.min() > (xs.max() - xs.min()) * 0.8
    grid = sample_grid(seed=2, count=4, size=48, frames=4, columns=4)
    assert grid.shape == (96, 192, 3)
    Image.fromarray(grid).save(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_generate_dataset_files_and_index(tmp_path):
    meta = generate_dataset(tmp_path / "ds", videos=2, frames=10, size=32, seed=5, fps=8)
    entries = json.loads(meta.read_text())
    assert len(entries) == 2
    for entry in entries:
        video = meta.parent / entry["video_path"]
        pose = meta.parent / entry["pose_path"]
        assert video_info(video) == (10, 8.0, 32, 32) and video_info(pose) == (10, 8.0, 32, 32)
        keypoints = load_keypoints(meta.parent / entry["keypoints_path"])
        assert keypoints["body"].shape == (10, 18, 3) and keypoints["fps"] == 8.0
        assert entry["num_frames"] == 10
    assert read_video(meta.parent / entries[0]["pose_path"], [0]).max() > 100  # a skeleton is drawn
    # the files hold exactly the rendered frames, so every run (and machine) trains on the same data
    video, poses, _ = render_video(seed=5, index=1, frames=10, size=32, fps=8)
    np.testing.assert_array_equal(read_video(meta.parent / entries[1]["video_path"]), video)
    np.testing.assert_array_equal(read_video(meta.parent / entries[1]["pose_path"]), poses)
    with pytest.raises(FileExistsError, match="meta.json"):
        generate_dataset(tmp_path / "ds", videos=1, frames=4, size=32, seed=5)


def test_ensure_generates_only_when_missing(tmp_path):
    meta = ensure_synthetic_dataset(tmp_path / "d", videos=1, frames=4, size=32, seed=1)
    stamp = meta.stat().st_mtime_ns
    assert ensure_synthetic_dataset(tmp_path / "d", videos=5, frames=4, size=32, seed=2) == meta
    assert meta.stat().st_mtime_ns == stamp and len(json.loads(meta.read_text())) == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="videos"):
        generate_dataset(tmp_path / "x", videos=0, frames=4, size=32, seed=0)
