"""`marionet app`: a Gradio web app over the pipelines and `run_comparison` (tabs Animate, Zero-shot, Compare).

A thin layer: each tab reads its uploads with the command line's readers (so a bad upload gets the CLI's one-line
message), calls the same pipeline (`PoseToVideoPipeline`, `ZeroShotPoseTransferPipeline`) or `run_comparison` with
the same arguments as `marionet animate` / `zero-shot` / `compare`, and writes its outputs with the same writers
into the app's output folder, never over an existing file. One job runs at a time (the queue holds the others);
Cancel stops the running render after its current step (the pipelines' `interrupt`) or a comparison before its
next video. Localhost only unless `--host` says otherwise; nothing is downloaded.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import torch

from ..errors import UserError
from . import speed as speed_settings
from .cli import _extract_poses, read_poses, read_reference
from .io import round_size, side_by_side, write_outputs
from .sampling import to_uint8

logger = logging.getLogger(__name__)
DEVICE = "device"  # every job shares one concurrency group: one at a time on the device
DEFAULT = "default"  # the scheduler widget's "the command's default, or the fast preset's" value


class Cancelled(Exception):
    pass


def find_models(root) -> dict[str, Path]:
    """Model folders (with model_index.json) under `root`, up to three levels deep: {label: path}."""
    if root is None:
        return {}
    root = Path(root)
    found = {}
    for index in sorted(root.glob("model_index.json")) + sorted(root.glob("*/model_index.json")) + \
            sorted(root.glob("*/*/model_index.json")) + sorted(root.glob("*/*/*/model_index.json")):
        folder = index.parent
        found[str(folder.relative_to(root)) if folder != root else folder.name] = folder
    return found


@dataclass
class Jobs:
    """The running job's cancel flag and the loaded pipelines (one of each kind kept, keyed by what it loads)."""
    cancel: threading.Event = field(default_factory=threading.Event)
    pipes: dict = field(default_factory=dict)

    def pipeline(self, kind: str, key, load):
        held = self.pipes.get(kind)
        if held is None or held[0] != key:
            self.pipes[kind] = None  # release the old one before loading the next
            self.pipes[kind] = (key, load())
        return self.pipes[kind][1]

    def step_callback(self, progress, total: int, what: str):
        """callback_on_step_end: progress (step, ETA) and cancellation after the current step."""
        def callback(pipe, step, timestep, tensors):
            progress((step + 1, total), desc=f"{what}: step {step + 1}/{total}")
            if self.cancel.is_set():
                pipe._interrupt = True
            return tensors
        return callback


