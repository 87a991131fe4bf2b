"""Pose alignment (data/align.py) and `marionet pose align`, with hand-made skeletons."""
from __future__ import annotations

import json

import numpy as np
import pytest

from marionet.data.align import KINEMATIC_TREE, PoseAligner, align_keypoints, align_poses

DRV_SIZE = (320, 240)
REF_SIZE = (200, 400)
DRIVING_PX = np.array([
    (160, 40), (160, 70), (130, 70), (110, 100), (100, 130), (190, 70), (210, 100), (220, 130),
    (145, 140), (145, 180), (145, 220), (175, 140), (175, 180), (175, 220), (155, 35), (165, 35), (150, 38), (170, 38),
], float)
REF_PX = np.array([
    (100, 80), (100, 130), (70, 132), (55, 190), (50, 250), (130, 128), (150, 185), (152, 240),
    (85, 240), (80, 310), (82, 380), (115, 242), (118, 312), (120, 385), (95, 72), (105, 72), (88, 76), (112, 76),
], float)


def body(points_px, size, conf=0.9) -> np.ndarray:
    out = np.zeros((18, 3), np.float32)
    out[:, :2] = points_px / np.asarray(size, float)
    out[:, 2] = conf
    return out


def lengths(b, size):
    xy = b[:, :2].astype(float) * size
    return {limb: np.linalg.norm(xy[limb[1]] - xy[limb[0]]) for limb in KINEMATIC_TREE
            if b[limb[0], 2] > 0 and b[limb[1], 2] > 0}


def direction(b, size, limb):
    xy = b[:, :2].astype(float) * size
    v = xy[limb[1]] - xy[limb[0]]
    return v / np.linalg.norm(v)


def rotate_about(points, center, degrees):
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (points - center) @ rot.T + center


def driving_sequence():
    frame0 = DRIVING_PX.copy()
    frame1 = DRIVING_PX.copy()
    frame1[[3, 4]] = rotate_about(frame1[[3, 4]], frame1[2], 50)  # right arm raised about the shoulder
    frame1 += (12, -5)  # and the whole body moves
    frame2 = DRIVING_PX.copy() + (-20, 8)
    return np.stack([body(f, DRV_SIZE) for f in (frame0, frame1, frame2)])


def test_first_frame_gets_reference_lengths_and_neck():
    ref = body(REF_PX, REF_SIZE)
    drv = driving_sequence()
    aligned = align_poses(ref, drv, REF_SIZE, DRV_SIZE)
    assert aligned.shape == (3, 18, 3)
    np.testing.assert_allclose(aligned[0, 1, :2] * REF_SIZE, REF_PX[1], atol=1e-3)  # neck
    ref_len, out_len = lengths(ref, REF_SIZE), lengths(aligned[0], REF_SIZE)
    assert set(out_len) == set(KINEMATIC_TREE)
    for limb in KINEMATIC_TREE:
        assert out_len[limb] == pytest.approx(ref_len[limb], rel=1e-4), limb
        # each limb keeps the driving direction
        np.testing.assert_allclose(direction(aligned[0], REF_SIZE, limb), direction(drv[0], DRV_SIZE, limb), atol=1e-4)
    np.testing.assert_allclose(aligned[:, :, 2], drv[:, :, 2])


