"""data.index: pairing, validation and reading of meta.json."""
import json

import numpy as np
import pytest

from marionet.data.index import build_index, load_index
from marionet.data.video import write_video


def make_pair(root, name, frames=8, pose_frames=None, size=32):
    video = np.full((frames, size, size, 3), 90, np.uint8)
    write_video(root / "videos" / f"{name}.mp4", video, fps=10)
    write_video(root / "poses" / f"{name}.mp4", np.zeros((pose_frames or frames, size, size, 3), np.uint8), fps=10)


def test_index_accepts_good_pairs_and_explains_rejections(tmp_path):
    make_pair(tmp_path, "good", 8)
    make_pair(tmp_path, "mismatch", 8, pose_frames=6)
    make_pair(tmp_path, "short", 3)
    write_video(tmp_path / "videos" / "lonely.mp4", np.zeros((5, 32, 32, 3), np.uint8), fps=10)
    (tmp_path / "videos" / "broken.mp4").write_text("not a video")
    (tmp_path / "poses" / "broken.mp4").write_text("not a video")
    meta, accepted, rejected = build_index(tmp_path / "videos", tmp_path / "poses", tmp_path / "meta.json",
                                           min_frames=4)
    assert [e["video_path"] for e in accepted] == ["videos/good.mp4"]
    reasons = dict((video.split("/")[-1], reason) for video, reason in rejected)
    assert set(reasons) == {"mismatch.mp4", "short.mp4", "lonely.mp4", "broken.mp4"}
    assert "6" in reasons["mismatch.mp4"] and "8" in reasons["mismatch.mp4"]
    assert "minimum 4" in reasons["short.mp4"]
    assert "no pose video" in reasons["lonely.mp4"]
    assert "cannot be read" in reasons["broken.mp4"]
    entries = load_index(meta)
    assert entries[0]["video_path"] == str((tmp_path / "videos" / "good.mp4").resolve())
    assert entries[0]["num_frames"] == 8 and entries[0]["width"] == 32
    with pytest.raises(FileExistsError):
        build_index(tmp_path / "videos", tmp_path / "poses", meta)


def test_nested_folders_and_poses_inside_videos(tmp_path):
    """Sub-folders pair by relative path (as `marionet pose extract` writes them); a poses folder inside the videos
    folder is not mistaken for videos."""
    make_pair(tmp_path / "a", "clip", 6)
    make_pair(tmp_path / "b", "clip", 5)
    root = tmp_path / "all"
    (root / "poses").mkdir(parents=True)
    for part in ("a", "b"):
        (root / part).mkdir()
        (tmp_path / part / "videos" / "clip.mp4").rename(root / part / "clip.mp4")
        (root / "poses" / part).mkdir()
        (tmp_path / part / "poses" / "clip.mp4").rename(root / "poses" / part / "clip.mp4")
    meta, accepted, rejected = build_index(root, root / "poses", root / "meta.json")
    assert rejected == []
    assert [(e["video_path"], e["pose_path"], e["num_frames"]) for e in accepted] == [
        ("a/clip.mp4", "poses/a/clip.mp4", 6), ("b/clip.mp4", "poses/b/clip.mp4", 5)]
    assert [e["video_id"] for e in accepted] == ["a/clip", "b/clip"]  # unique even with equal file names


def test_load_index_formats_and_errors(tmp_path):
    (tmp_path / "repro.json").write_text(json.dumps([{"video_path": "a.mp4", "kps_path": "/abs/a_pose.mp4"}]))
    entries = load_index(tmp_path / "repro.json")
    assert entries == [{"video_path": str(tmp_path.resolve() / "a.mp4"), "pose_path": "/abs/a_pose.mp4"}]
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_index(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps([{"video": "x"}]))
    with pytest.raises(ValueError, match="entry 0"):
        load_index(tmp_path / "bad.json")
    (tmp_path / "notjson.json").write_text("{")
    with pytest.raises(ValueError, match="notjson.json"):
        load_index(tmp_path / "notjson.json")
    with pytest.raises(FileNotFoundError, match="videos folder"):
        build_index(tmp_path / "nowhere", tmp_path, tmp_path / "m.json")