class MarionetApp:
    def __init__(self, models=None, out="marionet_app_out", device=None, det=None, pose_model=None):
        self.models_root = Path(models) if models else None
        self.out = Path(out)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.det, self.pose_model = det, pose_model
        self.jobs = Jobs()

    # ------------------------------------------------------------------------------------------ helpers
    def models(self) -> dict[str, Path]:
        return find_models(self.models_root)

    def model(self, label) -> Path:
        models = self.models()
        if not label or label not in models:
            raise UserError(f"no model selected (model folders with model_index.json under "
                            f"{self.models_root or '--models (not given)'})")
        return models[label]

    def dwpose_missing(self) -> str | None:
        from ..data.dwpose import resolve_model_paths

        try:
            resolve_model_paths(self.det, self.pose_model)
            return None
        except FileNotFoundError as error:
            return str(error).splitlines()[0]

    def output_path(self, kind: str, suffix: str) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            path = self.out / f"{kind}-{stamp}{f'-{n}' if n else ''}{suffix}"
            if not path.exists() and not path.with_name(path.stem + "_side_by_side.mp4").exists():
                return path
        raise UserError(f"{self.out}: no free output name")

    def _speed(self, scheduler, step_cache, fast, steps, default_steps: int) -> speed_settings.Speed:
        """The speed widgets, as the CLI reads its switches: a widget left at "default" (0) takes the preset's value
        with fast ticked, the command's default otherwise."""
        base = speed_settings.FAST if fast else speed_settings.Speed(steps=default_steps)
        try:
            return speed_settings.Speed(
                base.scheduler if scheduler in (None, DEFAULT) else scheduler,
                int(step_cache) if step_cache else base.cache_interval, base.cache_skips,
                int(steps) if steps else base.steps).validate()
        except ValueError as error:
            raise UserError(str(error)) from None

    def _start(self):
        self.jobs.cancel.clear()

    def _render(self, pipe, kind: str, reference, poses, fps, speed, progress, lossless: bool, **call):
        """One pipeline call with progress and Cancel, then the result and the side-by-side written (uint8
        frames, written paths); a cancelled render writes nothing."""
        try:
            frames = pipe(reference, poses, num_inference_steps=speed.steps,
                          callback_on_step_end=self.jobs.step_callback(progress, speed.steps, kind), **call).frames
        except ValueError as error:
            raise UserError(str(error)) from None
        if self.jobs.cancel.is_set() or getattr(pipe, "_interrupt", False):
            pipe._interrupt = False
            raise Cancelled("cancelled: the render stopped after its current step; nothing was written")
        frames = to_uint8(frames[0])
        written = write_outputs(self.output_path(kind, ".mp4"), frames, fps,
                                comparison=side_by_side(reference, poses, frames), lossless=lossless)
        return frames, written

    # ------------------------------------------------------------------------------------------ animate
    def animate(self, ref, pose, driving, extract, align, model_label, width, height, steps, guidance, seed,
                context, overlap, scheduler, step_cache, fast, lossless=False, progress=gr.Progress()):
        from .pipeline import PoseToVideoPipeline

        self._start()
        if ref is None:
            raise UserError("--ref: upload a reference image")
        reference = read_reference(ref)
        if extract:
            if driving is None:
                raise UserError("--extract-pose needs --driving VIDEO: upload a driving video")
            args = SimpleNamespace(driving=driving, det=self.det, pose_model=self.pose_model, align_pose=align)
            poses, fps = _extract_poses(args, reference, UserError)
        else:
            if pose is None:
                raise UserError("give either --pose SKELETON or --driving VIDEO --extract-pose: upload a pose video")
            poses, fps = read_poses(pose)
        if not 0 <= int(overlap) < int(context):
            raise UserError(f"--overlap must be in [0, --context), got {overlap}")
        speed = self._speed(scheduler, step_cache, fast, steps, 25)
        path = self.model(model_label)
        pipe = self.jobs.pipeline("animate", str(path), lambda: PoseToVideoPipeline.from_pretrained(
            path, torch_dtype=self.dtype).to(self.device))
        pipe.set_progress_bar_config(disable=True)
        speed_settings.apply(pipe, speed)
        w, h, _ = round_size(int(width) or poses.shape[2], int(height) or poses.shape[1])
        progress(0, desc="encoding the reference")
        frames, written = self._render(pipe, "animate", reference, poses, fps or 25.0, speed, progress,
                                       bool(lossless), height=h, width=w, guidance_scale=float(guidance),
                                       context_frames=int(context), context_overlap=int(overlap),
                                       generator=torch.Generator().manual_seed(int(seed)))
        info = (f"{len(frames)} frames at {w}x{h}, {speed.steps} steps ({speed.describe()}), seed {int(seed)}; "
                f"wrote {', '.join(map(str, written))}")
        return str(written[0]), str(written[1]), [str(p) for p in written], info

    # ------------------------------------------------------------------------------------------ zero-shot
    def zero_shot(self, ref, pose, backbone, model_label, base, controlnet, ip_adapter, image_encoder, source_noise,
                  temperature, swap_layers, swap_steps, no_swap, guidance, controlnet_scale, ip_scale, steps, seed,
                  scheduler, step_cache, fast, progress=gr.Progress()):
        from .zero_shot import ZeroShotOptions, ZeroShotPoseTransferPipeline, parse_swap_steps

        self._start()
        if ref is None or pose is None:
            raise UserError("upload a source image (--ref) and a target pose (--pose)")
        reference = read_reference(ref)
        poses, fps = read_poses(pose)
        try:
            options = ZeroShotOptions(swap=not no_swap, source_noise=source_noise, temperature=float(temperature),
                                      swap_layers=swap_layers, swap_steps=parse_swap_steps(swap_steps)).validate()
        except ValueError as error:
            raise UserError(str(error)) from None
        speed = self._speed(scheduler, step_cache, fast, steps, 25)
        if backbone == "trained":
            path = self.model(model_label)
            key, load = ("trained", str(path)), lambda: ZeroShotPoseTransferPipeline.from_model_folder(
                path, torch_dtype=self.dtype)
        else:
            if not base or not controlnet:
                raise UserError("give --base SD15_DIR and --controlnet CN_DIR for the stock backbone")
            key = ("stock", base, controlnet, ip_adapter or None, image_encoder or None)
            load = lambda: ZeroShotPoseTransferPipeline.from_stock(  # noqa: E731
                base, controlnet, ip_adapter or None, image_encoder or None, torch_dtype=self.dtype)
        from ..models.loading import MissingWeightsError

        try:
            pipe = self.jobs.pipeline("zero-shot", key, lambda: load().to(self.device))
        except (MissingWeightsError, OSError) as error:
            raise UserError(str(error).splitlines()[0]) from None
        pipe.set_progress_bar_config(disable=True)
        if backbone != "trained" and ip_adapter:
            pipe.set_ip_adapter_scale(float(ip_scale))
        speed_settings.apply(pipe, speed)
        w, h, _ = round_size(poses.shape[2], poses.shape[1])
        frames, written = self._render(pipe, "zero-shot", reference, poses, fps or 8.0, speed, progress, False,
                                       height=h, width=w, guidance_scale=float(guidance), options=options,
                                       generator=torch.Generator().manual_seed(int(seed)),
                                       controlnet_conditioning_scale=float(controlnet_scale))
        return str(written[0]), str(written[1]), [str(p) for p in written], (
            f"{len(frames)} frame(s) at {w}x{h}, {speed.steps} steps ({speed.describe()}); "
            f"wrote {', '.join(map(str, written))}")

    # ------------------------------------------------------------------------------------------ compare
    def compare(self, data, methods_text, chosen_models, videos, frames, steps, seed, scheduler, step_cache, fast,
                progress=gr.Progress(track_tqdm=True)):
        from .compare import CompareError, build_method, run_comparison

        self._start()
        specs = [line.strip() for line in (methods_text or "").splitlines() if line.strip()]
        models = self.models()
        for label in chosen_models or []:
            safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)
            specs.append(f"{safe}=trained:model={models[label]}")
        if not data:
            raise UserError("give the held-out data: a meta.json or a folder of WebDataset shards")
        if not specs:
            raise UserError("no methods to compare (pick models or write NAME=SPEC lines)")
        speed = self._speed(scheduler, step_cache, fast, steps, 20)
        context = {"device": self.device, "speed": speed_settings.Speed(speed.scheduler, speed.cache_interval,
                                                                        speed.cache_skips)}
        try:
            methods = [_Cancellable(build_method(spec, context), self.jobs.cancel) for spec in specs]
            out = self.output_path("compare", "")
            report = run_comparison(data, methods, out, videos=int(videos) or None, frames=int(frames) or None,
                                    steps=speed.steps, seed=int(seed), device=self.device, speed=context["speed"])
        except Cancelled:
            raise
        except (CompareError, FileNotFoundError, FileExistsError, ValueError) as error:
            raise UserError(str(error).splitlines()[0]) from None
        folder = Path(report["out_dir"])
        plots = sorted(str(p) for p in (folder / "plots").glob("*.png"))
        grids = sorted(str(p) for p in (folder / "grids").glob("*.png"))
        return (folder / "report.md").read_text(), plots, grids, f"report folder: {folder}"

    def cancel(self):
        self.jobs.cancel.set()
        return "cancelling: the running job stops after its current step"


