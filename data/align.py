"""Pose alignment: retarget a driving pose sequence to the body proportions and placement of a reference pose.

Each limb of the driving skeleton is rescaled to the reference's length for that limb (walking the kinematic tree
from the neck outward, keeping each driving limb's direction), and the whole skeleton is placed at the reference's
neck with the reference's overall scale. The per-limb ratios, the global scale and the anchor are computed once,
from the reference and the FIRST driving frame, and applied to every frame, so the motion (including global
translation, scaled) is preserved.

All geometry is done in pixels (keypoints are stored normalised by width/height, so a limb's length in normalised
units depends on the aspect ratio); the result is normalised by the reference size, i.e. meant to be drawn at the
reference image's resolution.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

NECK, NOSE = 1, 0
R_WRIST, L_WRIST = 4, 7
# (parent, child) in the order of a walk from the neck outward (OpenPose-18 indices).
KINEMATIC_TREE: tuple[tuple[int, int], ...] = (
    (1, 0), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (0, 14), (0, 15), (14, 16), (15, 17),
)
FOREARMS = {R_WRIST: (3, 4), L_WRIST: (6, 7)}


def _present(points: np.ndarray, threshold: float) -> np.ndarray:
    return points[..., 2] > threshold


def _to_pixels(points: np.ndarray, size: Sequence[float]) -> np.ndarray:
    return np.asarray(points, np.float64)[..., :2] * np.asarray(size, np.float64)


def limb_lengths(body: np.ndarray, size: Sequence[float], threshold: float = 0.0) -> dict[tuple[int, int], float]:
    """Pixel length of every limb of the kinematic tree whose two ends are present."""
    xy = _to_pixels(body, size)
    present = _present(np.asarray(body), threshold)
    return {(a, b): float(np.linalg.norm(xy[b] - xy[a])) for a, b in KINEMATIC_TREE if present[a] and present[b]}


class PoseAligner:
    """The alignment computed from a reference body and the first driving body; apply it to any driving frame."""

    def __init__(self, ref_body: np.ndarray, first_body: np.ndarray, ref_size: Sequence[float],
                 driving_size: Sequence[float], threshold: float = 0.0):
        ref_body = np.asarray(ref_body, np.float64)
        first_body = np.asarray(first_body, np.float64)
        for name, body in (("reference", ref_body), ("driving", first_body)):
            if body.shape != (18, 3):
                raise ValueError(f"{name} body must have shape (18, 3), got {body.shape}")
        self.ref_size = np.asarray(ref_size, np.float64)
        self.driving_size = np.asarray(driving_size, np.float64)
        self.threshold = threshold
        ref_xy, drv_xy = _to_pixels(ref_body, ref_size), _to_pixels(first_body, driving_size)
        ref_ok, drv_ok = _present(ref_body, threshold), _present(first_body, threshold)

        ref_len = limb_lengths(ref_body, ref_size, threshold)
        drv_len = limb_lengths(first_body, driving_size, threshold)
        common = [limb for limb in KINEMATIC_TREE if limb in ref_len and limb in drv_len and drv_len[limb] > 1e-6]
        if common:
            self.scale = sum(ref_len[limb] for limb in common) / sum(drv_len[limb] for limb in common)
        else:  # nothing to measure: fit the driving frame into the reference frame
            self.scale = float(min(self.ref_size / self.driving_size))
        # per-limb ratios; limbs missing on either side fall back to the global scale
        self.ratios = {limb: (ref_len[limb] / drv_len[limb] if limb in common else self.scale)
                       for limb in KINEMATIC_TREE}

        # anchor: the neck when both have one, else the centroid of the keypoints both have, else the image centres
        if ref_ok[NECK] and drv_ok[NECK]:
            self.ref_anchor, self.drv_anchor = ref_xy[NECK], drv_xy[NECK]
        elif (ref_ok & drv_ok).any():
            both = ref_ok & drv_ok
            self.ref_anchor, self.drv_anchor = ref_xy[both].mean(axis=0), drv_xy[both].mean(axis=0)
        else:
            self.ref_anchor, self.drv_anchor = self.ref_size / 2, self.driving_size / 2

    def _global(self, xy: np.ndarray) -> np.ndarray:
        """Driving pixels -> reference pixels by the global similarity (scale about the anchors)."""
        return self.ref_anchor + self.scale * (xy - self.drv_anchor)

    def align_body(self, body: np.ndarray) -> np.ndarray:
        """One driving body (18, 3) -> aligned body (18, 3), normalised by the reference size."""
        body = np.asarray(body, np.float64)
        xy = _to_pixels(body, self.driving_size)
        present = _present(body, self.threshold)
        out_xy = np.zeros((18, 2))
        placed = np.zeros(18, bool)
        if present[NECK]:
            out_xy[NECK] = self._global(xy[NECK])
            placed[NECK] = True
        for parent, child in KINEMATIC_TREE:
            if not present[child]:
                continue
            if placed[parent]:
                out_xy[child] = out_xy[parent] + self.ratios[(parent, child)] * (xy[child] - xy[parent])
            else:  # the chain is broken in this frame: place it by the global transform
                out_xy[child] = self._global(xy[child])
            placed[child] = True
        out = np.zeros((18, 3), np.float32)
        out[:, :2] = out_xy / self.ref_size
        out[:, 2] = np.where(present, body[:, 2], 0.0)
        out[~present, :2] = 0.0
        return out

    def align_hand(self, hand: np.ndarray | None, body: np.ndarray, aligned_body: np.ndarray) -> np.ndarray | None:
        """Move a (21, 3) hand with the body wrist it belongs to (the nearer one), scaled like that forearm."""
        if hand is None:
            return None
        hand = np.asarray(hand, np.float64)
        present = _present(hand, self.threshold)
        out = np.zeros((21, 3), np.float32)
        if not present.any():
            return out
        hand_xy = _to_pixels(hand, self.driving_size)
        body_xy = _to_pixels(body, self.driving_size)
        body_ok = _present(np.asarray(body), self.threshold)
        centre = hand_xy[0] if present[0] else hand_xy[present].mean(axis=0)
        wrists = [w for w in (R_WRIST, L_WRIST) if body_ok[w]]
        if wrists:
            wrist = min(wrists, key=lambda w: np.linalg.norm(body_xy[w] - centre))
            new_wrist = aligned_body[wrist, :2].astype(np.float64) * self.ref_size
            scale = self.ratios[FOREARMS[wrist]]
            new_xy = new_wrist + scale * (hand_xy - body_xy[wrist])
        else:
            new_xy = self._global(hand_xy)
        out[:, :2] = new_xy / self.ref_size
        out[:, 2] = np.where(present, hand[:, 2], 0.0)
        out[~present, :2] = 0.0
        return out

    def align_face(self, face: np.ndarray | None, body: np.ndarray, aligned_body: np.ndarray) -> np.ndarray | None:
        """Move face landmarks (N, 3) with the nose, scaled by the head limb ratio."""
        if face is None:
            return None
        face = np.asarray(face, np.float64)
        present = _present(face, self.threshold)
        out = np.zeros(face.shape, np.float32)
        face_xy = _to_pixels(face, self.driving_size)
        if _present(np.asarray(body), self.threshold)[NOSE]:
            nose = _to_pixels(body, self.driving_size)[NOSE]
            new_nose = aligned_body[NOSE, :2].astype(np.float64) * self.ref_size
            new_xy = new_nose + self.ratios[(NECK, NOSE)] * (face_xy - nose)
        else:
            new_xy = self._global(face_xy)
        out[:, :2] = new_xy / self.ref_size
        out[:, 2] = np.where(present, face[:, 2], 0.0)
        out[~present, :2] = 0.0
        return out

    def align_frame(self, frame: dict) -> dict:
        """A keypoints-JSON frame {"body", "hands", "face"} -> the aligned frame."""
        body = np.asarray(frame["body"], np.float64)
        aligned = self.align_body(body)
        hands = frame.get("hands")
        return {
            "body": aligned,
            "hands": None if hands is None else [self.align_hand(h, body, aligned) for h in hands],
            "face": self.align_face(frame.get("face"), body, aligned),
        }


def align_poses(ref_body: np.ndarray, driving_bodies: np.ndarray, ref_size: Sequence[float] = (1, 1),
                driving_size: Sequence[float] = (1, 1), threshold: float = 0.0) -> np.ndarray:
    """Align driving bodies (F, 18, 3) to `ref_body` (18, 3); sizes are (width, height) in pixels.

    Returns (F, 18, 3) normalised by `ref_size`. Frame 0 gets the reference's limb lengths and neck position; all
    frames share the transform measured on frame 0. Keypoints with confidence <= `threshold` are missing (0 out).
    """
    driving_bodies = np.asarray(driving_bodies, np.float64)
    if driving_bodies.ndim != 3 or driving_bodies.shape[1:] != (18, 3):
        raise ValueError(f"driving bodies must have shape (F, 18, 3), got {driving_bodies.shape}")
    if len(driving_bodies) == 0:
        return np.zeros((0, 18, 3), np.float32)
    aligner = PoseAligner(ref_body, driving_bodies[0], ref_size, driving_size, threshold)
    return np.stack([aligner.align_body(body) for body in driving_bodies])


def align_keypoints(ref: dict, driving: dict, threshold: float = 0.0) -> dict:
    """Align loaded keypoints (:func:`data.skeleton.load_keypoints` dicts): the reference's first frame against
    the driving sequence. Returns {"width", "height", "fps", "frames"} at the reference's size, driving fps."""
    if not ref["frames"]:
        raise ValueError("reference keypoints have no frames")
    if not driving["frames"]:
        raise ValueError("driving keypoints have no frames")
    aligner = PoseAligner(ref["frames"][0]["body"], driving["frames"][0]["body"],
                          (ref["width"], ref["height"]), (driving["width"], driving["height"]), threshold)
    return {"width": ref["width"], "height": ref["height"], "fps": driving["fps"],
            "frames": [aligner.align_frame(frame) for frame in driving["frames"]]}
