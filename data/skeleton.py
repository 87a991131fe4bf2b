"""The one OpenPose-style skeleton renderer of the project, and the keypoints JSON format.

Everything that turns keypoints into a pose image (synthetic data, pose extraction, pose alignment, inference) calls
`draw_pose`, so training and inference see skeletons drawn the same way.

Keypoint convention: float arrays of shape (18, 3) for the body (OpenPose order, see BODY_NAMES) and (21, 3) per hand;
columns are x, y normalised to [0, 1] by width and height, and a confidence in [0, 1]. A missing keypoint has
confidence 0; anything at or below `threshold` is not drawn.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import write_json

BODY_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)
# OpenPose's limb list (0-based); the last two (shoulder-ear) are traditionally not drawn.
BODY_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)
DRAWN_LIMBS = 17
BODY_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)
# Limbs are drawn at 60% intensity, as OpenPose/controlnet_aux renderers do (they blend each limb at 0.6 opacity
# over black); filling the pre-mixed colour gives the same picture without a per-limb blend, and is much faster.
LIMB_ALPHA = 0.6


def _hsv_rainbow(n: int) -> list[tuple[int, int, int]]:
    colors = []
    for i in range(n):
        h = i / n * 6.0
        sector, frac = int(h) % 6, h - int(h)
        q, t = 1.0 - frac, frac
        rgb = [(1, t, 0), (q, 1, 0), (0, 1, t), (0, q, 1), (t, 0, 1), (1, 0, q)][sector]
        colors.append(tuple(int(round(c * 255)) for c in rgb))
    return colors


HAND_COLORS = tuple(_hsv_rainbow(len(HAND_EDGES)))
_LIMB_FILL = tuple(tuple(int(c * LIMB_ALPHA) for c in color) for color in BODY_COLORS)


def default_stick_width(width: int, height: int) -> int:
    return max(1, round(4 * min(width, height) / 512))


def _check_points(points, count: int, what: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != count or array.shape[1] < 3:
        raise ValueError(f"{what} keypoints must have shape ({count}, 3), got {array.shape}")
    return array


_ELLIPSE_STEPS = 24
_COS = np.cos(np.linspace(0.0, 2.0 * math.pi, _ELLIPSE_STEPS, endpoint=False))
_SIN = np.sin(np.linspace(0.0, 2.0 * math.pi, _ELLIPSE_STEPS, endpoint=False))


def _ellipse_polygon(p0, p1, half_width: float) -> list[tuple[float, float]]:
    center = (p0 + p1) / 2.0
    delta = p1 - p0
    half_length = max(math.hypot(delta[0], delta[1]) / 2.0, half_width)
    angle = math.atan2(delta[1], delta[0])
    x, y = half_length * _COS, half_width * _SIN
    ca, sa = math.cos(angle), math.sin(angle)
    xs, ys = center[0] + ca * x - sa * y, center[1] + sa * x + ca * y
    return list(zip(xs.tolist(), ys.tolist()))


def draw_pose(body, width: int, height: int, hands=None, face=None, threshold: float = 0.3,
              stick_width: int | None = None) -> np.ndarray:
    """Render an OpenPose-style skeleton on black: uint8 array (height, width, 3).

    body: (18, 3) normalised keypoints, or None for an empty frame; hands: None or a sequence of (21, 3) arrays (None
    entries allowed); face: None or (N, 3) normalised points drawn as small white dots.
    """
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"draw_pose needs a positive size, got {width}x{height}")
    stick = int(stick_width) if stick_width is not None else default_stick_width(width, height)
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    scale = np.array([width, height], np.float64)

    if body is not None:
        points = _check_points(body, 18, "body")
        xy = points[:, :2] * scale
        visible = points[:, 2] > threshold
        for limb_index, (a, b) in enumerate(BODY_LIMBS[:DRAWN_LIMBS]):
            if visible[a] and visible[b]:
                draw.polygon(_ellipse_polygon(xy[a], xy[b], stick), fill=_LIMB_FILL[limb_index])
        for i in np.flatnonzero(visible):
            x, y = xy[i]
            draw.ellipse((x - stick, y - stick, x + stick, y + stick), fill=BODY_COLORS[i])

    line_width = max(1, round(stick / 2))
    for hand in hands or ():
        if hand is None:
            continue
        points = _check_points(hand, 21, "hand")
        xy = points[:, :2] * scale
        visible = points[:, 2] > threshold
        for edge_index, (a, b) in enumerate(HAND_EDGES):
            if visible[a] and visible[b]:
                draw.line([tuple(xy[a]), tuple(xy[b])], fill=HAND_COLORS[edge_index], width=line_width)
        radius = max(1, line_width)
        for i in np.flatnonzero(visible):
            x, y = xy[i]
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(0, 0, 255))
    if face is not None:
        points = np.asarray(face, np.float64)
        if points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"face keypoints must have shape (N, 3), got {points.shape}")
        radius = max(1, round(stick / 2))
        for x, y, s in points[:, :3]:
            if s > threshold:
                x, y = x * width, y * height
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 255, 255))
    canvas = np.asarray(image).copy()
    return canvas


# ---------------------------------------------------------------- keypoints JSON

def _points_to_list(points, count: int | None, what: str):
    if points is None:
        return None
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3 or (count is not None and array.shape[0] != count):
        raise ValueError(f"{what} keypoints must have shape ({count or 'N'}, 3), got {array.shape}")
    return [[round(float(v), 6) for v in row] for row in array]


def save_keypoints(path, frames, width: int, height: int, fps: float) -> Path:
    """Write a keypoints JSON file atomically.

    frames: a sequence of dicts with "body" ((18, 3)), optional "hands" (None or two (21, 3)/None entries) and
    optional "face" ((N, 3)); a bare (F, 18, 3) array is accepted as bodies without hands.
    Format: {"width", "height", "fps", "frames": [{"body": [[x, y, s] * 18], "hands": [[...] * 21, [...] * 21] | null}]}.
    """
    path = Path(path)
    if isinstance(frames, np.ndarray):
        frames = [{"body": body} for body in frames]
    records = []
    for index, frame in enumerate(frames):
        record = {"body": _points_to_list(frame["body"], 18, f"frame {index} body")}
        hands = frame.get("hands")
        record["hands"] = None if hands is None else [
            _points_to_list(hand, 21, f"frame {index} hand") for hand in hands]
        if frame.get("face") is not None:
            record["face"] = _points_to_list(frame["face"], None, f"frame {index} face")
        records.append(record)
    payload = {"width": int(width), "height": int(height), "fps": float(fps), "frames": records}
    write_json(path, payload, indent=None)
    return path


def load_keypoints(path) -> dict:
    """Read a keypoints JSON file: {"width", "height", "fps", "frames": [{"body": (18, 3), "hands", "face"}],
    "body": (F, 18, 3) float32 array of all bodies}. Hands are lists of two (21, 3) arrays (or None entries)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: keypoints file not found")
    try:
        payload = json.loads(path.read_text())
        frames = []
        for record in payload["frames"]:
            body = np.asarray(record["body"], np.float32).reshape(18, 3)
            hands = record.get("hands")
            if hands is not None:
                hands = [None if hand is None else np.asarray(hand, np.float32).reshape(21, 3) for hand in hands]
            face = record.get("face")
            frames.append({"body": body, "hands": hands,
                           "face": None if face is None else np.asarray(face, np.float32).reshape(-1, 3)})
        result = {"width": int(payload["width"]), "height": int(payload["height"]), "fps": float(payload["fps"]),
                  "frames": frames}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a valid keypoints file ({error})") from error
    result["body"] = (np.stack([f["body"] for f in frames]) if frames else np.zeros((0, 18, 3), np.float32))
    return result
