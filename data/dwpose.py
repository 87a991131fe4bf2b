"""DWPose whole-body pose estimation on onnxruntime: detector (YOLOX) + top-down pose model (RTMPose/SimCC).

Two ONNX files, as released by the DWPose authors (Hugging Face repository ``yzd-v/DWPose``):

- ``yolox_l.onnx``: a YOLOX-L person detector. Input ``(1, 3, 640, 640)`` float32, raw 0-255 pixel values in BGR
  order, the image letterboxed into the top-left corner (aspect ratio kept) on a pad value of 114. Output
  ``(1, N, 85)`` raw grid predictions (cx, cy, log w, log h, objectness, 80 class scores) for strides 8, 16 and 32,
  decoded here (grid offsets, strides, exp) and filtered with NMS; COCO class 0 is "person".
- ``dw-ll_ucoco_384.onnx``: the DWPose-L whole-body model (133 COCO-WholeBody keypoints). Input ``(1, 3, 384, 288)``
  (H x W) float32, the person box enlarged by 1.25, widened to the model's aspect ratio and warped to 288x384,
  normalised with ImageNet mean/std in 0-255 units. Outputs SimCC classification vectors ``simcc_x (1, 133, 576)``
  and ``simcc_y (1, 133, 768)`` (twice the input width/height: split ratio 2.0), decoded by argmax; the confidence of a
  keypoint is the smaller of its two maxima.

Channel order: the reference DWPose/rtmlib/Moore-AnimateAnyone pipelines feed OpenCV BGR frames to both models with
the mean/std written in RGB order; we do the same (``INPUT_CHANNEL_ORDER``) so our skeletons match the ones the
public Animate Anyone reproductions trained on.

Output of :class:`DWPose`: one person (the highest-scoring detection) in OpenPose-18 body order with x, y normalised
to [0, 1] by the frame's width/height and confidence in [0, 1] (0 = missing; keypoints under ``threshold`` are set
missing), two hands ``[left, right]`` of 21 keypoints each, and optionally the 68 face landmarks (off by default:
drawing face landmarks was reported to distort generated faces).

onnxruntime is an optional dependency (``pip install marionet[pose]``) imported only when a session is created.
Everything else here is numpy + Pillow and unit-testable without the real models.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

DET_FILENAME = "yolox_l.onnx"
POSE_FILENAME = "dw-ll_ucoco_384.onnx"
HF_REPO = "yzd-v/DWPose"
MODELS_DIR_ENV = "MARIONET_DWPOSE_DIR"
DEFAULT_MODELS_DIR = Path("pretrained_weights") / "DWPose"

INPUT_CHANNEL_ORDER = "bgr"  # what the DWPose ONNX pipelines feed both models (see module docstring)
DET_INPUT_SIZE = (640, 640)  # (H, W)
DET_PAD_VALUE = 114
DET_STRIDES = (8, 16, 32)
POSE_INPUT_SIZE = (288, 384)  # (W, H)
POSE_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
POSE_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
BBOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
PERSON_CLASS = 0

# COCO-WholeBody 133 layout: 0-16 body (COCO-17), 17-22 feet, 23-90 face (68), 91-111 left hand, 112-132 right hand.
WHOLEBODY_FACE = slice(23, 91)
WHOLEBODY_LEFT_HAND = slice(91, 112)
WHOLEBODY_RIGHT_HAND = slice(112, 133)
# OpenPose-18 index -> COCO-17 index (None: the neck, computed from both shoulders).
# OpenPose: nose, neck, r_shoulder, r_elbow, r_wrist, l_shoulder, l_elbow, l_wrist, r_hip, r_knee, r_ankle,
#           l_hip, l_knee, l_ankle, r_eye, l_eye, r_ear, l_ear
# COCO:     nose, l_eye, r_eye, l_ear, r_ear, l_shoulder, r_shoulder, l_elbow, r_elbow, l_wrist, r_wrist,
#           l_hip, r_hip, l_knee, r_knee, l_ankle, r_ankle
OPENPOSE_FROM_COCO: tuple[int | None, ...] = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
COCO_L_SHOULDER, COCO_R_SHOULDER = 5, 6


# --------------------------------------------------------------------------------------------------------------
# errors and model files
# --------------------------------------------------------------------------------------------------------------
def _missing_model_message(path: Path, what: str, filename: str) -> str:
    return (
        f"DWPose {what} not found: {path}. Download `{filename}` from the Hugging Face repository {HF_REPO} "
        f"(https://huggingface.co/{HF_REPO}/blob/main/{filename}) and pass it with "
        f"{'--det' if filename == DET_FILENAME else '--pose'} PATH, or put both `{DET_FILENAME}` and "
        f"`{POSE_FILENAME}` in --models-dir / ${MODELS_DIR_ENV} (default ./{DEFAULT_MODELS_DIR})."
    )


def resolve_model_paths(det: str | os.PathLike | None = None, pose: str | os.PathLike | None = None,
                        models_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Where the two ONNX files are: explicit paths win, then ``models_dir``, ``$MARIONET_DWPOSE_DIR`` and
    ``./pretrained_weights/DWPose``. Raises FileNotFoundError naming the missing file and where to get it."""
    base = Path(models_dir or os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR)
    det_path = Path(det) if det else base / DET_FILENAME
    pose_path = Path(pose) if pose else base / POSE_FILENAME
    if not det_path.is_file():
        raise FileNotFoundError(_missing_model_message(det_path, "person detector (YOLOX-L ONNX)", DET_FILENAME))
    if not pose_path.is_file():
        raise FileNotFoundError(
            _missing_model_message(pose_path, "whole-body pose model (DWPose-L 384x288 ONNX)", POSE_FILENAME))
    return det_path, pose_path


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DWPose pose extraction needs onnxruntime, an optional dependency: "
            "`pip install marionet[pose]` (or `pip install onnxruntime`, `onnxruntime-gpu` on CUDA machines)."
        ) from error
    return onnxruntime