def test_motion_is_preserved_across_frames():
    ref = body(REF_PX, REF_SIZE)
    drv = driving_sequence()
    aligner = PoseAligner(ref, drv[0], REF_SIZE, DRV_SIZE)
    aligned = align_poses(ref, drv, REF_SIZE, DRV_SIZE)
    ref_len = lengths(ref, REF_SIZE)
    # the global translation of the driving sequence is kept, scaled by the global scale
    np.testing.assert_allclose(aligned[1, 1, :2] * REF_SIZE - REF_PX[1], aligner.scale * np.array([12, -5]), atol=1e-3)
    np.testing.assert_allclose(aligned[2, 1, :2] * REF_SIZE - REF_PX[1], aligner.scale * np.array([-20, 8]), atol=1e-3)
    # the raised arm keeps the reference's lengths and follows the driving rotation
    for limb in ((2, 3), (3, 4)):
        assert lengths(aligned[1], REF_SIZE)[limb] == pytest.approx(ref_len[limb], rel=1e-4)
        np.testing.assert_allclose(direction(aligned[1], REF_SIZE, limb), direction(drv[1], DRV_SIZE, limb), atol=1e-4)
    # a pure translation of the driving body translates the aligned body rigidly
    delta = aligned[2, :, :2] * REF_SIZE - aligned[0, :, :2] * REF_SIZE
    np.testing.assert_allclose(delta, np.broadcast_to(aligner.scale * np.array([-20, 8]), delta.shape), atol=1e-3)
    assert aligner.scale != pytest.approx(1.0)


def test_missing_keypoints_stay_missing_and_reference_gaps_use_global_scale():
    ref = body(REF_PX, REF_SIZE)
    ref[6, 2] = 0  # reference has no left elbow: l_shoulder-l_elbow and l_elbow-l_wrist fall back to the global scale
    drv = driving_sequence()
    drv[1, 9, 2] = 0  # right knee missing in frame 1
    drv[2, 1, 2] = 0  # neck missing in frame 2
    aligner = PoseAligner(ref, drv[0], REF_SIZE, DRV_SIZE)
    aligned = align_poses(ref, drv, REF_SIZE, DRV_SIZE)
    assert aligned[1, 9, 2] == 0 and (aligned[1, 9, :2] == 0).all()
    assert aligned[2, 1, 2] == 0
    assert (aligned[:, :, 2] > 0).sum() == (drv[:, :, 2] > 0).sum()
    drv_len, out_len = lengths(drv[0], DRV_SIZE), lengths(aligned[0], REF_SIZE)
    for limb in ((5, 6), (6, 7)):
        assert aligner.ratios[limb] == pytest.approx(aligner.scale)
        assert out_len[limb] == pytest.approx(aligner.scale * drv_len[limb], rel=1e-4)
    # the knee's child (ankle) still gets placed in frame 1 (by the global transform), and frame 2 without a neck
    # keeps the shape: shoulders sit where the global transform puts them
    assert aligned[1, 10, 2] > 0
    expected = REF_PX[1] + aligner.scale * (drv[2, 2, :2] * DRV_SIZE - DRIVING_PX[1])
    np.testing.assert_allclose(aligned[2, 2, :2] * REF_SIZE, expected, atol=1e-3)


def test_no_common_limbs_falls_back_to_size_ratio():
    ref = np.zeros((18, 3), np.float32)
    drv = driving_sequence()[:1]
    aligner = PoseAligner(ref, drv[0], REF_SIZE, DRV_SIZE)
    assert aligner.scale == pytest.approx(min(200 / 320, 400 / 240))
    out = align_poses(ref, drv, REF_SIZE, DRV_SIZE)
    assert np.isfinite(out).all() and (out[0, :, 2] > 0).all()


def _frames_with_hands(bodies):
    frames = []
    for b in bodies:
        xy = b[:, :2] * DRV_SIZE
        hands = []
        for wrist in (7, 4):  # [left, right], hand root on the wrist, fingers pointing down 10 px
            hand = np.zeros((21, 3), np.float32)
            hand[:, :2] = (xy[wrist] + np.stack([np.zeros(21), np.arange(21) * 0.5], axis=1)) / DRV_SIZE
            hand[:, 2] = 0.8
            hand[20, 2] = 0
            hands.append(hand)
        frames.append({"body": b, "hands": hands, "face": None})
    return frames


