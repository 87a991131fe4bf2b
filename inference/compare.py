"""`marionet compare`: render held-out videos with several methods and score them against the ground truth.

For each video the reference is one of its frames (`ref_frame`), the driving poses are the video's own skeleton
frames and the ground truth is the video itself; every method renders the same frames from the same reference,
poses, seed and step count. `run_comparison` returns the report dict (also written as report.json, next to
report.md, plots, grids and side-by-side videos; see inference/report.py).

Methods are plug-ins: anything with a `name` and `render(reference, poses, steps, seed) -> frames` (uint8 arrays:
reference (H, W, 3), poses and result (F, H, W, 3)); a method with `uses_reference_pose = True` also gets the
reference frame's own skeleton as `render(..., reference_pose=...)`. On the command line a method is `NAME=SPEC` (see
`SPEC_HELP`); `register_method_kind` adds new kinds.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from ..atomic import atomic_folder
from . import metrics as M
from . import speed as speed_settings
from .compare_cli import SPEC_HELP

class CompareError(ValueError):
    """Bad input to a comparison (data, method spec, settings): the message names the file or the spec."""


# ---------------------------------------------------------------- methods

@runtime_checkable
class Method(Protocol):
    name: str

    def render(self, reference: np.ndarray, poses: np.ndarray, steps: int, seed: int) -> np.ndarray:
        """reference uint8 (H, W, 3), poses uint8 (F, H, W, 3) -> uint8 (F, H, W, 3)."""


@dataclass
class MethodSpec:
    name: str
    kind: str
    options: dict = field(default_factory=dict)
    text: str = ""


MethodFactory = Callable[[MethodSpec, dict], Method]
METHOD_KINDS: dict[str, MethodFactory] = {}


def register_method_kind(kind: str, factory: MethodFactory) -> None:
    """Make `KIND:...` specs build methods with `factory(spec, context)` -> a Method named `spec.name`;
    context holds "device" and "speed" (the comparison-wide `Speed`, which SPEC options override)."""
    METHOD_KINDS[kind] = factory


def parse_method(text: str) -> MethodSpec:
    """'NAME=KIND:k=v,k=v' or 'NAME=MODEL_DIR' -> MethodSpec (see SPEC_HELP)."""
    name, sep, spec = str(text).partition("=")
    name = name.strip()
    if not sep or not name or not spec:
        raise CompareError(f"method {text!r}: expected NAME=SPEC\n{SPEC_HELP}")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise CompareError(f"method {text!r}: the name {name!r} may only use letters, digits, '-', '_' and '.'")
    kind, colon, rest = spec.partition(":")
    if not colon or kind not in METHOD_KINDS:
        if colon and "=" in rest and not os.path.exists(spec):
            raise CompareError(f"method {text!r}: unknown kind {kind!r} (known: {', '.join(sorted(METHOD_KINDS))})")
        return MethodSpec(name, "trained", {"model": spec}, text)
    options = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise CompareError(f"method {text!r}: option {item!r} is not KEY=VALUE")
        if key in options:
            raise CompareError(f"method {text!r}: option {key!r} given twice")
        options[key.strip()] = value.strip()
    return MethodSpec(name, kind, options, text)


def _options(spec: MethodSpec, required: tuple, optional: tuple = ("guidance",)) -> dict:
    optional = tuple(optional) + speed_settings.SPEC_OPTIONS
    unknown = sorted(set(spec.options) - set(required) - set(optional))
    missing = [key for key in required if key not in spec.options]
    if unknown or missing:
        problem = f"unknown option {unknown[0]!r}" if unknown else f"missing option {missing[0]!r}"
        raise CompareError(f"method {spec.text or spec.name!r}: {problem} for kind {spec.kind!r}\n{SPEC_HELP}")
    options = dict(spec.options)
    if "guidance" in options:
        try:
            options["guidance"] = float(options["guidance"])
        except ValueError:
            raise CompareError(f"method {spec.text!r}: guidance must be a number, "
                               f"got {options['guidance']!r}") from None
    return options


def _speed(spec: MethodSpec, options: dict, context: dict) -> speed_settings.Speed:
    """The method's solver, step cache and step count: the comparison's, with the SPEC's options on top."""
    try:
        return speed_settings.from_options(options, context.get("speed") or speed_settings.Speed())
    except ValueError as error:
        raise CompareError(f"method {spec.text or spec.name!r}: {error}") from None