def create_session(path: str | os.PathLike, providers: Sequence[str] | None = None, threads: int | None = None):
    """An onnxruntime InferenceSession (CPU unless `providers` says otherwise; CUDA first when available)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


# --------------------------------------------------------------------------------------------------------------
# detector: letterbox, YOLOX decoding, NMS
# --------------------------------------------------------------------------------------------------------------
def letterbox(image: np.ndarray, size: tuple[int, int] = DET_INPUT_SIZE, pad_value: int = DET_PAD_VALUE
              ) -> tuple[np.ndarray, float]:
    """Resize `image` (H, W, 3) uint8 keeping its aspect ratio so it fits in `size` (H, W), paste it in the top-left
    corner of a canvas filled with `pad_value`. Returns (canvas uint8, ratio); canvas px = image px * ratio."""
    from PIL import Image

    height, width = image.shape[:2]
    ratio = min(size[0] / height, size[1] / width)
    new_w, new_h = max(1, int(width * ratio)), max(1, int(height * ratio))
    canvas = np.full((size[0], size[1], 3), pad_value, dtype=np.uint8)
    if (new_w, new_h) == (width, height):
        resized = image
    else:
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR))
    canvas[:new_h, :new_w] = resized
    return canvas, ratio


def yolox_grids(input_size: tuple[int, int] = DET_INPUT_SIZE, strides: Sequence[int] = DET_STRIDES
                ) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell offsets (N, 2) as (x, y) and their strides (N, 1), in the order YOLOX flattens its outputs."""
    grids, expanded = [], []
    for stride in strides:
        h, w = input_size[0] // stride, input_size[1] // stride
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        expanded.append(np.full((h * w, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32)


def decode_yolox(raw: np.ndarray, input_size: tuple[int, int] = DET_INPUT_SIZE,
                 strides: Sequence[int] = DET_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Raw YOLOX predictions (1, N, 5 + C) or (N, 5 + C) -> boxes (N, 4) xyxy in detector-input pixels and
    class scores (N, C) = objectness x class probability."""
    pred = np.asarray(raw, dtype=np.float32)
    if pred.ndim == 3:
        pred = pred[0]
    grids, stride = yolox_grids(input_size, strides)
    if pred.shape[0] != grids.shape[0]:
        raise ValueError(f"YOLOX output has {pred.shape[0]} predictions, expected {grids.shape[0]} for input "
                         f"{input_size} and strides {tuple(strides)}")
    centers = (pred[:, :2] + grids) * stride
    sizes = np.exp(np.minimum(pred[:, 2:4], 20.0)) * stride
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    scores = pred[:, 4:5] * pred[:, 5:]
    return boxes, scores


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against many (continuous coordinates, no +1)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def detect_people(raw: np.ndarray, ratio: float, input_size: tuple[int, int] = DET_INPUT_SIZE,
                  score_threshold: float = 0.3, nms_threshold: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """People boxes (K, 4) xyxy in original-image pixels and their scores (K,), best first."""
    boxes, scores = decode_yolox(raw, input_size)
    person = scores[:, PERSON_CLASS]
    candidates = np.nonzero(person > score_threshold)[0]
    if candidates.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    keep = candidates[nms(boxes[candidates], person[candidates], nms_threshold)]
    return (boxes[keep] / ratio).astype(np.float32), person[keep].astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# pose model: crop, normalise, SimCC decoding
# --------------------------------------------------------------------------------------------------------------
def box_to_center_scale(box: Sequence[float], input_size: tuple[int, int] = POSE_INPUT_SIZE,
                        padding: float = BBOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """xyxy box -> (center (2,), scale (2,) = w, h of the crop region in image pixels), enlarged by `padding` and
    widened (never shrunk) to the model's aspect ratio input_size = (W, H)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2], dtype=np.float64)
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    aspect = input_size[0] / input_size[1]
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], dtype=np.float64)


def crop_to_image_points(points: np.ndarray, center: np.ndarray, scale: np.ndarray,
                         input_size: tuple[int, int] = POSE_INPUT_SIZE) -> np.ndarray:
    """Map (..., 2) crop pixel coordinates back to image pixels (the crop centre (W/2, H/2) is the box centre)."""
    size = np.asarray(input_size, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) / size * scale + center - scale / 2


def image_to_crop_points(points: np.ndarray, center: np.ndarray, scale: np.ndarray,
                         input_size: tuple[int, int] = POSE_INPUT_SIZE) -> np.ndarray:
    """Inverse of :func:`crop_to_image_points`."""
    size = np.asarray(input_size, dtype=np.float64)
    return (np.asarray(points, dtype=np.float64) - center + scale / 2) / scale * size


def warp_crop(image: np.ndarray, center: np.ndarray, scale: np.ndarray,
              input_size: tuple[int, int] = POSE_INPUT_SIZE) -> np.ndarray:
    """Bilinear affine crop of the region (center, scale) to input_size (W, H); outside the image is black.
    Pixel (i, j) of the crop samples image point crop_to_image_points((j, i)) (integer = pixel centre)."""
    from PIL import Image

    out_w, out_h = int(input_size[0]), int(input_size[1])
    sx, sy = scale[0] / out_w, scale[1] / out_h
    ox, oy = center[0] - scale[0] / 2, center[1] - scale[1] / 2
    # PIL samples with pixel centres at +0.5; convert the integer-centre mapping src = s * dst + o.
    coeffs = (sx, 0.0, ox + 0.5 - 0.5 * sx, 0.0, sy, oy + 0.5 - 0.5 * sy)
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.transform((out_w, out_h), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=0))


