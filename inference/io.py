"""Inputs and outputs of inference: reference image, pose sequence, sizes, and the written mp4 / GIF / png files.

Inputs may be paths or in-memory images; everything becomes uint8 (H, W, 3) RGB arrays here, so the pipeline
deals with one format. Errors name the file and the problem (ValueError / FileNotFoundError, turned into one-line
messages by the CLI).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def as_rgb_array(image, what: str = "image") -> np.ndarray:
    """A path, PIL image, (H, W[, 3|4]) array or (3, H, W) float tensor in [0, 1] -> uint8 (H, W, 3)."""
    if isinstance(image, (str, os.PathLike)):
        from ..data.video import load_image_rgb

        return load_image_rgb(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if hasattr(image, "detach"):  # torch tensor (3, H, W) in [0, 1]
        image = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0
        return np.round(image).astype(np.uint8)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"{what}: expected an (H, W, 3) RGB image, got shape {array.shape}")
    array = array[:, :, :3]
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
            array = array * 255.0
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def load_pose_frames(source) -> tuple[np.ndarray, float | None]:
    """A pose sequence -> (uint8 (F, H, W, 3), fps or None).

    source: a video path, an image path (one frame), a folder of images (sorted by name), a (F, H, W, 3) array,
    one (H, W, 3) array or PIL image, or a list of images. Zero frames is an error.
    """
    fps = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise ValueError(f"{path}: pose folder holds no images")
            frames = np.stack(_same_size([as_rgb_array(p) for p in files], str(path)))
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            frames = as_rgb_array(path)[None]
        else:
            from ..data.video import read_video, video_info

            _, fps, _, _ = video_info(path)
            frames = read_video(path)
    elif (isinstance(source, np.ndarray) and source.ndim == 3) or hasattr(source, "convert"):  # one image
        frames = as_rgb_array(source, "pose image")[None]
    elif isinstance(source, np.ndarray) and source.ndim == 4:
        frames = np.stack([as_rgb_array(frame, "pose frame") for frame in source]) if len(source) else source
    elif hasattr(source, "ndim") and source.ndim == 4:  # torch (F, 3, H, W) in [0, 1]
        frames = np.stack([as_rgb_array(frame, "pose frame") for frame in source]) if len(source) else np.zeros(
            (0, 1, 1, 3), np.uint8)
    else:
        frames = list(source)
        frames = np.stack(_same_size([as_rgb_array(f, f"pose frame {i}") for i, f in enumerate(frames)],
                                     "pose frames")) if frames else np.zeros((0, 1, 1, 3), np.uint8)
    if len(frames) == 0:
        raise ValueError(f"{source if isinstance(source, (str, os.PathLike)) else 'pose sequence'}: has zero frames")
    return frames, fps


def _same_size(frames: list[np.ndarray], what: str) -> list[np.ndarray]:
    sizes = {frame.shape for frame in frames}
    if len(sizes) > 1:
        raise ValueError(f"{what}: pose frames differ in size ({sorted(sizes)[:3]})")
    return frames


def round_size(width: int, height: int, multiple: int = 8) -> tuple[int, int, bool]:
    """Round (width, height) down to multiples of `multiple` (at least one multiple); says whether it changed."""
    new_w = max(multiple, int(width) // multiple * multiple)
    new_h = max(multiple, int(height) // multiple * multiple)
    return new_w, new_h, (new_w, new_h) != (int(width), int(height))


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC), dtype=np.uint8)


def fit_reference(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop `image` to the output's aspect ratio, then resize: training crops the reference the same way
    (an aspect-preserving box), so a portrait photo driving a landscape video is cropped, never squashed."""
    from PIL import Image

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if w * height > width * h:  # wider than the output: crop the sides
        box_w, box_h = h * width / height, float(h)
    else:
        box_w, box_h = float(w), w * height / width
    x0, y0 = (w - box_w) / 2, (h - box_h) / 2
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC, box=(x0, y0, x0 + box_w, y0 + box_h)),
                      dtype=np.uint8)


def side_by_side(reference: np.ndarray, poses: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """(F, H, 3W, 3): reference | pose | result for each frame, all at the result's size."""
    height, width = frames.shape[1:3]
    ref = resize(reference, width, height)
    return np.stack([np.concatenate([ref, resize(pose, width, height), frame], axis=1)
                     for pose, frame in zip(poses, frames)])


def write_outputs(out, frames: np.ndarray, fps: float, overwrite: bool = False, gif: bool = False,
                  comparison: np.ndarray | None = None, lossless: bool = False) -> list[Path]:
    """Write the result (mp4, or png for an image path) and optional GIF / side-by-side mp4 beside it
    (lossless: x264's lossless mode for the mp4s, bit-exact frames after the yuv420p conversion).

    Every target is checked before anything is written, so a refused overwrite leaves no partial set of files.
    """
    from ..data.video import write_gif, write_video

    out = Path(out)
    image_out = out.suffix.lower() in IMAGE_EXTENSIONS and out.suffix.lower() != ".gif"
    targets = [out]
    if gif:
        targets.append(out.with_suffix(".gif"))
    if comparison is not None:
        targets.append(out.with_name(out.stem + "_side_by_side" + (".png" if image_out else ".mp4")))
    if not overwrite:
        existing = [str(p) for p in targets if p.exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} already exist(s) (use --overwrite to replace)")
    written = []
    if image_out:
        if len(frames) != 1:
            raise ValueError(f"{out}: an image output takes one frame, got {len(frames)} (use .mp4)")
        written.append(_write_png(out, frames[0]))
    elif out.suffix.lower() == ".gif":
        written.append(write_gif(out, frames, fps, overwrite=True))
    else:
        written.append(write_video(out, frames, fps, overwrite=True, lossless=lossless))
    if gif and targets[1] != out:
        written.append(write_gif(targets[1], frames, fps, overwrite=True))
    if comparison is not None:
        target = targets[-1]
        written.append(_write_png(target, comparison[0]) if image_out else
                       write_video(target, comparison, fps, overwrite=True, lossless=lossless))
    return written


def _write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    from ..atomic import atomic_path

    with atomic_path(path, overwrite=True) as temp:
        Image.fromarray(image).save(temp, format=path.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    return path