@dataclass
class PipelineMethod:
    """A method backed by a pipeline loaded once (`load()`, timed apart from rendering) and released afterwards;
    `call(pipe, reference, poses, steps, seed)` renders with the method's `speed` (solver, step cache; its steps,
    when set, replace the comparison's). `settings` go into the report."""
    name: str
    load: Callable
    call: Callable
    settings: dict = field(default_factory=dict)
    pipe: object = None
    speed: speed_settings.Speed | None = None
    uses_reference_pose: bool = False  # True: `call` takes reference_pose= (the reference frame's skeleton)

    def prepare(self) -> None:
        if self.pipe is None:
            self.pipe = self.load()
            if self.speed is not None:
                try:
                    speed_settings.apply(self.pipe, self.speed)
                except ValueError as error:  # e.g. more step-cache skips than this UNet has
                    raise CompareError(f"method {self.name}: {error}") from None

    def release(self) -> None:
        self.pipe = None

    def render(self, reference, poses, steps, seed, **extra):
        self.prepare()
        if self.speed is not None and self.speed.steps is not None:
            steps = self.speed.steps
        return self.call(self.pipe, reference, poses, steps, seed, **extra)


def _to_device(pipe, context: dict):
    if context.get("device"):
        pipe.to(context["device"])
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def _trained(spec: MethodSpec, context: dict, pose_only: bool = False) -> Method:
    options = _options(spec, ("model",), optional=() if pose_only else ("guidance",))
    speed = _speed(spec, options, context)
    from ..models.loading import require_dir

    model = require_dir(options["model"], f"method {spec.name}: model folder", ("model_index.json",))
    # pose-only: reference guidance scale 0 keeps exactly the unconditional row of the guidance batch, i.e. the
    # model's own reference-dropped path (no reference tokens, zero CLIP token) with the pose kept.
    guidance = 0.0 if pose_only else options.get("guidance", 3.5)

    def load():
        from .pipeline import PoseToVideoPipeline

        return _to_device(PoseToVideoPipeline.from_pretrained(model), context)

    def call(pipe, reference, poses, steps, seed):
        from .pipeline import render_video

        return render_video(pipe, reference, poses, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                            height=poses.shape[1], width=poses.shape[2])

    settings = {"kind": spec.kind, "model": str(model), "guidance": guidance, **speed.as_dict()}
    return PipelineMethod(spec.name, load, call, settings, speed=speed)


def _zero_shot(spec: MethodSpec, context: dict) -> Method:
    stock = "model" not in spec.options
    switches = ("temperature", "layers", "source_noise", "swap_steps", "swap", "source_pose")
    if stock:
        options = _options(spec, ("base", "controlnet", "ip_adapter", "image_encoder"), ("guidance",) + switches)
    else:
        options = _options(spec, ("model",), ("guidance",) + switches)
    guidance = options.get("guidance", 1.0)
    method_options = _zero_shot_options(spec, options)
    source_pose = _switch(spec, options, "source_pose", False)
    speed = _speed(spec, options, context)
    from ..models.loading import require_dir, require_file

    what = f"method {spec.name}"
    if stock:  # fail before any rendering starts, naming the missing part
        require_dir(options["base"], f"{what}: SD1.5 base folder", ())
        require_dir(options["controlnet"], f"{what}: ControlNet folder")
        require_file(options["ip_adapter"], f"{what}: IP-Adapter weights")
        require_dir(options["image_encoder"], f"{what}: image encoder folder")
    else:
        require_dir(options["model"], f"{what}: model folder", ())

    def load():
        from .zero_shot import ZeroShotPoseTransferPipeline as Pipe

        if stock:
            pipe = Pipe.from_stock(options["base"], options["controlnet"], ip_adapter=options["ip_adapter"],
                                   image_encoder_dir=options["image_encoder"])
        else:
            pipe = Pipe.from_model_folder(options["model"])
        return _to_device(pipe, context)

    def call(pipe, reference, poses, steps, seed, reference_pose=None):
        from .zero_shot import render_zero_shot

        return render_zero_shot(pipe, reference, poses, num_inference_steps=steps, seed=seed,
                                guidance_scale=guidance, options=method_options, source_pose=reference_pose)

    if stock:
        backbone = "sd15"
    else:
        from ..models.animator import has_reference_net

        backbone = "trained" if has_reference_net(options["model"]) else "stock model folder"
    settings = {"kind": spec.kind, "backbone": backbone, **options, "guidance": guidance,
                "source_pose": source_pose, **speed.as_dict()}
    return PipelineMethod(spec.name, load, call, settings, speed=speed, uses_reference_pose=source_pose)