def normalize_crop(crop: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (1, 3, H, W), (x - mean) / std with the model's 0-255 statistics."""
    data = (crop.astype(np.float32) - POSE_MEAN) / POSE_STD
    return np.ascontiguousarray(data.transpose(2, 0, 1)[None])


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = SIMCC_SPLIT_RATIO
                 ) -> tuple[np.ndarray, np.ndarray]:
    """SimCC vectors (..., K, Wx), (..., K, Wy) -> keypoints (..., K, 2) in crop pixels and scores (..., K).
    Location = argmax / split_ratio; score = min(max_x, max_y); a score <= 0 gives location -1 and score 0."""
    simcc_x, simcc_y = np.asarray(simcc_x), np.asarray(simcc_y)
    x = np.argmax(simcc_x, axis=-1).astype(np.float32)
    y = np.argmax(simcc_y, axis=-1).astype(np.float32)
    scores = np.minimum(simcc_x.max(axis=-1), simcc_y.max(axis=-1)).astype(np.float32)
    locs = np.stack([x, y], axis=-1) / split_ratio
    invalid = scores <= 0
    locs[invalid] = -1
    scores[invalid] = 0
    return locs, scores


# --------------------------------------------------------------------------------------------------------------
# COCO-WholeBody 133 -> OpenPose 18 + hands (+ face)
# --------------------------------------------------------------------------------------------------------------
@dataclass
class PoseResult:
    """One person in one frame. Arrays are (K, 3): x / width, y / height, confidence (0 = missing)."""

    body: np.ndarray  # (18, 3) OpenPose order
    hands: list[np.ndarray] | None  # [left (21, 3), right (21, 3)]
    face: np.ndarray | None  # (68, 3)
    box: np.ndarray | None = None  # (4,) xyxy image pixels of the person box used, or None
    box_score: float = 0.0


