"""The dataset index (meta.json): which video goes with which pose video, validated once, up front.

meta.json is a JSON list of {"video_path", "pose_path", "num_frames", "fps", "width", "height"} and optionally
"video_id" (default: the video's file name without extension). Paths are relative to
the folder holding meta.json, or absolute. The Animate Anyone reproductions' {"video_path", "kps_path"} entries
(kps_path = the pose video) are accepted when reading. `load_index` returns entries with absolute paths.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import write_json

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


def _resolve(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def load_index(path) -> list[dict]:
    """Read a meta.json; every entry gets absolute "video_path" and "pose_path" (other keys kept as they are)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index file not found")
    try:
        entries = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: an index must be a JSON list of entries, got {type(entries).__name__}")
    base = path.parent.resolve()
    result = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "video_path" not in entry or not (
                "pose_path" in entry or "kps_path" in entry):
            raise ValueError(f"{path}: entry {number} needs \"video_path\" and \"pose_path\" (or \"kps_path\")")
        entry = dict(entry)
        entry["pose_path"] = entry.pop("kps_path", None) if "pose_path" not in entry else entry["pose_path"]
        entry.pop("kps_path", None)
        entry["video_path"] = _resolve(base, entry["video_path"])
        entry["pose_path"] = _resolve(base, entry["pose_path"])
        for key in ("keypoints_path",):
            if entry.get(key):
                entry[key] = _resolve(base, entry[key])
        result.append(entry)
    return result


def check_pair(video_path, pose_path, min_frames: int = 1) -> tuple[dict | None, str | None]:
    """(entry, None) for a usable pair, else (None, reason)."""
    from .video import VideoError, video_info

    try:
        frames, fps, width, height = video_info(video_path)
    except VideoError as error:
        return None, str(error)
    try:
        pose_frames, _, pose_width, pose_height = video_info(pose_path)
    except VideoError as error:
        return None, str(error)
    if pose_frames != frames:
        return None, f"{video_path}: {frames} frames but its pose video {pose_path} has {pose_frames}"
    if frames < min_frames:
        return None, f"{video_path}: only {frames} frames (minimum {min_frames})"
    return {"video_path": str(video_path), "pose_path": str(pose_path), "num_frames": frames, "fps": fps,
            "width": width, "height": height}, None


def _find_videos(root: Path, exclude: Path | None = None) -> list[Path]:
    excluded = exclude.resolve() if exclude is not None else None
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        if excluded is not None and (excluded == path.resolve().parent or excluded in path.resolve().parents):
            continue
        if path.is_file():
            found.append(path)
    return sorted(found)


def build_index(videos_dir, poses_dir, out_path, min_frames: int = 1, overwrite: bool = False,
                progress: bool = False) -> tuple[Path, list[dict], list[tuple[str, str]]]:
    """Pair VIDEOS/<sub/name>.<ext> with POSES/<sub/name>.<ext> (searched recursively, hidden files ignored, the
    poses folder skipped if it lies inside the videos folder), validate each pair and write meta.json atomically.

    Returns (meta path, accepted entries, [(video, reason) for rejected ones]). Paths are written relative to the
    meta file's folder when they are below it, absolute otherwise.
    """
    videos_dir, poses_dir, out_path = Path(videos_dir), Path(poses_dir), Path(out_path)
    for folder, what in ((videos_dir, "videos"), (poses_dir, "poses")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: {what} folder not found")
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path}: already exists (pass --overwrite to replace it)")
    videos = _find_videos(videos_dir, exclude=poses_dir)
    if not videos:
        raise ValueError(f"{videos_dir}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    poses = {p.relative_to(poses_dir).with_suffix(""): p for p in _find_videos(poses_dir)}
    accepted, rejected = [], []
    iterator = videos
    if progress:
        from tqdm import tqdm
        iterator = tqdm(videos, desc="index", unit="video")
    base = out_path.parent.resolve()
    for video in iterator:
        relative = video.relative_to(videos_dir).with_suffix("")
        pose = poses.get(relative)
        if pose is None:
            rejected.append((str(video), f"no pose video named {relative}.* in {poses_dir}"))
            continue
        entry, reason = check_pair(video, pose, min_frames)
        if entry is None:
            rejected.append((str(video), reason))
            continue
        entry["video_id"] = relative.as_posix()
        for key in ("video_path", "pose_path"):
            absolute = Path(entry[key]).resolve()
            entry[key] = os.path.relpath(absolute, base) if base in absolute.parents else str(absolute)
        accepted.append(entry)
    write_index(out_path, accepted, overwrite=True)
    return out_path, accepted, rejected


def write_index(path, entries: list[dict], overwrite: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists")
    write_json(path, entries)
    return path
