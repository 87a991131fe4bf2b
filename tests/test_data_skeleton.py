"""data.skeleton: the OpenPose renderer and the keypoints JSON format."""
import json

import numpy as np
import pytest

from marionet.data.skeleton import BODY_COLORS, BODY_LIMBS, LIMB_ALPHA, draw_pose, load_keypoints, save_keypoints


def standing_body():
    return np.array([
        [0.5, 0.15, 1], [0.5, 0.25, 1], [0.4, 0.25, 1], [0.35, 0.4, 1], [0.3, 0.55, 1], [0.6, 0.25, 1],
        [0.65, 0.4, 1], [0.7, 0.55, 1], [0.45, 0.5, 1], [0.45, 0.7, 1], [0.45, 0.9, 1], [0.55, 0.5, 1],
        [0.55, 0.7, 1], [0.55, 0.9, 1], [0.48, 0.13, 1], [0.52, 0.13, 1], [0.46, 0.14, 1], [0.54, 0.14, 1]],
        np.float32)


def test_limbs_drawn_in_openpose_colours():
    image = draw_pose(standing_body(), 128, 128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    body = standing_body()
    for limb in (2, 3, 7, 8):  # r_shoulder-r_elbow, r_elbow-r_wrist, r_hip-r_knee, r_knee-r_ankle
        a, b = BODY_LIMBS[limb]
        x, y = ((body[a, :2] + body[b, :2]) / 2 * 128).astype(int)
        expected = np.array(BODY_COLORS[limb]) * LIMB_ALPHA
        assert np.abs(image[y, x].astype(float) - expected).max() <= 2, (limb, image[y, x], expected)
    assert image[2, 2].sum() == 0 and image[125, 125].sum() == 0  # black background


def test_threshold_hides_keypoints_and_limbs():
    body = standing_body()
    body[4, 2] = 0.0  # r_wrist missing
    body[3, 2] = 0.2  # r_elbow below the default threshold
    x, y = ((body[3, :2] + body[4, :2]) / 2 * 128).astype(int)
    assert draw_pose(body, 128, 128)[y, x].sum() == 0
    assert draw_pose(body, 128, 128, threshold=0.1)[int(body[3, 1] * 128), int(body[3, 0] * 128)].sum() > 0


def test_stick_width_scales_with_size_and_hands_drawn():
    small = (draw_pose(standing_body(), 128, 128).sum(2) > 0).sum()
    large = (draw_pose(standing_body(), 512, 512).sum(2) > 0).sum()
    assert large > small * 16 * 0.5  # 4x the size: sticks 4x thicker, so roughly 16x the pixels, not 4x
    assert (draw_pose(standing_body(), 512, 512, stick_width=1).sum(2) > 0).sum() < large / 2
    hand = np.concatenate([np.random.default_rng(0).random((21, 2)) * 0.1 + 0.2, np.ones((21, 1))], 1)
    with_hands = draw_pose(standing_body(), 128, 128, hands=[hand, None])
    assert (with_hands != draw_pose(standing_body(), 128, 128)).any()
    assert draw_pose(None, 16, 8).shape == (8, 16, 3)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="18"):
        draw_pose(np.zeros((17, 3)), 32, 32)
    with pytest.raises(ValueError, match="21"):
        draw_pose(standing_body(), 32, 32, hands=[np.zeros((20, 3))])
    with pytest.raises(ValueError, match="positive"):
        draw_pose(standing_body(), 0, 32)


def test_keypoints_roundtrip(tmp_path):
    hand = np.random.default_rng(1).random((21, 3)).astype(np.float32)
    frames = [{"body": standing_body(), "hands": [hand, None]}, {"body": standing_body() * 0.5, "hands": None}]
    path = save_keypoints(tmp_path / "k.json", frames, width=64, height=48, fps=12.5)
    raw = json.loads(path.read_text())
    assert raw["width"] == 64 and raw["height"] == 48 and raw["fps"] == 12.5 and len(raw["frames"]) == 2
    assert raw["frames"][1]["hands"] is None and len(raw["frames"][0]["body"]) == 18
    loaded = load_keypoints(path)
    assert loaded["body"].shape == (2, 18, 3)
    np.testing.assert_allclose(loaded["frames"][0]["body"], standing_body(), atol=1e-5)
    np.testing.assert_allclose(loaded["frames"][0]["hands"][0], hand, atol=1e-5)
    assert loaded["frames"][0]["hands"][1] is None


def test_load_keypoints_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_keypoints(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"width": 3}')
    with pytest.raises(ValueError, match="bad.json"):
        load_keypoints(bad)