def parse_on_off(text) -> bool:
    """'on' / 'off' (or true/false, yes/no, 1/0) -> bool; ValueError otherwise."""
    value = str(text).strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"{text!r} is not on or off")


def _switch(spec: MethodSpec, options: dict, key: str, default: bool) -> bool:
    """An on/off SPEC option."""
    try:
        return parse_on_off(options.get(key, default))
    except ValueError:
        raise CompareError(f"method {spec.text or spec.name!r}: {key} must be on or off, "
                           f"got {options[key]!r}") from None


def _zero_shot_options(spec: MethodSpec, options: dict):
    """The method's switches from a SPEC (defaults: the full method as the study ran it)."""
    import dataclasses

    from .zero_shot import ZeroShotOptions, parse_swap_steps

    chosen = {}
    try:
        if "temperature" in options:
            chosen["temperature"] = float(options["temperature"])
        if "layers" in options:
            chosen["swap_layers"] = options["layers"].replace(";", ",")
        if "source_noise" in options:
            chosen["source_noise"] = options["source_noise"]
        if "swap_steps" in options:
            chosen["swap_steps"] = parse_swap_steps(options["swap_steps"])
        if "swap" in options:
            chosen["swap"] = _switch(spec, options, "swap", True)
        return dataclasses.replace(ZeroShotOptions(), **chosen).validate()
    except ValueError as error:
        raise CompareError(f"method {spec.text or spec.name!r}: {error}") from None


register_method_kind("trained", _trained)
register_method_kind("pose-only", lambda spec, context: _trained(spec, context, pose_only=True))
register_method_kind("zero-shot", _zero_shot)


def build_method(spec: MethodSpec | str, context: dict | None = None) -> Method:
    spec = parse_method(spec) if isinstance(spec, str) else spec
    return METHOD_KINDS[spec.kind](spec, context or {})


# ---------------------------------------------------------------- data

@dataclass
class Clip:
    """One held-out video: the reference frame, its driving poses and its ground truth, all uint8 and one size."""
    video_id: str
    reference: np.ndarray
    poses: np.ndarray
    truth: np.ndarray
    fps: float
    source: str
    ref_frame: int
    reference_pose: np.ndarray | None = None  # the reference frame's skeleton, (H, W, 3)


def parse_size(text) -> tuple[int, int] | None:
    """'WxH' (or one number for a square) -> (width, height)."""
    if text is None or isinstance(text, tuple):
        return text
    parts = str(text).lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        width = height = 0
    if width < 1 or height < 1:
        raise CompareError(f"size {text!r}: expected WxH, e.g. 64x64")
    return width, height


def _resize(frames: np.ndarray, size) -> np.ndarray:
    if size is None or (frames.shape[2], frames.shape[1]) == tuple(size):
        return frames
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize(tuple(size), Image.BILINEAR)) for f in frames])


def _sources(data) -> list[tuple[str, object, object, str]]:
    """(video_id, video source, pose source, label) for a meta.json or WebDataset shards (folder, manifest, tar)."""
    path = Path(str(data))
    if path.suffix == ".json" and path.name != "manifest.json":
        from ..data.datasets import video_id_of
        from ..data.index import load_index

        try:
            entries = load_index(path)
        except (FileNotFoundError, ValueError) as error:
            raise CompareError(str(error)) from None
        return [(video_id_of(e), e["video_path"], e["pose_path"], e["video_path"]) for e in entries]
    import json

    from ..data.shards import expand_urls, iter_tar_samples

    try:
        urls = expand_urls(str(data))
    except (FileNotFoundError, ValueError) as error:
        raise CompareError(f"{data}: {error}") from None
    found, stats = [], {}
    for url in urls:
        if "://" not in url and not Path(url).is_file():
            raise CompareError(f"{url}: shard not found")
        for raw in iter_tar_samples(url, stats):
            if "video.mp4" not in raw or "pose.mp4" not in raw:
                continue
            info = json.loads(raw.get("json", b"{}") or b"{}")
            label = f"{url}:{raw['__key__']}"
            found.append((info.get("video_id") or raw["__key__"], raw["video.mp4"], raw["pose.mp4"], label))
    if not found:
        raise CompareError(f"{data}: no samples found (expected a meta.json or WebDataset shards)")
    return found