def _with_confidence(points: np.ndarray, scores: np.ndarray, width: int, height: int, threshold: float) -> np.ndarray:
    out = np.zeros((len(points), 3), dtype=np.float32)
    out[:, 0] = points[:, 0] / width
    out[:, 1] = points[:, 1] / height
    conf = np.clip(scores, 0.0, 1.0)
    conf[scores < threshold] = 0.0
    out[:, 2] = conf
    out[out[:, 2] == 0, :2] = 0.0
    return out


def wholebody_to_openpose(keypoints: np.ndarray, scores: np.ndarray, width: int, height: int,
                          threshold: float = 0.3, hands: bool = True, face: bool = False) -> PoseResult:
    """133 COCO-WholeBody keypoints (133, 2) in image pixels + scores (133,) -> PoseResult (normalised).
    Neck = midpoint of the shoulders with confidence min(both); keypoints under `threshold` become missing."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float32)
    if keypoints.shape[0] != 133 or scores.shape[0] != 133:
        raise ValueError(f"expected 133 whole-body keypoints, got {keypoints.shape} / {scores.shape}")
    body_xy = np.zeros((18, 2))
    body_s = np.zeros((18,), np.float32)
    for op_index, coco_index in enumerate(OPENPOSE_FROM_COCO):
        if coco_index is None:
            body_xy[op_index] = (keypoints[COCO_L_SHOULDER] + keypoints[COCO_R_SHOULDER]) / 2
            body_s[op_index] = min(scores[COCO_L_SHOULDER], scores[COCO_R_SHOULDER])
        else:
            body_xy[op_index] = keypoints[coco_index]
            body_s[op_index] = scores[coco_index]
    body = _with_confidence(body_xy, body_s, width, height, threshold)
    hand_list = None
    if hands:
        hand_list = [_with_confidence(keypoints[part], scores[part], width, height, threshold)
                     for part in (WHOLEBODY_LEFT_HAND, WHOLEBODY_RIGHT_HAND)]
    face_arr = (_with_confidence(keypoints[WHOLEBODY_FACE], scores[WHOLEBODY_FACE], width, height, threshold)
                if face else None)
    return PoseResult(body=body, hands=hand_list, face=face_arr)


def empty_pose(hands: bool = True, face: bool = False) -> PoseResult:
    return PoseResult(body=np.zeros((18, 3), np.float32),
                      hands=[np.zeros((21, 3), np.float32) for _ in range(2)] if hands else None,
                      face=np.zeros((68, 3), np.float32) if face else None)


# --------------------------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------------------------
def _spatial_input_size(session, default_hw: tuple[int, int]) -> tuple[int, int]:
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and all(isinstance(v, int) and v > 0 for v in shape[2:]):
        return int(shape[2]), int(shape[3])
    return default_hw


class DWPose:
    """Single-person DWPose on onnxruntime. ``DWPose(det, pose)(frame_rgb_uint8) -> PoseResult``.

    `det`/`pose` are ONNX paths (see :func:`resolve_model_paths`). `threshold` applies to body, hand and face
    keypoints; `det_threshold` to person boxes. When nothing is detected the whole frame is used as the box (as the
    DWPose reference code does); set `full_frame_fallback=False` to return an empty pose instead.
    """

    def __init__(self, det: str | os.PathLike, pose: str | os.PathLike, *, threshold: float = 0.3,
                 det_threshold: float = 0.3, nms_threshold: float = 0.45, hands: bool = True, face: bool = False,
                 full_frame_fallback: bool = True, providers: Sequence[str] | None = None,
                 threads: int | None = None):
        det_path, pose_path = resolve_model_paths(det, pose)
        self.det_session = create_session(det_path, providers, threads)
        self.pose_session = create_session(pose_path, providers, threads)
        self.det_input_size = _spatial_input_size(self.det_session, DET_INPUT_SIZE)  # (H, W)
        pose_hw = _spatial_input_size(self.pose_session, (POSE_INPUT_SIZE[1], POSE_INPUT_SIZE[0]))
        self.pose_input_size = (pose_hw[1], pose_hw[0])  # (W, H)
        outputs = [o.name for o in self.pose_session.get_outputs()]
        # by name when the export kept them, otherwise in order (x first, as exported by mmpose)
        self._simcc_order = [1, 0] if outputs[:2] == ["simcc_y", "simcc_x"] else [0, 1]
        self.threshold, self.det_threshold, self.nms_threshold = threshold, det_threshold, nms_threshold
        self.hands, self.face, self.full_frame_fallback = hands, face, full_frame_fallback

    def _model_image(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
        return np.ascontiguousarray(frame[..., ::-1]) if INPUT_CHANNEL_ORDER == "bgr" else frame

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes (K, 4) xyxy in frame pixels and scores (K,), best first."""
        image = self._model_image(frame)
        canvas, ratio = letterbox(image, self.det_input_size)
        blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32)
        raw = self.det_session.run(None, {self.det_session.get_inputs()[0].name: blob})[0]
        return detect_people(raw, ratio, self.det_input_size, self.det_threshold, self.nms_threshold)

    def estimate(self, frame: np.ndarray, box: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """133 whole-body keypoints (133, 2) in frame pixels and raw scores (133,) for the person in `box`."""
        image = self._model_image(frame)
        center, scale = box_to_center_scale(box, self.pose_input_size)
        crop = warp_crop(image, center, scale, self.pose_input_size)
        outputs = self.pose_session.run(None, {self.pose_session.get_inputs()[0].name: normalize_crop(crop)})
        simcc_x, simcc_y = outputs[self._simcc_order[0]], outputs[self._simcc_order[1]]
        expected = (self.pose_input_size[0] * SIMCC_SPLIT_RATIO, self.pose_input_size[1] * SIMCC_SPLIT_RATIO)
        if (simcc_x.shape[-1], simcc_y.shape[-1]) != expected:
            raise ValueError(f"pose model SimCC lengths {simcc_x.shape[-1]}, {simcc_y.shape[-1]} do not match "
                             f"input {self.pose_input_size} x split ratio {SIMCC_SPLIT_RATIO}")
        locs, scores = decode_simcc(simcc_x[0], simcc_y[0])
        points = crop_to_image_points(locs, center, scale, self.pose_input_size)
        return points, scores

    def __call__(self, frame: np.ndarray) -> PoseResult:
        height, width = frame.shape[:2]
        boxes, box_scores = self.detect(frame)
        if len(boxes):
            box, box_score = boxes[0], float(box_scores[0])
        elif self.full_frame_fallback:
            box, box_score = np.array([0, 0, width, height], np.float32), 0.0
        else:
            return empty_pose(self.hands, self.face)
        points, scores = self.estimate(frame, box)
        result = wholebody_to_openpose(points, scores, width, height, self.threshold, self.hands, self.face)
        result.box, result.box_score = np.asarray(box, np.float32), box_score
        return result


BACKENDS = ("dwpose",)


def create_estimator(backend: str = "dwpose", **kwargs) -> DWPose:
    """A pose estimator by backend name (only "dwpose" today)."""
    if backend != "dwpose":
        raise ValueError(f"unknown pose backend {backend!r}; available: {', '.join(BACKENDS)}")
    return DWPose(**kwargs)