def test_hands_move_with_their_wrist_scaled_by_forearm():
    ref = {"width": REF_SIZE[0], "height": REF_SIZE[1], "fps": 10.0, "frames": [{"body": body(REF_PX, REF_SIZE)}]}
    drv_bodies = driving_sequence()
    driving = {"width": DRV_SIZE[0], "height": DRV_SIZE[1], "fps": 8.0, "frames": _frames_with_hands(drv_bodies)}
    out = align_keypoints(ref, driving)
    assert (out["width"], out["height"], out["fps"], len(out["frames"])) == (200, 400, 8.0, 3)
    aligner = PoseAligner(ref["frames"][0]["body"], drv_bodies[0], REF_SIZE, DRV_SIZE)
    for frame in out["frames"]:
        left, right = frame["hands"]
        for hand, wrist, forearm in ((left, 7, (6, 7)), (right, 4, (3, 4))):
            np.testing.assert_allclose(hand[0, :2] * REF_SIZE, frame["body"][wrist, :2] * REF_SIZE, atol=1e-3)
            span = (hand[19, :2] - hand[0, :2]) * REF_SIZE
            np.testing.assert_allclose(span, (0, 9.5 * aligner.ratios[forearm]), atol=1e-3)
            assert hand[20, 2] == 0 and hand[0, 2] == pytest.approx(0.8)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        align_poses(np.zeros((17, 3)), np.zeros((2, 18, 3)))
    with pytest.raises(ValueError):
        align_poses(np.zeros((18, 3)), np.zeros((18, 3)))


def test_align_cli_writes_keypoints_and_video(tmp_path, capsys):
    from marionet.data.skeleton import load_keypoints, save_keypoints
    from marionet.data.video import video_info
    from marionet.cli import main

    save_keypoints(tmp_path / "ref.json", [{"body": body(REF_PX, REF_SIZE)}], width=200, height=400, fps=10)
    drv_dir = tmp_path / "driving"
    save_keypoints(drv_dir / "dance.json", _frames_with_hands(driving_sequence()), width=320, height=240, fps=8)
    save_keypoints(drv_dir / "more" / "walk.json", driving_sequence(), width=320, height=240, fps=8)
    out = tmp_path / "out"
    code = main(["pose", "align", "--ref-pose", str(tmp_path / "ref.json"), "--driving", str(drv_dir),
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for name in ("dance", "more/walk"):
        kps = load_keypoints(out / "keypoints" / f"{name}.json")
        assert (kps["width"], kps["height"], len(kps["frames"])) == (200, 400, 3)
        np.testing.assert_allclose(kps["body"][0, 1, :2] * REF_SIZE, REF_PX[1], atol=0.01)
        assert video_info(out / "poses" / f"{name}.mp4")[0] == 3
        assert video_info(out / "poses" / f"{name}.mp4")[2:] == (200, 400)
        assert str(out / "poses" / f"{name}.mp4") in printed and str(out / "keypoints" / f"{name}.json") in printed
    assert json.loads((out / "keypoints" / "dance.json").read_text())["frames"][0]["hands"] is not None

    single = tmp_path / "single"
    code = main(["pose", "align", "--ref-pose", str(tmp_path / "ref.json"), "--driving", str(drv_dir / "dance.json"),
                 "--out", str(single), "--no-render"])
    assert code == 0 and (single / "keypoints" / "dance.json").is_file() and not (single / "poses").exists()


def test_align_cli_user_errors(tmp_path, capsys):
    from marionet.data.skeleton import save_keypoints
    from marionet.cli import main

    code = main(["pose", "align", "--ref-pose", str(tmp_path / "missing.json"), "--driving", str(tmp_path),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "missing.json" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad.json").write_text("{not json")
    save_keypoints(tmp_path / "ref.json", [{"body": body(REF_PX, REF_SIZE)}], width=200, height=400, fps=10)
    code = main(["pose", "align", "--ref-pose", str(tmp_path / "ref.json"), "--driving", str(tmp_path / "bad.json"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "bad.json" in capsys.readouterr().err
    code = main(["pose", "align", "--ref-pose", str(tmp_path / "ref.json"), "--driving", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "no such file or folder" in capsys.readouterr().err
