"""Pose extraction over a folder of videos: one skeleton mp4 and one keypoints JSON per video.

For every video under `videos_dir` (recursive; relative sub-folders are kept) it writes

- ``OUT/poses/<name>.mp4``: the OpenPose-style skeleton drawn by :func:`data.skeleton.draw_pose` on black, same size,
  fps and frame count as the source;
- ``OUT/keypoints/<name>.json``: the keypoints (:func:`data.skeleton.save_keypoints` format).

Both files are written atomically (marionet.atomic), the JSON last: a video counts as done only when both
exist, so a killed run is resumed by running the same command again. Videos are processed in parallel by `workers`
processes, each with its own onnxruntime sessions; a video that fails is reported at the end and the others go on.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..atomic import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # e.g. reference images, for `pose align`
POSES_DIR = "poses"
KEYPOINTS_DIR = "keypoints"


@dataclass
class EstimatorConfig:
    """What a worker needs to build its own estimator (picklable)."""

    backend: str = "dwpose"
    det: str | None = None
    pose: str | None = None
    threshold: float = 0.3
    det_threshold: float = 0.3
    hands: bool = True
    face: bool = False
    threads: int | None = None
    providers: tuple[str, ...] | None = None

    def create(self):
        from .dwpose import create_estimator

        return create_estimator(self.backend, det=self.det, pose=self.pose, threshold=self.threshold,
                                det_threshold=self.det_threshold, hands=self.hands, face=self.face,
                                threads=self.threads, providers=self.providers)


@dataclass
class ExtractReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (video, error message)
    poses_dir: Path | None = None
    keypoints_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


def find_videos(videos_dir: str | os.PathLike, images: bool = False) -> list[Path]:
    """Video files (and with `images`, image files) under `videos_dir` (recursive, sorted); hidden files (temp
    files) are ignored."""
    extensions = VIDEO_EXTENSIONS + (IMAGE_EXTENSIONS if images else ())
    root = Path(videos_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: videos folder not found")
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in extensions:
            found.append(path)
    return sorted(found)


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def output_paths(video: Path, videos_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """(skeleton mp4 (png for an image), keypoints json) for `video`, keeping its sub-folder relative to
    `videos_dir`."""
    rel = Path(video).relative_to(videos_dir).with_suffix("")
    pose_suffix = ".png" if is_image(video) else ".mp4"
    return out_dir / POSES_DIR / rel.with_suffix(pose_suffix), out_dir / KEYPOINTS_DIR / rel.with_suffix(".json")


def is_done(pose_path: Path, keypoints_path: Path) -> bool:
    return pose_path.is_file() and keypoints_path.is_file()


def _pose_record(result) -> dict:
    return {"body": result.body, "hands": result.hands, "face": result.face}


def extract_video(video: str | os.PathLike, pose_path: str | os.PathLike, keypoints_path: str | os.PathLike,
                  estimator: Callable, threshold: float = 0.3, chunk: int = 16) -> int:
    """Run `estimator` (frame RGB uint8 -> PoseResult) on every frame of `video`; write the skeleton mp4 and then
    the keypoints JSON (each atomically). Returns the number of frames."""
    from .skeleton import draw_pose, save_keypoints
    from .video import VideoError, open_video, write_video

    reader = open_video(video)
    count = len(reader)
    fps = float(reader.get_avg_fps()) or 25.0
    height, width = reader[0].shape[:2]
    records: list[dict] = []

    def skeleton_frames() -> Iterator[np.ndarray]:
        for start in range(0, count, chunk):
            indices = list(range(start, min(count, start + chunk)))
            try:
                frames = reader.get_batch(indices).asnumpy()
            except Exception as error:
                raise VideoError(f"{video}: decoding failed at frames {indices[0]}-{indices[-1]} "
                                 f"({str(error).splitlines()[0][:160]})") from None
            for frame in frames:
                result = estimator(np.ascontiguousarray(frame))
                records.append(_pose_record(result))
                yield draw_pose(result.body, width, height, hands=result.hands, face=result.face,
                                threshold=threshold)

    write_video(pose_path, skeleton_frames(), fps=fps, overwrite=True)
    if len(records) != count:
        raise RuntimeError(f"{video}: decoded {len(records)} frames, expected {count}")
    save_keypoints(keypoints_path, records, width=width, height=height, fps=fps)
    return count


def extract_image(image: str | os.PathLike, pose_path: str | os.PathLike, keypoints_path: str | os.PathLike,
                  estimator: Callable, threshold: float = 0.3) -> int:
    """One still image: skeleton PNG + keypoints JSON (one frame, fps 0), each written atomically. Returns 1."""

    from PIL import Image

    from .skeleton import draw_pose, save_keypoints
    from .video import load_image_rgb

    frame = load_image_rgb(image)
    height, width = frame.shape[:2]
    result = estimator(frame)
    canvas = draw_pose(result.body, width, height, hands=result.hands, face=result.face, threshold=threshold)
    pose_path = Path(pose_path)
    pose_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(pose_path) as temp:
        Image.fromarray(canvas).save(temp, format="PNG")
    save_keypoints(keypoints_path, [_pose_record(result)], width=width, height=height, fps=0.0)
    return 1


# ---------------------------------------------------------------- workers
_WORKER_ESTIMATOR = None
_WORKER_CONFIG: EstimatorConfig | None = None
_WORKER_IS_CHILD = False


def _worker_init(config: EstimatorConfig, child: bool = False) -> None:
    global _WORKER_CONFIG, _WORKER_IS_CHILD
    _WORKER_CONFIG, _WORKER_IS_CHILD = config, child
    if child:
        import signal

        # Ctrl-C is the parent's business (it stops the workers with SIGTERM); SIGTERM unwinds the current video so
        # its temp files are removed, then the worker exits (see _run_one).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _run_one(job: tuple[str, str, str]) -> tuple[str, str | None, int, float]:
    """(video, error or None, frames, seconds). The estimator is built lazily so a failure becomes a report."""
    global _WORKER_ESTIMATOR
    video, pose_path, keypoints_path = job
    start = time.perf_counter()
    try:
        if _WORKER_ESTIMATOR is None:
            _WORKER_ESTIMATOR = _WORKER_CONFIG.create()
        extract = extract_image if is_image(video) else extract_video
        frames = extract(video, pose_path, keypoints_path, _WORKER_ESTIMATOR, threshold=_WORKER_CONFIG.threshold)
        return video, None, frames, time.perf_counter() - start
    except Exception as error:  # reported at the end; the batch goes on
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if message.startswith(f"{video}: "):  # the video error messages already name the file
            message = message[len(video) + 2:]
        return video, f"{type(error).__name__}: {message}", 0, time.perf_counter() - start
    except BaseException:  # stopped (SIGTERM in a worker): the finally blocks have removed the temp files
        if _WORKER_IS_CHILD:
            os._exit(1)
        raise


def extract_videos(videos_dir: str | os.PathLike, out_dir: str | os.PathLike, *, backend: str = "dwpose",
                   det: str | os.PathLike | None = None, pose: str | os.PathLike | None = None,
                   models_dir: str | os.PathLike | None = None, workers: int = 1, hands: bool = True,
                   face: bool = False, threshold: float = 0.3, det_threshold: float = 0.3,
                   overwrite: bool = False, progress: bool = True, images: bool = True,
                   providers: tuple[str, ...] | None = None) -> ExtractReport:
    """Extract poses for every video under `videos_dir` into `out_dir`/poses and `out_dir`/keypoints (with
    `images`, still images too: a skeleton PNG and a one-frame keypoints JSON each, e.g. for reference images).

    Already finished videos are skipped unless `overwrite`. Raises FileNotFoundError (missing folder or ONNX file)
    or ImportError (no onnxruntime) before any work starts; per-video errors land in the report's `failed`.
    """
    global _WORKER_ESTIMATOR
    from .dwpose import import_onnxruntime, resolve_model_paths

    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    videos = find_videos(videos_dir, images=images)
    if backend != "dwpose":
        raise ValueError(f"unknown pose backend {backend!r}; available: dwpose")
    det_path, pose_path = resolve_model_paths(det, pose, models_dir)
    import_onnxruntime()
    workers = max(1, int(workers))
    report = ExtractReport(poses_dir=out_dir / POSES_DIR, keypoints_dir=out_dir / KEYPOINTS_DIR)
    jobs = []
    for video in videos:
        pose_out, kps_out = output_paths(video, videos_dir, out_dir)
        if not overwrite and is_done(pose_out, kps_out):
            report.skipped.append(str(video))
        else:
            jobs.append((str(video), str(pose_out), str(kps_out)))
    if not jobs:
        return report

    workers = min(workers, len(jobs))
    threads = max(1, (os.cpu_count() or 1) // workers)
    config = EstimatorConfig(backend=backend, det=str(det_path), pose=str(pose_path), threshold=threshold,
                             det_threshold=det_threshold, hands=hands, face=face, threads=threads,
                             providers=providers)
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="pose extract", unit="video", disable=not progress)
    try:
        if workers == 1:
            _worker_init(config)
            results = map(_run_one, jobs)
            _consume(results, report, bar)
        else:
            _consume(_run_parallel(jobs, workers, config), report, bar)
    finally:
        bar.close()
        _WORKER_ESTIMATOR = None
    return report


def _run_parallel(jobs, workers: int, config: EstimatorConfig):
    """Yield job results from `workers` spawned processes (fresh interpreters, each creating its own onnxruntime
    sessions). A worker that dies (crash, out of memory) fails its remaining videos instead of hanging the batch."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(config, True))
    try:
        futures = {pool.submit(_run_one, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                result = future.result()
            except BrokenProcessPool:
                result = futures[future][0], "worker process died (crash or out of memory); run again to retry", 0, 0.0
            except Exception as error:  # noqa: BLE001 - e.g. a result that could not be pickled
                result = futures[future][0], f"{type(error).__name__}: {error}", 0, 0.0
            yield result
    except BaseException:  # Ctrl-C or the consumer gave up: stop the workers, do not wait for the queued videos
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)
        raise
    pool.shutdown()


def _consume(results, report: ExtractReport, bar) -> None:
    for video, error, frames, seconds in results:
        if error is None:
            report.done.append(video)
            bar.set_postfix_str(f"{Path(video).name}: {frames} frames, {frames / max(seconds, 1e-9):.1f} fps")
        else:
            report.failed.append((video, error))
        bar.update(1)
