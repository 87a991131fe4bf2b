"""Synthetic dance videos of 2D articulated puppets, with exact skeletons: the project's offline training data.

Each video shows one puppet (own proportions, skin, hair, clothing colours and pattern, background) dancing with
procedural joint-angle curves. The pose video is drawn by data.skeleton.draw_pose from the puppet's true joints, so
the pair is what pose extraction would give on real footage, without extraction errors. Everything is a function of
(seed, video index): different seeds give different puppets and different motions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_json
from .skeleton import BODY_NAMES, draw_pose, save_keypoints
from .video import write_video

PATTERNS = ("plain", "stripes", "checks", "dots")
BACKGROUNDS = ("flat", "gradient", "textured")
SKIN_LIGHT = np.array([250, 220, 195], np.float32)
SKIN_DARK = np.array([95, 60, 40], np.float32)
HAIR_COLORS = np.array([[25, 20, 18], [70, 45, 25], [140, 95, 50], [200, 160, 90], [150, 40, 20], [170, 170, 170]],
                       np.float32)


# ---------------------------------------------------------------- puppet appearance and motion parameters

def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32) * 255


def _random_color(rng, avoid=(), min_distance=90.0) -> np.ndarray:
    color = _hsv(rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.3, 0.95))
    for _ in range(20):
        if all(np.linalg.norm(color - other) >= min_distance for other in avoid):
            break
        color = _hsv(rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.3, 0.95))
    return color


@dataclass
class Garment:
    pattern: str
    color_a: np.ndarray
    color_b: np.ndarray
    period: float  # in units of the image size
    angle: float


@dataclass
class Puppet:
    height: float
    head_rx: float
    head_ry: float
    neck: float
    torso: float
    shoulder_half: float
    hip_half: float
    upper_arm: float
    forearm: float
    arm_r: float
    thigh: float
    shin: float
    leg_r: float
    hand: float
    skin: np.ndarray
    hair: np.ndarray
    hair_long: bool
    shirt: Garment
    pants: Garment
    shoes: np.ndarray
    long_sleeves: bool
    long_pants: bool
    background: str
    bg_colors: tuple
    bg_waves: np.ndarray
    floor: np.ndarray | None
    ground: float
    center_x: float


def sample_puppet(rng: np.random.Generator) -> Puppet:
    h = rng.uniform(0.6, 0.78)
    u = lambda lo, hi: h * rng.uniform(lo, hi)  # noqa: E731  (proportions are fractions of body height)
    head_ry = u(0.065, 0.08)
    bg_a = _random_color(rng)
    bg_b = _random_color(rng, [bg_a], 60)
    skin = SKIN_LIGHT + (SKIN_DARK - SKIN_LIGHT) * rng.random() + rng.normal(0, 6, 3).astype(np.float32)
    shirt_a = _random_color(rng, [bg_a, bg_b, skin])
    pants_a = _random_color(rng, [bg_a, bg_b, shirt_a], 70)
    garments = []
    for base in (shirt_a, pants_a):
        garments.append(Garment(
            pattern=PATTERNS[rng.integers(len(PATTERNS))], color_a=base,
            color_b=np.clip(_random_color(rng, [base], 100), 0, 255),
            period=rng.uniform(0.025, 0.06), angle=rng.uniform(0, math.pi)))
    return Puppet(
        height=h, head_rx=head_ry * rng.uniform(0.75, 0.88), head_ry=head_ry, neck=u(0.025, 0.04),
        torso=u(0.27, 0.32), shoulder_half=u(0.1, 0.13), hip_half=u(0.065, 0.09),
        upper_arm=u(0.16, 0.19), forearm=u(0.14, 0.17), arm_r=u(0.026, 0.036),
        thigh=u(0.22, 0.26), shin=u(0.21, 0.25), leg_r=u(0.038, 0.05), hand=u(0.06, 0.075),
        skin=np.clip(skin, 0, 255), hair=HAIR_COLORS[rng.integers(len(HAIR_COLORS))], hair_long=bool(rng.random() < 0.4),
        shirt=garments[0], pants=garments[1], shoes=_hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.1, 0.4)),
        long_sleeves=bool(rng.random() < 0.5), long_pants=bool(rng.random() < 0.7),
        background=BACKGROUNDS[rng.integers(len(BACKGROUNDS))], bg_colors=(bg_a, bg_b),
        bg_waves=rng.normal(0, 1, (4, 4)).astype(np.float32),
        floor=_random_color(rng, [bg_a], 40) * 0.8 if rng.random() < 0.6 else None,
        ground=rng.uniform(0.9, 0.96), center_x=rng.uniform(0.4, 0.6))


class Motion:
    """Smooth joint-angle curves: a few harmonics of a beat whose tempo itself drifts, per puppet."""

    def __init__(self, rng: np.random.Generator, frames: int, fps: float):
        t = np.arange(frames) / float(fps)
        tempo = rng.uniform(0.35, 1.1)  # beats per second
        drift = 1 + rng.uniform(0, 0.35) * np.sin(2 * math.pi * t / rng.uniform(3, 8) + rng.uniform(0, 6.3))
        self.beat = 2 * math.pi * np.cumsum(tempo * drift) / float(fps)
        self.t = t
        self.rng = rng

    def wave(self, rate=None) -> np.ndarray:
        """A smooth curve in roughly [-1, 1]: beat harmonics with random phases."""
        rng = self.rng
        rate = rate if rate is not None else rng.choice([0.5, 1.0, 1.0, 2.0])
        phase = rng.uniform(0, 2 * math.pi)
        second = rng.uniform(0, 0.4)
        return (np.sin(rate * self.beat + phase) + second * np.sin(2 * rate * self.beat + 1.7 * phase)) / (1 + second)

    def slow(self) -> np.ndarray:
        return np.sin(2 * math.pi * self.t / self.rng.uniform(4, 10) + self.rng.uniform(0, 2 * math.pi))


def sample_motion(rng: np.random.Generator, frames: int, fps: float) -> dict:
    m = Motion(rng, frames, fps)
    symmetric = rng.random() < 0.4
    arm_base, arm_amp = rng.uniform(0.15, 0.7), rng.uniform(0.3, 1.3)
    right_arm = m.wave()
    left_arm = right_arm if symmetric else m.wave()
    curves = {
        "r_arm": np.clip(arm_base + arm_amp * right_arm, 0.05, 3.0),
        "l_arm": np.clip(arm_base + rng.uniform(-0.1, 0.1) + arm_amp * left_arm, 0.05, 3.0),
        "r_elbow": rng.choice([-1, 1]) * rng.uniform(0.1, 1.8) * (0.5 + 0.5 * m.wave()),
        "l_elbow": rng.choice([-1, 1]) * rng.uniform(0.1, 1.8) * (0.5 + 0.5 * m.wave()),
        "r_hip": rng.uniform(0.02, 0.1) + rng.uniform(0, 0.25) * np.maximum(m.wave(), 0),
        "l_hip": rng.uniform(0.02, 0.1) + rng.uniform(0, 0.25) * np.maximum(m.wave(), 0),
        "knees": rng.uniform(0, 0.9) * (0.5 + 0.5 * m.wave(1.0)),
        "lean": rng.uniform(0, 0.2) * m.wave(),
        "head": rng.uniform(0, 0.25) * m.wave(),
        "yaw": rng.uniform(0, 1.0) * m.slow(),
        "x": rng.uniform(0, 0.12) * m.slow(),
        "bounce": rng.uniform(0, 0.025) * np.abs(np.sin(m.beat)),
    }
    # Stepping: legs swing in turn while the puppet travels sideways.
    step = rng.uniform(0, 0.35) * np.sin(m.beat * rng.choice([0.5, 1.0]))
    curves["r_hip"] = curves["r_hip"] + np.maximum(step, 0)
    curves["l_hip"] = curves["l_hip"] + np.maximum(-step, 0)
    return curves


# ---------------------------------------------------------------- kinematics

def _direction(angle):
    """Unit vector at `angle` from straight down (image y grows downwards), positive towards +x."""
    return np.array([math.sin(angle), math.cos(angle)])


def pose_frame(p: Puppet, c: dict, i: int) -> dict:
    """Joint positions (in image-size units) for frame i, plus per-keypoint visibility and drawing order hints."""
    yaw = float(c["yaw"][i])
    width_scale = max(0.35, math.cos(yaw))
    lean = float(c["lean"][i])
    up = -_direction(lean)  # from hips towards neck
    side = np.array([math.cos(lean), -math.sin(lean)])  # image-right, perpendicular to the spine

    knees = float(c["knees"][i])
    thigh = p.thigh * (1 - 0.3 * math.sin(knees))
    joints = {}
    hip_mid = np.zeros(2)
    joints["r_hip"] = hip_mid - side * p.hip_half * width_scale
    joints["l_hip"] = hip_mid + side * p.hip_half * width_scale
    for name, sign in (("r", -1), ("l", 1)):
        angle = sign * float(c[f"{name}_hip"][i]) + sign * 0.35 * knees
        joints[f"{name}_knee"] = joints[f"{name}_hip"] + _direction(angle) * thigh
        joints[f"{name}_ankle"] = joints[f"{name}_knee"] + _direction(angle - sign * 0.6 * knees) * p.shin
    neck = hip_mid + up * p.torso
    joints["neck"] = neck
    for name, sign in (("r", -1), ("l", 1)):
        shoulder = neck + side * sign * p.shoulder_half * width_scale - up * 0.02 * p.height
        upper = sign * float(c[f"{name}_arm"][i]) + lean
        elbow = shoulder + _direction(upper) * p.upper_arm
        wrist = elbow + _direction(upper + float(c[f"{name}_elbow"][i])) * p.forearm
        joints[f"{name}_shoulder"], joints[f"{name}_elbow"], joints[f"{name}_wrist"] = shoulder, elbow, wrist
    head_angle = lean + float(c["head"][i])
    head_up = -_direction(head_angle)
    head_side = np.array([math.cos(head_angle), -math.sin(head_angle)])
    head = neck + head_up * (p.neck + p.head_ry)
    turn = math.sin(yaw)
    joints["head"] = head
    joints["nose"] = head + head_side * turn * p.head_rx * 0.7 - head_up * 0.15 * p.head_ry
    for name, sign in (("r", -1), ("l", 1)):
        joints[f"{name}_eye"] = head + head_side * (sign * 0.38 * math.cos(yaw) + 0.6 * turn) * p.head_rx \
            + head_up * 0.12 * p.head_ry
        joints[f"{name}_ear"] = head + head_side * (sign * 0.95 * math.cos(yaw) + 0.2 * turn) * p.head_rx \
            + head_up * 0.05 * p.head_ry

    # Stand on the ground: the lowest ankle sits on the floor line, minus a dance bounce.
    lowest = max(joints["r_ankle"][1], joints["l_ankle"][1])
    offset = np.array([p.center_x + float(c["x"][i]), p.ground - lowest - float(c["bounce"][i]) - p.leg_r])
    for key in joints:
        joints[key] = joints[key] + offset
    hidden = set()
    if yaw > 0.5:   # turned towards image-right: the person's left side faces away
        hidden.add("l_ear")
    if yaw < -0.5:
        hidden.add("r_ear")
    return {"joints": joints, "hidden": hidden, "yaw": yaw, "lean": lean, "head_angle": head_angle}


def hand_keypoints(wrist, elbow, side_sign: float, length: float) -> np.ndarray:
    """21 OpenPose hand points for a mitten-like hand pointing along the forearm (image-size units)."""
    d = wrist - elbow
    d = d / (np.linalg.norm(d) + 1e-9)
    perp = np.array([-d[1], d[0]]) * side_sign
    points = [wrist]
    for finger in range(5):
        fan = (finger - 2) * 0.18
        direction = d * math.cos(fan) + perp * math.sin(fan)
        if finger == 0:  # thumb starts at the side of the palm
            base, direction = wrist + d * 0.2 * length + perp * 0.3 * length, d * 0.6 + perp * 0.8
            direction = direction / np.linalg.norm(direction)
        else:
            base = wrist + d * 0.5 * length + perp * (finger - 2.5) * 0.16 * length
        seg = length * (0.16 if finger else 0.14)
        for k in range(4):
            points.append(base + direction * seg * k)
    return np.array(points)


# ---------------------------------------------------------------- rendering

class Renderer:
    """Paints puppets onto a float canvas with vectorised, antialiased masks limited to each part's bounding box."""

    def __init__(self, size: int):
        self.size = size
        self.grid = np.arange(size, dtype=np.float32) + 0.5

    def background(self, p: Puppet) -> np.ndarray:
        s = self.size
        yy, xx = np.meshgrid(self.grid / s, self.grid / s, indexing="ij")
        a, b = p.bg_colors
        if p.background == "flat":
            canvas = np.broadcast_to(a, (s, s, 3)).copy()
        elif p.background == "gradient":
            w = p.bg_waves[0]
            t = np.clip((xx * w[0] + yy * w[1]) / (abs(w[0]) + abs(w[1]) + 1e-6) + 0.5, 0, 1)
            canvas = a + (b - a) * t[..., None]
        else:
            field = np.zeros((s, s), np.float32)
            for fx, fy, ph, amp in p.bg_waves:
                field += amp * np.sin(2 * math.pi * (3 * fx * xx + 3 * fy * yy) + ph)
            t = np.clip(0.5 + 0.2 * field, 0, 1)
            canvas = a + (b - a) * t[..., None]
        if p.floor is not None:
            floor = yy > p.ground - 0.04
            shade = np.clip(1.1 - 0.4 * (yy - p.ground + 0.04) / 0.2, 0.6, 1.1)
            canvas[floor] = (p.floor * shade[floor][:, None])
        return canvas.astype(np.float32)

    def _box(self, lo, hi):
        s = self.size
        x0, y0 = max(0, int(math.floor(lo[0]))), max(0, int(math.floor(lo[1])))
        x1, y1 = min(s, int(math.ceil(hi[0])) + 1), min(s, int(math.ceil(hi[1])) + 1)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1

    def _paint(self, canvas, box, alpha, shade, color):
        x0, y0, x1, y1 = box
        region = canvas[y0:y1, x0:x1]
        if callable(color):
            color = color(self.grid[x0:x1][None, :], self.grid[y0:y1][:, None])
        target = np.asarray(color, np.float32) * shade[..., None]
        region += alpha[..., None] * (target - region)

    def capsule(self, canvas, a, b, ra, rb, color):
        """A tapered capsule from a (radius ra) to b (radius rb), pixel units."""
        r = max(ra, rb)
        box = self._box(np.minimum(a, b) - r, np.maximum(a, b) + r)
        if box is None:
            return
        x0, y0, x1, y1 = box
        xs, ys = self.grid[x0:x1][None, :], self.grid[y0:y1][:, None]
        ab = b - a
        length2 = float(ab @ ab) + 1e-6
        t = np.clip(((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / length2, 0, 1)
        d = np.hypot(xs - (a[0] + t * ab[0]), ys - (a[1] + t * ab[1]))
        radius = ra + (rb - ra) * t
        alpha = np.clip(radius - d + 0.5, 0, 1)
        if alpha.any():
            self._paint(canvas, box, alpha, 1 - 0.35 * np.clip(d / radius, 0, 1) ** 2, color)

    def ellipse(self, canvas, center, rx, ry, angle, color, shade=True, clip_y=None):
        r = max(rx, ry)
        box = self._box(center - r, center + r)
        if box is None:
            return
        x0, y0, x1, y1 = box
        xs, ys = self.grid[x0:x1][None, :] - center[0], self.grid[y0:y1][:, None] - center[1]
        ca, sa = math.cos(angle), math.sin(angle)
        u, v = ca * xs - sa * ys, sa * xs + ca * ys
        q = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        alpha = np.clip((1 - q) * min(rx, ry) + 0.5, 0, 1)
        if clip_y is not None:  # keep only the part above a line across the ellipse (hair)
            alpha = alpha * np.clip(clip_y - v + 0.5, 0, 1)
        if alpha.any():
            self._paint(canvas, box, alpha, 1 - 0.3 * np.clip(q, 0, 1) ** 2 if shade else np.ones_like(q), color)

    def garment(self, g: Garment, anchor):
        period = g.period * self.size
        ca, sa = math.cos(g.angle), math.sin(g.angle)

        def color(xs, ys):
            u, v = xs - anchor[0], ys - anchor[1]
            if g.pattern == "plain":
                return np.broadcast_to(g.color_a, (*np.broadcast(u, v).shape, 3))
            if g.pattern == "stripes":
                on = np.mod((u * ca + v * sa) / period, 1.0) < 0.5
            elif g.pattern == "checks":
                on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
            else:
                du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
                on = du ** 2 + dv ** 2 < (0.3 * period) ** 2
            return np.where(on[..., None], g.color_a, g.color_b)
        return color

    def frame(self, p: Puppet, state: dict, background: np.ndarray, hands) -> np.ndarray:
        s = self.size
        j = {k: v * s for k, v in state["joints"].items()}
        canvas = background.copy()
        hip_mid = (j["r_hip"] + j["l_hip"]) / 2
        shirt = self.garment(p.shirt, hip_mid)
        pants = self.garment(p.pants, hip_mid)
        arm_r, leg_r = p.arm_r * s, p.leg_r * s
        # Which side is nearer the camera decides what is drawn behind the torso.
        far, near = ("l", "r") if state["yaw"] > 0 else ("r", "l")

        def leg(side):
            hip, knee, ankle = j[f"{side}_hip"], j[f"{side}_knee"], j[f"{side}_ankle"]
            self.capsule(canvas, hip, knee, leg_r * 1.15, leg_r, pants)
            self.capsule(canvas, knee, ankle, leg_r, leg_r * 0.8, pants if p.long_pants else p.skin)
            toe = ankle + np.array([(1 if side == "l" else -1) * leg_r * 1.2, leg_r * 0.2])
            self.capsule(canvas, ankle, toe, leg_r * 0.75, leg_r * 0.7, p.shoes)

        def arm(side, hand_points):
            shoulder, elbow, wrist = j[f"{side}_shoulder"], j[f"{side}_elbow"], j[f"{side}_wrist"]
            self.capsule(canvas, shoulder, elbow, arm_r * 1.15, arm_r, shirt)
            self.capsule(canvas, elbow, wrist, arm_r, arm_r * 0.85, shirt if p.long_sleeves else p.skin)
            if hand_points is not None:
                palm = hand_points[[0, 5, 9, 13, 17]].mean(0) * s
                tip = hand_points[[8, 12, 16]].mean(0) * s
                self.capsule(canvas, wrist, palm, arm_r * 0.9, arm_r * 1.05, p.skin)
                self.capsule(canvas, palm, tip, arm_r * 1.05, arm_r * 0.7, p.skin)
                self.capsule(canvas, wrist, hand_points[3] * s, arm_r * 0.5, arm_r * 0.4, p.skin)

        arm(far, hands[far])
        leg(far)
        leg(near)
        # Torso: shoulders to hips as a tapered capsule, plus a pelvis in the trousers' cloth.
        shoulder_mid = (j["r_shoulder"] + j["l_shoulder"]) / 2
        width = np.linalg.norm(j["r_shoulder"] - j["l_shoulder"]) / 2
        hip_width = np.linalg.norm(j["r_hip"] - j["l_hip"]) / 2
        self.capsule(canvas, j["r_hip"], j["l_hip"], leg_r * 1.2, leg_r * 1.2, pants)
        self.capsule(canvas, shoulder_mid, hip_mid, max(width, arm_r * 1.3), max(hip_width + leg_r * 0.8, arm_r),
                     shirt)
        head = j["head"]
        rx, ry = p.head_rx * s, p.head_ry * s
        self.capsule(canvas, j["neck"], j["neck"] + (head - j["neck"]) * 0.5, rx * 0.4, rx * 0.4, p.skin)
        if p.hair_long:  # hair falling behind the head down to the jaw line
            down = (j["neck"] - head) / (np.linalg.norm(j["neck"] - head) + 1e-6)
            self.ellipse(canvas, head + down * ry * 0.25, rx * 1.18, ry * 1.12, -state["head_angle"], p.hair,
                         clip_y=ry * 0.55)
        self.ellipse(canvas, head, rx, ry, -state["head_angle"], p.skin)
        self.ellipse(canvas, head, rx * 1.04, ry * 1.05, -state["head_angle"], p.hair, clip_y=-ry * 0.35)
        eye_r = max(0.6, rx * 0.12)
        if abs(state["yaw"]) < 1.2:
            for side in ("r", "l"):
                self.ellipse(canvas, j[f"{side}_eye"], eye_r, eye_r, 0.0, (30, 25, 25), shade=False)
        arm(near, hands[near])
        return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- videos and datasets

def _keypoint_arrays(state: dict, hand_points: dict) -> tuple[np.ndarray, list]:
    body = np.zeros((18, 3), np.float32)
    for index, name in enumerate(BODY_NAMES):
        x, y = state["joints"][name]
        inside = 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0
        body[index] = (x, y, 0.0 if (name in state["hidden"] or not inside) else 1.0)
    hands = []
    for side in ("r", "l"):
        points = hand_points[side]
        conf = ((points >= 0) & (points <= 1)).all(1).astype(np.float32)
        hands.append(np.concatenate([points, conf[:, None]], 1).astype(np.float32))
    return body, hands


def render_video(seed: int, index: int, frames: int, size: int, fps: float = 12.0, hands: bool = True):
    """Render one puppet video: (video uint8 (F, S, S, 3), pose uint8 (F, S, S, 3), keypoint frames list)."""
    rng = np.random.default_rng([int(seed), int(index), 0x5EED])
    puppet = sample_puppet(rng)
    curves = sample_motion(rng, frames, fps)
    renderer = Renderer(size)
    background = renderer.background(puppet)
    video = np.empty((frames, size, size, 3), np.uint8)
    poses = np.empty_like(video)
    keypoints = []
    for i in range(frames):
        state = pose_frame(puppet, curves, i)
        j = state["joints"]
        hand_points = {side: hand_keypoints(j[f"{side}_wrist"], j[f"{side}_elbow"], 1 if side == "r" else -1,
                                            puppet.hand) for side in ("r", "l")}
        video[i] = renderer.frame(puppet, state, background, hand_points)
        body, hand_arrays = _keypoint_arrays(state, hand_points)
        poses[i] = draw_pose(body, size, size, hands=hand_arrays if hands else None)
        keypoints.append({"body": body, "hands": hand_arrays if hands else None})
    return video, poses, keypoints


def video_id(seed: int, index: int) -> str:
    return f"synth_s{int(seed)}_{int(index):05d}"


def generate_dataset(out_dir, videos: int, frames: int, size: int, seed: int, fps: float = 12.0,
                     hands: bool = True, overwrite: bool = False, progress: bool = False) -> Path:
    """Write DIR/videos/<id>.mp4, DIR/poses/<id>.mp4, DIR/keypoints/<id>.json and DIR/meta.json; returns meta.json.

    meta.json is written last, so its presence marks a complete dataset; an existing one is only replaced with
    overwrite=True. Paths inside meta.json are relative to DIR.
    """
    if videos < 1 or frames < 1 or size < 8:
        raise ValueError(f"synth needs videos >= 1, frames >= 1 and size >= 8 (got {videos}, {frames}, {size})")
    out = Path(out_dir)
    meta_path = out / "meta.json"
    if meta_path.exists() and not overwrite:
        raise FileExistsError(f"{meta_path}: a dataset already exists here (use overwrite to replace it)")
    for sub in ("videos", "poses", "keypoints"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    entries = []
    indices = range(videos)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="synth", unit="video")
    for index in indices:
        name = video_id(seed, index)
        video, poses, keypoints = render_video(seed, index, frames, size, fps, hands)
        # Files without a meta.json are leftovers of an interrupted run with the same seed: safe to replace.
        # Stored exactly (RGB, lossless): a lossy encode of the same frames is not the same from run to run (x264's
        # decisions vary; decoded pixels moved by up to 29 levels between two runs here), and the data must be.
        write_video(out / "videos" / f"{name}.mp4", video, fps, overwrite=True, preset="veryfast", exact=True)
        write_video(out / "poses" / f"{name}.mp4", poses, fps, overwrite=True, preset="veryfast", exact=True)
        save_keypoints(out / "keypoints" / f"{name}.json", keypoints, size, size, fps)
        entries.append({"video_id": name, "video_path": f"videos/{name}.mp4", "pose_path": f"poses/{name}.mp4",
                        "keypoints_path": f"keypoints/{name}.json", "num_frames": frames, "fps": float(fps),
                        "width": size, "height": size})
    write_json(meta_path, entries)
    return meta_path


def ensure_synthetic_dataset(out_dir, videos: int = 8, frames: int = 48, size: int = 64, seed: int = 0,
                             fps: float = 12.0, hands: bool = True) -> Path:
    """Return DIR/meta.json, generating the dataset first only when it is missing (training configs call this)."""
    meta_path = Path(out_dir) / "meta.json"
    if meta_path.exists():
        return meta_path
    return generate_dataset(out_dir, videos, frames, size, seed, fps, hands=hands)


def sample_grid(seed: int = 0, count: int = 8, size: int = 128, frames: int = 24, columns: int = 4) -> np.ndarray:
    """A uint8 image of `count` puppets (a mid-video frame of each) above their skeletons, for eyeballing."""
    tiles = []
    for index in range(count):
        video, poses, _ = render_video(seed, index, frames, size)
        k = frames // 2
        tiles.append(np.concatenate([video[k], poses[k]], 0))
    rows = []
    for start in range(0, count, columns):
        row = tiles[start:start + columns]
        row += [np.zeros_like(tiles[0])] * (columns - len(row))
        rows.append(np.concatenate(row, 1))
    return np.concatenate(rows, 0)
