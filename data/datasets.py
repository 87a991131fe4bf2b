"""Map-style training datasets for stage 1 (frame + pose + reference) and stage 2 (clip + poses + reference).

Frames are decoded on demand with decord, so no video is held whole in memory unless `decode_cache_mb` allows it
(small data sets: decoded videos kept up to that size, `data.DecodedCache`). All randomness of an item comes
from a numpy Generator seeded by (seed, epoch, index): the same item is the same sample in any process, after a
resume, and in shard mode (data/shards.py shares `build_sample`). A bad video makes `__getitem__` return None with a
warning naming the file; `collate_skipping` drops such samples instead of killing training.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .video import DecodedCache, VideoError, open_video

logger = logging.getLogger("marionet.data")


class BadSample(Exception):
    """A sample that cannot be used (the message names the file and the problem)."""


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index), 0xDA7A])


def as_size(image_size) -> tuple[int, int]:
    """int or (H, W) -> (H, W)."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = (int(v) for v in image_size)
    return height, width


def load_clip_processor(processor):
    """A CLIPImageProcessor from a local folder (e.g. image_encoder/feature_extractor), or the instance given."""
    if processor is None or not isinstance(processor, (str, Path)):
        return processor
    from ..models.loading import clip_image_processor_class, offline_kwargs

    folder = Path(processor)
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no preprocessor_config.json (expected a CLIP feature_extractor folder)")
    return clip_image_processor_class().from_pretrained(str(folder), **offline_kwargs())


# ---------------------------------------------------------------- sampling shared by folder and shard modes

def stage1_frames(rng: np.random.Generator, num_frames: int, min_gap: int) -> tuple[int, int]:
    """(target, reference) frame indices at least min_gap apart, or as far apart as the video allows."""
    target = int(rng.integers(num_frames))
    candidates = [i for i in (range(0, target - min_gap + 1), range(target + min_gap, num_frames)) if len(i)]
    if not candidates:
        return target, (0 if target >= num_frames - 1 - target else num_frames - 1)
    sizes = np.array([len(c) for c in candidates], np.float64)
    chosen = candidates[int(rng.choice(len(candidates), p=sizes / sizes.sum()))]
    return target, int(chosen[int(rng.integers(len(chosen)))])


def stage2_frames(rng: np.random.Generator, num_frames: int, n_frames: int, stride: int) -> tuple[list[int], int]:
    span = (n_frames - 1) * stride + 1
    if num_frames < span:
        raise BadSample(f"has {num_frames} frames, fewer than the {span} a clip of {n_frames} x stride {stride} needs")
    start = int(rng.integers(num_frames - span + 1))
    return [start + i * stride for i in range(n_frames)], int(rng.integers(num_frames))


def crop_box(rng: np.random.Generator, width: int, height: int, out_h: int, out_w: int,
             max_zoom: float = 1.1) -> tuple[float, float, float, float]:
    """A random box with the output's aspect ratio, as large as fits in the frame divided by a zoom in [1, max_zoom]."""
    aspect = out_w / out_h
    if width / height > aspect:
        box_h, box_w = float(height), height * aspect
    else:
        box_w, box_h = float(width), width / aspect
    zoom = rng.uniform(1.0, max_zoom) if max_zoom > 1.0 else 1.0
    box_w, box_h = box_w / zoom, box_h / zoom
    x0 = rng.uniform(0, width - box_w)
    y0 = rng.uniform(0, height - box_h)
    return x0, y0, x0 + box_w, y0 + box_h


def crop_resize(frame: np.ndarray, box, out_h: int, out_w: int) -> np.ndarray:
    """Crop `box` from a uint8 (H, W, 3) frame and resize it to (out_h, out_w); small frames are scaled up."""
    image = Image.fromarray(frame)
    return np.asarray(image.resize((out_w, out_h), Image.BILINEAR, box=box))