def load_clips(data, videos: int | None = None, frames: int | None = None, size=None,
               ref_frame: int = 0) -> list[Clip]:
    """The first `videos` videos of `data` (a meta.json or shards), each cut to its first `frames` frames."""
    from ..data.video import VideoError, open_video, read_video

    size = parse_size(size)
    clips = []
    for video_id, video_src, pose_src, label in _sources(data)[:videos]:
        try:
            reader = open_video(video_src, label)
            count, fps = len(reader), float(reader.get_avg_fps())
            del reader
            pose_count = len(open_video(pose_src, f"{label} (poses)"))
            usable = min(count, pose_count, frames or count)
            if not 0 <= ref_frame < count:
                raise CompareError(f"{label}: reference frame {ref_frame} is outside its {count} frames")
            wanted = sorted(set(range(usable)) | {ref_frame})
            truth_all = read_video(video_src, wanted, label)
            pose_wanted = [i for i in wanted if i < pose_count]  # the reference's skeleton too, when there is one
            poses_all = read_video(pose_src, pose_wanted, f"{label} (poses)")
        except VideoError as error:
            raise CompareError(str(error)) from None
        reference = truth_all[wanted.index(ref_frame)]
        truth = truth_all[[wanted.index(i) for i in range(usable)]]
        if poses_all.shape[1:3] != truth.shape[1:3] and size is None:
            poses_all = _resize(poses_all, (truth.shape[2], truth.shape[1]))
        poses_all = _resize(poses_all, size)
        poses = poses_all[[pose_wanted.index(i) for i in range(usable)]]
        reference_pose = poses_all[pose_wanted.index(ref_frame)] if ref_frame in pose_wanted else None
        fps = fps if math.isfinite(fps) and fps > 0 else 12.0
        clips.append(Clip(str(video_id), _resize(reference[None], size)[0], poses, _resize(truth, size), fps, label,
                          ref_frame, reference_pose))
    if not clips:
        raise CompareError(f"{data}: no videos to compare")
    seen: dict[str, int] = {}
    for clip in clips:  # report keys and file names must be unique
        seen[clip.video_id] = seen.get(clip.video_id, 0) + 1
        if seen[clip.video_id] > 1:
            clip.video_id = f"{clip.video_id}_{seen[clip.video_id]}"
    return clips


# ---------------------------------------------------------------- the comparison

def _render_checked(method: Method, clip: Clip, steps: int, seed: int) -> tuple[np.ndarray, bool]:
    extra = {"reference_pose": clip.reference_pose} if getattr(method, "uses_reference_pose", False) else {}
    if extra and clip.reference_pose is None:
        raise CompareError(f"method {method.name} needs the reference frame's skeleton, which video {clip.video_id} "
                           "does not have")
    try:
        frames = np.asarray(method.render(clip.reference, clip.poses, steps, seed, **extra))
    except ValueError as error:  # the pipelines' input errors; name the method and the video
        raise CompareError(f"method {method.name}, video {clip.video_id}: {error}") from error
    truth = clip.truth
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) != len(truth):
        raise CompareError(f"method {method.name}: rendered {frames.dtype} {frames.shape} for video {clip.video_id}, "
                           f"expected uint8 {truth.shape}")
    if frames.shape != truth.shape:  # a model that renders at its own resolution is scored at the data's
        return _resize(frames, (truth.shape[2], truth.shape[1])), True
    return frames, False