class _Cancellable:
    """A comparison method that refuses to start its next video once Cancel was pressed."""

    def __init__(self, method, flag: threading.Event):
        self.method, self.flag, self.name = method, flag, method.name
        self.settings = getattr(method, "settings", {})

    def prepare(self):
        if hasattr(self.method, "prepare"):
            self.method.prepare()

    def release(self):
        if hasattr(self.method, "release"):
            self.method.release()

    def render(self, reference, poses, steps, seed):
        if self.flag.is_set():
            raise Cancelled("cancelled: the comparison stopped before its next video; no report was written")
        return self.method.render(reference, poses, steps, seed)


# ---------------------------------------------------------------------------------------------- the UI
def _guarded(work):
    """Run a tab's work; every expected failure becomes one line in the UI (gr.Error), never a traceback."""
    def run(*args, progress=gr.Progress(track_tqdm=True)):
        try:
            return work(*args, progress=progress)
        except (UserError, Cancelled) as error:
            raise gr.Error(str(error), print_exception=False) from None
        except (FileNotFoundError, ValueError, OSError) as error:  # anything the readers did not wrap
            raise gr.Error(str(error).splitlines()[0] if str(error) else type(error).__name__,
                           print_exception=False) from None
        except TypeError:  # a number field left empty reaches int()/float() as None
            raise gr.Error("a number field is empty: fill it in (0 where it says so means the default)",
                           print_exception=False) from None
        except Exception as error:  # noqa: BLE001 - the app keeps serving; the console keeps the traceback
            logger.exception("unexpected error in the app")
            raise gr.Error(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} (the "
                           "traceback is in the app's console)", print_exception=False) from None
    return run