def to_signed(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    tensor = torch.from_numpy(np.array(frames, dtype=np.uint8)).movedim(-1, -3).contiguous()
    return tensor.float().div_(127.5).sub_(1.0)


def to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(frames, dtype=np.uint8)).movedim(-1, -3).contiguous().float().div_(255.0)


def clip_pixels(processor, frame: np.ndarray) -> torch.Tensor:
    """The CLIP-normalised (3, h, w) float32 tensor of a uint8 frame (the whole, uncropped reference frame)."""
    values = processor(images=frame, return_tensors="np")["pixel_values"][0]
    return torch.from_numpy(np.asarray(values, np.float32))


class SampleSpec:
    """What a sample looks like: stage, output size, frame selection and the CLIP processor."""

    def __init__(self, stage: int, image_size, clip_processor, min_gap: int = 30, n_frames: int = 1,
                 frame_stride: int = 1, max_zoom: float = 1.1):
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        if n_frames < 1 or frame_stride < 1 or min_gap < 0:
            raise ValueError(f"n_frames and frame_stride must be >= 1 and min_gap >= 0 "
                             f"(got {n_frames}, {frame_stride}, {min_gap})")
        self.stage = stage
        self.height, self.width = as_size(image_size)
        self.processor = load_clip_processor(clip_processor)
        self.min_gap, self.n_frames, self.frame_stride, self.max_zoom = min_gap, n_frames, frame_stride, max_zoom


def build_sample(spec: SampleSpec, video, pose, rng: np.random.Generator, video_id: str) -> dict:
    """One training sample from a video and its pose video (paths, bytes or open readers).

    Raises BadSample (naming the file) when the pair cannot be used.
    """
    video_name = video if isinstance(video, (str, Path)) else getattr(video, "name", video_id)
    try:
        video_reader = video if hasattr(video, "get_batch") else open_video(video, name=str(video_name))
        pose_reader = pose if hasattr(pose, "get_batch") else open_video(
            pose, name=str(pose) if isinstance(pose, (str, Path)) else f"{video_id} (pose)")
    except VideoError as error:
        raise BadSample(str(error)) from None
    count = len(video_reader)
    if len(pose_reader) != count:
        raise BadSample(f"{video_name}: {count} frames but its pose video has {len(pose_reader)}")
    try:
        if spec.stage == 1:
            target, reference = stage1_frames(rng, count, spec.min_gap)
            indices = [target]
        else:
            indices, reference = stage2_frames(rng, count, spec.n_frames, spec.frame_stride)
    except BadSample as error:
        raise BadSample(f"{video_name}: {error}") from None
    try:
        frames = np.asarray(video_reader.get_batch(sorted(set(indices + [reference]))))
        poses = np.asarray(pose_reader.get_batch(indices))
    except VideoError as error:
        raise BadSample(str(error)) from None
    by_index = dict(zip(sorted(set(indices + [reference])), frames))
    frame_h, frame_w = frames.shape[1:3]
    pose_h, pose_w = poses.shape[1:3]

    box = crop_box(rng, frame_w, frame_h, spec.height, spec.width, spec.max_zoom)
    # The same crop for target and pose, scaled to the pose video's size if it differs.
    pose_box = (box[0] * pose_w / frame_w, box[1] * pose_h / frame_h, box[2] * pose_w / frame_w,
                box[3] * pose_h / frame_h)
    targets = np.stack([crop_resize(by_index[i], box, spec.height, spec.width) for i in indices])
    pose_out = np.stack([crop_resize(p, pose_box, spec.height, spec.width) for p in poses])
    ref_frame = by_index[reference]
    ref_box = crop_box(rng, frame_w, frame_h, spec.height, spec.width, spec.max_zoom)
    sample = {
        "target": to_signed(targets[0] if spec.stage == 1 else targets),
        "pose": to_unit(pose_out[0] if spec.stage == 1 else pose_out),
        "reference": to_signed(crop_resize(ref_frame, ref_box, spec.height, spec.width)),
        "video_id": str(video_id),
    }
    if spec.processor is not None:
        sample["clip_image"] = clip_pixels(spec.processor, ref_frame)
    return sample