def run_comparison(data, methods, out_dir, videos: int | None = None, frames: int | None = None, size=None,
                   steps: int = 20, seed: int = 0, ref_frame: int = 0, lpips=None, fvd=None, device=None,
                   overwrite: bool = False, progress: bool = True, grid_frames: int = 8,
                   speed: speed_settings.Speed | None = None, claims=()) -> dict:
    """Render every clip with every method, score it, and write the report folder `out_dir`; returns the report.

    data: a meta.json or shards (or a list of `Clip`s); methods: `Method` objects and/or 'NAME=SPEC' strings;
    size: 'WxH' or (w, h) to resize all frames (default: the videos' own size); lpips / fvd: local weight paths
    (see inference.metrics.load_lpips / load_i3d) or None, in which case the report says they were not computed.
    speed: the solver and step cache of every SPEC-built method (default DDIM, no caching); SPECs may override it.
    claims: `report.Claim`s (orderings between methods) checked on paired per-video differences.
    """
    from . import report as R

    out_dir = Path(out_dir)
    if steps < 1:
        raise CompareError(f"steps must be >= 1, got {steps}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (use --overwrite to replace it)")
    clips = data if isinstance(data, list) and data and isinstance(data[0], Clip) else load_clips(
        data, videos, frames, size, ref_frame)
    context = {"device": device, "speed": speed}
    built = [build_method(m, context) if isinstance(m, (str, MethodSpec)) else m for m in methods]
    for method in built:
        if not isinstance(method, Method):
            raise CompareError(f"{method!r} is not a method (needs a `name` and `render(reference, poses, steps, "
                               "seed)`)")
    names = [m.name for m in built]
    if not built:
        raise CompareError("no methods to compare (give at least one --method NAME=SPEC)")
    if len(set(names)) != len(names):
        raise CompareError(f"method names must be unique, got {names}")
    unknown = sorted({n for c in claims for n in (c.better, c.worse)} - set(names))
    if unknown:
        raise CompareError(f"claims name methods that are not compared: {', '.join(unknown)}")
    small = [c.video_id for c in clips if min(c.truth.shape[1:3]) < M.SSIM_WINDOW]
    if small:
        raise CompareError(f"video {small[0]}: frames must be at least {M.SSIM_WINDOW}x{M.SSIM_WINDOW} pixels (SSIM)")
    try:
        lpips_model = M.load_lpips(lpips, device or "cpu") if lpips else None
        i3d = M.load_i3d(fvd, device or "cpu") if fvd else None
    except ValueError as error:
        raise CompareError(str(error)) from None

    with atomic_folder(out_dir, overwrite=overwrite) as temp:  # published only when the whole report is written
        renders = temp / ".renders"
        renders.mkdir()
        per_video = {clip.video_id: {} for clip in clips}
        truth_features = [i3d(clip.truth) for clip in clips] if i3d else None
        fvd_values, timings, load_seconds = {}, {}, {}
        bar = _progress(len(built) * len(clips), progress)
        for index, method in enumerate(built):
            features, seconds = [], 0.0
            bar.set_description(f"loading {method.name}")
            start = time.perf_counter()
            if hasattr(method, "prepare"):
                method.prepare()
            load_seconds[method.name] = time.perf_counter() - start
            for clip_index, clip in enumerate(clips):
                bar.set_description(f"{method.name} / {clip.video_id}")
                start = time.perf_counter()
                frames_out, resized = _render_checked(method, clip, steps, seed)
                elapsed = time.perf_counter() - start
                seconds += elapsed
                np.save(renders / f"{index}_{clip_index}.npy", frames_out)
                scores = {
                    "psnr": M.psnr(frames_out, clip.truth), "psnr_star": M.psnr_star(frames_out, clip.truth),
                    "ssim": M.ssim(frames_out, clip.truth), "temporal": M.temporal_consistency(frames_out, clip.truth),
                    "lpips": M.lpips_distance(lpips_model, frames_out, clip.truth) if lpips_model else None,
                    "seconds_per_frame": elapsed / len(frames_out),
                }
                if resized:
                    scores["resized_to_ground_truth"] = True
                per_video[clip.video_id][method.name] = scores
                if i3d:
                    features.append(i3d(frames_out))
                bar.update(1)
            timings[method.name] = seconds
            if hasattr(method, "release"):
                method.release()
            if i3d:
                fvd_values[method.name] = (M.frechet_distance(np.stack(features), np.stack(truth_features))
                                           if len(clips) >= 2 else None)
        bar.close()

        report = R.build_report(clips, built, per_video, fvd_values, timings, load_seconds, settings={
            "data": str(data) if not isinstance(data, list) else "<clips>", "videos": len(clips),
            "frames": frames, "size": list(parse_size(size)) if size else None, "steps": steps, "seed": seed,
            "speed": (speed or speed_settings.Speed()).as_dict(), "ref_frame": ref_frame, "device": device or "cpu", "lpips_weights": str(lpips) if lpips else None,
            "fvd_weights": str(fvd) if fvd else None, "std": "population standard deviation over videos (ddof=0)",
        }, lpips_given=bool(lpips), fvd_given=bool(fvd), claims=claims)
        R.write_report_files(temp, report, clips, built, lambda i, k: np.load(renders / f"{i}_{k}.npy"),
                             grid_frames=grid_frames)
        shutil.rmtree(renders)
    report["out_dir"] = str(out_dir)
    return report


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="render", disable=not enabled)