def _speed_inputs(prefix: str, default_steps: int):
    """Steps, scheduler, step cache and the fast preset; 0 / "default" mean the command's default (with fast ticked:
    the preset's value), as the CLI's switches do."""
    with gr.Row():
        steps = gr.Number(0, precision=0, label=f"steps (0 = {default_steps}; {speed_settings.FAST.steps} with fast)",
                          elem_id=f"{prefix}-steps")
        scheduler = gr.Dropdown([DEFAULT, *speed_settings.SCHEDULER_NAMES], value=DEFAULT,
                                label=f"scheduler (default: ddim; {speed_settings.FAST.scheduler} with fast)",
                                elem_id=f"{prefix}-scheduler")
        step_cache = gr.Number(0, precision=0, label="step cache: full pass every N steps (0 = off; "
                                                     f"{speed_settings.FAST.cache_interval} with fast)",
                               elem_id=f"{prefix}-step-cache")
        fast = gr.Checkbox(False, label=f"fast preset ({speed_settings.FAST.describe()})", elem_id=f"{prefix}-fast")
    return steps, scheduler, step_cache, fast


def build(app: MarionetApp) -> gr.Blocks:
    models = list(app.models())
    missing = app.dwpose_missing()
    with gr.Blocks(title="marionet") as blocks:
        gr.Markdown("# marionet\nPose-driven character animation. Outputs go to "
                    f"`{app.out.resolve()}`; one job runs at a time on {app.device}.")
        with gr.Tab("Animate"):
            with gr.Row():
                with gr.Column():
                    ref = gr.File(label="reference image", type="filepath", elem_id="animate-ref")
                    pose = gr.File(label="skeleton (pose) video or image", type="filepath", elem_id="animate-pose")
                    with gr.Accordion("or: a driving video with pose extraction", open=False):
                        driving = gr.File(label="driving video", type="filepath", elem_id="animate-driving")
                        extract = gr.Checkbox(False, label="extract poses with DWPose" + (
                            f" (unavailable: {missing})" if missing else ""), interactive=missing is None)
                        align = gr.Checkbox(False, label="align the skeleton to the reference",
                                            interactive=missing is None)
                    model = gr.Dropdown(models, value=models[0] if models else None, label="model",
                                        elem_id="animate-model")
                    with gr.Row():
                        width = gr.Number(0, precision=0, label="width (0 = the pose's)")
                        height = gr.Number(0, precision=0, label="height (0 = the pose's)")
                        seed = gr.Number(42, precision=0, label="seed", elem_id="animate-seed")
                    with gr.Row():
                        guidance = gr.Number(3.5, label="guidance")
                        context = gr.Number(24, precision=0, label="context frames")
                        overlap = gr.Number(4, precision=0, label="overlap")
                    speed = _speed_inputs("animate", 25)
                    lossless = gr.Checkbox(False, label="lossless mp4 (larger; the frames bit for bit)",
                                           elem_id="animate-lossless")
                    with gr.Row():
                        run = gr.Button("Render", variant="primary", elem_id="animate-run")
                        stop = gr.Button("Cancel", elem_id="animate-cancel")
                with gr.Column():
                    result = gr.Video(label="result", elem_id="animate-result")
                    sbs = gr.Video(label="reference | pose | result", elem_id="animate-sbs")
                    files = gr.File(label="download", file_count="multiple", elem_id="animate-files")
                    info = gr.Textbox(label="status", elem_id="animate-info")
            run.click(_guarded(app.animate), [ref, pose, driving, extract, align, model, width, height,
                                                      speed[0], guidance, seed, context, overlap, *speed[1:],
                                                      lossless],
                              [result, sbs, files, info], concurrency_id=DEVICE, concurrency_limit=1)
            stop.click(app.cancel, None, info, concurrency_limit=None)

        with gr.Tab("Zero-shot"):
            with gr.Row():
                with gr.Column():
                    zref = gr.File(label="source image", type="filepath", elem_id="zs-ref")
                    zpose = gr.File(label="target pose (image or video)", type="filepath", elem_id="zs-pose")
                    backbone = gr.Radio(["trained", "stock"], value="trained", label="backbone")
                    zmodel = gr.Dropdown(models, value=models[0] if models else None, label="trained model")
                    with gr.Accordion("stock backbone folders (SD1.5 + ControlNet openpose [+ IP-Adapter])",
                                      open=False):
                        base = gr.Textbox(label="SD1.5 folder (--base)")
                        controlnet = gr.Textbox(label="ControlNet folder (--controlnet)")
                        ip_adapter = gr.Textbox(label="IP-Adapter file (--ip-adapter)")
                        image_encoder = gr.Textbox(label="image encoder folder (--image-encoder)")
                    with gr.Row():
                        source_noise = gr.Dropdown(["previous-target", "previous-source", "random"],
                                                   value="previous-target", label="source noise")
                        temperature = gr.Number(1.3, label="temperature")
                        swap_layers = gr.Textbox("all", label="swap layers")
                        swap_steps = gr.Textbox("0:1", label="swap steps")
                    with gr.Row():
                        no_swap = gr.Checkbox(False, label="no swap (plain ControlNet)")
                        zguidance = gr.Number(1.0, label="guidance")
                        cscale = gr.Number(1.0, label="ControlNet scale")
                        ipscale = gr.Number(1.0, label="IP-Adapter scale")
                        zseed = gr.Number(0, precision=0, label="seed")
                    zspeed = _speed_inputs("zs", 25)
                    with gr.Row():
                        zrun = gr.Button("Render", variant="primary", elem_id="zs-run")
                        zstop = gr.Button("Cancel", elem_id="zs-cancel")
                with gr.Column():
                    zresult = gr.Video(label="result", elem_id="zs-result")
                    zsbs = gr.Video(label="source | pose | result")
                    zfiles = gr.File(label="download", file_count="multiple")
                    zinfo = gr.Textbox(label="status", elem_id="zs-info")
            zrun.click(_guarded(app.zero_shot), [zref, zpose, backbone, zmodel, base, controlnet, ip_adapter,
                                                  image_encoder, source_noise, temperature, swap_layers, swap_steps,
                                                  no_swap, zguidance, cscale, ipscale, zspeed[0], zseed, *zspeed[1:]],
                       [zresult, zsbs, zfiles, zinfo], concurrency_id=DEVICE, concurrency_limit=1)
            zstop.click(app.cancel, None, zinfo, concurrency_limit=None)

        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column():
                    data = gr.Textbox(label="held-out data (meta.json or shard folder)", elem_id="cmp-data")
                    chosen = gr.CheckboxGroup(models, label="trained models", elem_id="cmp-models")
                    methods = gr.Textbox(label="more methods, one NAME=SPEC per line (see `marionet compare --help`)",
                                         lines=3)
                    with gr.Row():
                        videos = gr.Number(2, precision=0, label="videos (0 = all)")
                        cframes = gr.Number(8, precision=0, label="frames (0 = all)")
                        cseed = gr.Number(0, precision=0, label="seed")
                    cspeed = _speed_inputs("cmp", 20)
                    with gr.Row():
                        crun = gr.Button("Compare", variant="primary", elem_id="cmp-run")
                        cstop = gr.Button("Cancel", elem_id="cmp-cancel")
                with gr.Column():
                    table = gr.Markdown(elem_id="cmp-report")
                    plots = gr.Gallery(label="plots", columns=2)
                    grids = gr.Gallery(label="grids", columns=1)
                    cinfo = gr.Textbox(label="status", elem_id="cmp-info")
            crun.click(_guarded(app.compare), [data, methods, chosen, videos, cframes, cspeed[0], cseed,
                                                *cspeed[1:]],
                       [table, plots, grids, cinfo], concurrency_id=DEVICE, concurrency_limit=1)
            cstop.click(app.cancel, None, cinfo, concurrency_limit=None)
    blocks.queue(default_concurrency_limit=1)
    return blocks


def launch(app: MarionetApp, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True):
    blocks = build(app)
    app.out.mkdir(parents=True, exist_ok=True)
    blocks.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                  allowed_paths=[str(app.out.resolve())], show_error=True, quiet=not block)
    return blocks