def resolve_source(source) -> list[dict]:
    """meta.json path or a list of entries -> entries with absolute video/pose paths."""
    from .index import load_index

    if isinstance(source, (str, Path)):
        entries = load_index(source)
        label = str(source)
    else:
        entries, label = [], "dataset entries"
        for number, entry in enumerate(source):
            entry = dict(entry)
            if "pose_path" not in entry and "kps_path" in entry:
                entry["pose_path"] = entry.pop("kps_path")
            if "video_path" not in entry or "pose_path" not in entry:
                raise ValueError(f"entry {number} needs \"video_path\" and \"pose_path\", got {sorted(entry)}")
            entries.append(entry)
    if not entries:
        raise ValueError(f"{label}: no videos to train on")
    return entries


def video_id_of(entry: dict) -> str:
    return entry.get("video_id") or Path(entry["video_path"]).stem


# ---------------------------------------------------------------- datasets

class _FolderDataset(torch.utils.data.Dataset):
    def __init__(self, source, spec: SampleSpec, seed: int = 0, decode_cache_mb: float = 0):
        self.entries = resolve_source(source)
        self.spec = spec
        self.seed = int(seed)
        self.epoch = 0
        self.decoded = DecodedCache(decode_cache_mb)  # per process (each DataLoader worker has its own)

    def set_epoch(self, epoch: int) -> None:
        """Change every item's randomness; call before each epoch (with persistent_workers=False)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        entry = self.entries[index]
        try:
            try:
                video, pose = self.decoded.get(entry["video_path"]), self.decoded.get(entry["pose_path"])
            except VideoError as error:
                raise BadSample(str(error)) from None
            return build_sample(self.spec, video, pose, item_rng(self.seed, self.epoch, index), video_id_of(entry))
        except BadSample as error:
            logger.warning("skipping sample %d: %s", index, error)
        except (OSError, ValueError, RuntimeError) as error:  # anything else one odd file can throw
            logger.warning("skipping sample %d (%s): %s: %s", index, entry["video_path"], type(error).__name__, error)
        return None


class Stage1Dataset(_FolderDataset):
    """Items: {"target" (3,H,W) [-1,1], "pose" (3,H,W) [0,1], "reference" (3,H,W) [-1,1], "clip_image", "video_id"}.

    The reference is at least `min_gap` frames from the target (the farthest frame when the video is shorter).
    """

    def __init__(self, source, image_size, clip_processor, min_gap: int = 30, seed: int = 0, max_zoom: float = 1.1,
                 decode_cache_mb: float = 0):
        super().__init__(source, SampleSpec(1, image_size, clip_processor, min_gap=min_gap, max_zoom=max_zoom), seed,
                         decode_cache_mb)


class Stage2Dataset(_FolderDataset):
    """Items: {"target" (F,3,H,W) [-1,1], "pose" (F,3,H,W) [0,1], "reference", "clip_image", "video_id"}."""

    def __init__(self, source, image_size, n_frames: int, frame_stride: int, clip_processor, seed: int = 0,
                 max_zoom: float = 1.1, decode_cache_mb: float = 0):
        super().__init__(source, SampleSpec(2, image_size, clip_processor, n_frames=n_frames,
                                            frame_stride=frame_stride, max_zoom=max_zoom), seed, decode_cache_mb)


def collate_skipping(samples) -> dict | None:
    """Stack the good samples of a batch (None entries are bad ones); adds "num_skipped". None if all were bad."""
    good = [s for s in samples if s is not None]
    if not good:
        return None
    batch = {}
    for key in good[0]:
        values = [s[key] for s in good]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    batch["num_skipped"] = len(samples) - len(good)
    return batch
