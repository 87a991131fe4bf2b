"""`marionet bench speed`: what each solver / step-cache setting costs and what it loses, measured.

Per setting (solver, steps, step cache) it prints and writes:

- UNet FLOPs per generated frame at SD1.5 size (768x512, 24 frames, guidance 3.5, context 24), counted with
  `torch.utils.flop_counter` on the meta device for one full and one cached denoising call (per skip depth), times
  the calls the setting makes (the step cache makes a full call on steps 0, N, 2N, ... of every window);
- the same on the model measured, counted on its real calls (the step cache's own full/cached call counts);
- the render's process CPU time on this machine relative to DDIM-25 in the same run (a ratio: absolute CPU times on
  tiny models say nothing about a GPU), after one untimed warm-up render;
- quality on held-out videos: against the ground truth (PSNR, SSIM, temporal error) and against a converged render
  of the same model and seed (DDIM, 50 steps), and for cached settings against the same solver uncached.

    marionet bench speed --demo demo_out [--videos 2] [--frames 16] [--out docs/speed.json] [--update-docs]

`--demo` takes a `marionet demo` folder (its stage-2 model and held-out videos); `--model` / `--data` take any model
folder and held-out set instead.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics as M
from .speed import FAST, Speed, apply


@dataclass(frozen=True)
class Setting:
    label: str
    speed: Speed

    @property
    def steps(self) -> int:
        return self.speed.steps


def _s(label, scheduler, steps, interval=1, skips=2) -> Setting:
    return Setting(label, Speed(scheduler, interval, skips, steps))


REFERENCE = _s("ddim-50", "ddim", 50)
BASELINE = _s("ddim-25", "ddim", 25)
FAST_SETTING = Setting("fast", FAST)
SETTINGS = [
    REFERENCE, BASELINE, _s("ddim-10", "ddim", 10), _s("ddim-5", "ddim", 5),
    _s("dpm++-10", "dpm++", 10), _s("unipc-10", "unipc", 10), _s("euler-10", "euler", 10),
    _s("dpm++-5", "dpm++", 5), _s("unipc-5", "unipc", 5),
    _s("ddim-25 cache 2/1", "ddim", 25, 2, 1), _s("ddim-25 cache 3/1", "ddim", 25, 3, 1),
    _s("ddim-25 cache 2/2", "ddim", 25, 2, 2), _s("ddim-25 cache 3/2", "ddim", 25, 3, 2),
    _s("ddim-25 cache 4/2", "ddim", 25, 4, 2),
    _s("dpm++-10 cache 2/1", "dpm++", 10, 2, 1), _s("dpm++-10 cache 2/2", "dpm++", 10, 2, 2),
    _s("unipc-10 cache 2/1", "unipc", 10, 2, 1), _s("unipc-10 cache 2/2", "unipc", 10, 2, 2),
    _s("dpm++-10 cache 3/2", "dpm++", 10, 3, 2), _s("dpm++-8", "dpm++", 8), _s("dpm++-6", "dpm++", 6),
    _s("unipc-6", "unipc", 6), _s("dpm++-9", "dpm++", 9), _s("dpm++-8 cache 2/2", "dpm++", 8, 2, 2), FAST_SETTING,
]
QUICK = [REFERENCE, BASELINE, _s("dpm++-10", "dpm++", 10), _s("ddim-25 cache 3/2", "ddim", 25, 3, 2),
         _s("dpm++-9", "dpm++", 9), FAST_SETTING]


def full_steps(steps: int, interval: int) -> int:
    """How many of `steps` steps make full UNet calls (steps 0, interval, 2*interval, ...)."""
    return len(range(0, steps, interval))


# ------------------------------------------------------------------------------------------------ FLOPs
def call_flops(pipe, latents: torch.Tensor, t, cond, frames: list[int], skips_list=(1, 2, 3)) -> dict:
    """FLOPs of one denoising call of `pipe` on `latents`: "full", and per skip depth k "cached/k" (a cached step's
    call with the step cache at that depth). Leaves the pipeline without a step cache."""
    from ..train.memory import flop_counter

    pipe.disable_step_cache()
    pipe.predict_window(latents, t, cond, frames, 0)  # the reference projection happens once per video: not here
    with flop_counter() as full:
        pipe.predict_window(latents, t, cond, frames, 0)
    counts = {"full": full.get_total_flops()}
    for skips in skips_list:
        pipe.enable_step_cache(interval=2, skips=skips)
        pipe.predict_window(latents, t, cond, frames, 0)  # step 0: full, recorded
        with flop_counter() as cached:
            pipe.predict_window(latents, t, cond, frames, 1)
        counts[f"cached/{skips}"] = cached.get_total_flops()
    pipe.disable_step_cache()
    return counts


def sd15_call_flops(frames: int = 24, height: int = 768, width: int = 512, guidance: float = 3.5) -> dict:
    """`call_flops` at SD1.5 size on the meta device (random-architecture components, no weights)."""
    from ..train.memory import _quiet, build_pipeline
    from .pipeline import Conditioning
    from .sampling import guidance_rows

    pipe = build_pipeline("fp16")
    reference = np.zeros((height, width, 3), np.uint8)
    poses = np.zeros((frames, height, width, 3), np.uint8)
    with torch.device("meta"), torch.no_grad(), _quiet():
        embeds = pipe.encode_image(reference)
        pipe.write_reference_bank(pipe.encode_reference_latents(reference, height, width), embeds)
        cond = Conditioning(embeds, pipe.encode_pose(poses), guidance_rows(guidance), guidance, None)
        latents = torch.empty(1, 4, frames, height // 8, width // 8)
        counts = call_flops(pipe, latents, torch.tensor(500), cond, list(range(frames)))
        pipe.animator.reference_state.clear()
    return counts


def setting_flops(counts: dict, speed: Speed, windows: int, frames: int) -> float:
    """UNet FLOPs per generated frame of a render with `windows` context windows."""
    full = full_steps(speed.steps, speed.cache_interval)
    cached = speed.steps - full
    per_window = full * counts["full"] + (cached * counts[f"cached/{speed.cache_skips}"] if cached else 0)
    return per_window * windows / frames


# ------------------------------------------------------------------------------------------------ renders
def _render(pipe, clip, setting: Setting, seed: int, guidance: float, context: int) -> tuple[np.ndarray, float, dict]:
    from .sampling import to_uint8

    apply(pipe, setting.speed)
    start = time.process_time()
    frames = pipe(clip.reference, clip.poses, num_inference_steps=setting.steps, guidance_scale=guidance,
                  context_frames=context, generator=torch.Generator().manual_seed(seed), output_type="np").frames
    seconds = time.process_time() - start  # process CPU seconds: steadier than wall time on a shared machine
    cache = pipe.step_cache
    calls = {"full": cache.full_calls, "cached": cache.cached_calls} if cache is not None else None
    pipe.disable_step_cache()
    return to_uint8(frames[0]), seconds, calls


def run(model, data, settings=None, videos: int = 2, frames: int = 16, guidance: float = 3.5, seed: int = 0,
        context: int = 16, progress=print) -> dict:
    from .compare import load_clips
    from .pipeline import Conditioning, PoseToVideoPipeline
    from .sampling import frame_windows, guidance_rows

    settings = list(settings or SETTINGS)
    for needed in (REFERENCE, BASELINE):
        if needed not in settings:
            settings.insert(0, needed)
    clips = load_clips(data, videos=videos, frames=frames)
    pipe = PoseToVideoPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    clip_frames = len(clips[0].poses)
    windows = frame_windows(clip_frames, context, 4, False, pipe.is_video_model, pipe.max_context_frames)

    progress("counting FLOPs at SD1.5 size on the meta device ...")
    sd15 = sd15_call_flops(guidance=guidance)
    with torch.no_grad():  # the measured model's own calls, on its first clip
        reference, poses = clips[0].reference, clips[0].poses
        height, width = poses.shape[1:3]
        embeds = pipe.encode_image(reference)
        pipe.write_reference_bank(pipe.encode_reference_latents(reference, height, width), embeds)
        cond = Conditioning(embeds, pipe.encode_pose(poses[windows[0]]), guidance_rows(guidance), guidance, None)
        factor = pipe.vae_scale_factor
        latents = torch.randn(1, 4, len(windows[0]), height // factor, width // factor,
                              generator=torch.Generator().manual_seed(0))
        tiny = call_flops(pipe, latents, torch.tensor(500), cond, list(range(len(windows[0]))))
        pipe.animator.reference_state.clear()
    tiny_window_flops = tiny  # per call of one window (all windows here have the same length)

    _render(pipe, clips[0], _s("warm-up", "ddim", 2), seed, guidance, context)  # first-call costs, untimed
    renders, rows = {}, []
    for setting in settings:
        outputs, seconds, calls = [], 0.0, []
        for clip in clips:
            progress(f"{setting.label}: {clip.video_id}")
            out, elapsed, counted = _render(pipe, clip, setting, seed, guidance, context)
            outputs.append(out)
            seconds += elapsed
            calls.append(counted)
        renders[setting.label] = outputs
        tiny_flops = None
        if calls[0] is not None:  # counted calls of the first clip's render
            tiny_flops = (calls[0]["full"] * tiny_window_flops["full"] +
                          calls[0]["cached"] * tiny_window_flops[f"cached/{setting.speed.cache_skips}"]) / clip_frames
        else:
            tiny_flops = setting.steps * len(windows) * tiny_window_flops["full"] / clip_frames
        rows.append({"label": setting.label, **setting.speed.as_dict(), "seconds": seconds,
                     "sd15_tflop_per_frame": setting_flops(sd15, setting.speed, 1, 24) / 1e12,
                     "model_gflop_per_frame": tiny_flops / 1e9, "calls": calls[0]})

    base = next(r for r in rows if r["label"] == BASELINE.label)
    for row in rows:
        outs = renders[row["label"]]
        row["time_vs_ddim25"] = row["seconds"] / base["seconds"]
        row["flops_vs_ddim25"] = row["sd15_tflop_per_frame"] / base["sd15_tflop_per_frame"]
        row["psnr_gt"] = float(np.mean([M.psnr(o, c.truth) for o, c in zip(outs, clips)]))
        row["ssim_gt"] = float(np.mean([M.ssim(o, c.truth) for o, c in zip(outs, clips)]))
        row["temporal_gt"] = _mean([M.temporal_consistency(o, c.truth) for o, c in zip(outs, clips)])
        row["psnr_vs_ddim50"] = _psnrs(outs, renders[REFERENCE.label])
        uncached = next((r for r in rows if r["scheduler"] == row["scheduler"] and r["steps"] == row["steps"]
                         and r["cache_interval"] == 1), None)
        row["uncached"] = uncached["label"] if uncached and row["cache_interval"] > 1 else None
        row["psnr_vs_uncached"] = _psnrs(outs, renders[uncached["label"]]) if row["uncached"] else None
        if row["uncached"]:
            row["flops_vs_uncached"] = row["sd15_tflop_per_frame"] / uncached["sd15_tflop_per_frame"]
    return {"model": str(model), "data": str(data), "videos": len(clips), "frames": clip_frames,
            "size": [int(clips[0].poses.shape[2]), int(clips[0].poses.shape[1])], "guidance": guidance, "seed": seed,
            "context": context, "sd15_call_tflop": {k: v / 1e12 for k, v in sd15.items()},
            "model_call_gflop": {k: v / 1e9 for k, v in tiny_window_flops.items()}, "rows": rows,
            "fast": FAST.as_dict(), "goals": goals({"rows": rows}), "machine": _machine()}


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _psnrs(outputs, references) -> float:
    """Mean PSNR (dB) of renders against other renders (inf, capped at 99, when identical)."""
    return float(np.mean([min(99.0, M.psnr(o, r)) for o, r in zip(outputs, references)]))


def _machine() -> dict:
    import os
    import platform

    return {"machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "processor": platform.processor() or "unknown"}


# ------------------------------------------------------------------------------------------------ goals and tables
def goals(report: dict) -> list[dict]:
    """The issue's goals, checked against the measured rows."""
    rows = {r["label"]: r for r in report["rows"]}
    out = []
    cached = [r for r in report["rows"] if r.get("uncached")]
    good = [r for r in cached if r["flops_vs_uncached"] <= 0.5 and r["psnr_vs_uncached"] >= 30]
    best = max(cached, key=lambda r: r["psnr_vs_uncached"] - 100 * (r["flops_vs_uncached"] > 0.5), default=None)
    out.append({"goal": "step cache <= 0.5x the UNet FLOPs of the same solver uncached, >= 30 dB against it",
                "met": bool(good), "by": [r["label"] for r in good],
                "best": best and f"{best['label']}: {best['flops_vs_uncached']:.2f}x, {best['psnr_vs_uncached']:.1f} dB"})
    tens = [r for r in report["rows"] if r["steps"] == 10 and r["cache_interval"] == 1 and r["scheduler"] != "ddim"]
    top = max(tens, key=lambda r: r["psnr_vs_ddim50"], default=None)
    ddim10 = f" (ddim-10: {rows['ddim-10']['psnr_vs_ddim50']:.1f} dB)" if "ddim-10" in rows else ""
    out.append({"goal": "a better solver at 10 steps >= 30 dB against DDIM-50",
                "met": bool(top and top["psnr_vs_ddim50"] >= 30),
                "best": top and f"{top['label']}: {top['psnr_vs_ddim50']:.1f} dB{ddim10}"})
    fast, base = rows.get("fast"), rows.get(BASELINE.label)
    if fast and base:
        loss = base["psnr_gt"] - fast["psnr_gt"]
        out.append({"goal": "fast preset <= 0.25x the UNet FLOPs of DDIM-25, <= 0.3 dB ground-truth PSNR loss",
                    "met": fast["flops_vs_ddim25"] <= 0.25 and loss <= 0.3,
                    "best": f"fast: {fast['flops_vs_ddim25']:.3f}x, ground-truth PSNR {fast['psnr_gt']:.2f} vs "
                            f"{base['psnr_gt']:.2f} dB for DDIM-25 ({-loss:+.2f}) and "
                            f"{rows[REFERENCE.label]['psnr_gt']:.2f} dB for DDIM-50; {fast['psnr_vs_ddim50']:.1f} dB "
                            f"vs the DDIM-50 render"})
    return out


def _fmt(value, digits=2, suffix=""):
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}{suffix}"


def markdown_table(report: dict) -> str:
    lines = ["| setting | solver | steps | step cache (N/skips) | SD1.5 UNet TFLOP / frame | vs DDIM-25 FLOPs | "
             "CPU time vs DDIM-25 (this run) | PSNR vs DDIM-50 | PSNR vs uncached | GT PSNR | GT SSIM | GT temporal err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        cache = "off" if r["cache_interval"] == 1 else f"{r['cache_interval']}/{r['cache_skips']}"
        vs50 = "(reference)" if r["label"] == REFERENCE.label else _fmt(r["psnr_vs_ddim50"], 1, " dB")
        lines.append(f"| {r['label']} | {r['scheduler']} | {r['steps']} | {cache} | {r['sd15_tflop_per_frame']:.2f} | "
                     f"{r['flops_vs_ddim25']:.3f}x | {r['time_vs_ddim25']:.2f}x | {vs50} | "
                     f"{_fmt(r['psnr_vs_uncached'], 1, ' dB')} | {r['psnr_gt']:.2f} | {r['ssim_gt']:.3f} | "
                     f"{_fmt(r['temporal_gt'], 4)} |")
    return "\n".join(lines)


def goals_table(report: dict) -> str:
    lines = ["| goal | met | measured |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {'yes' if g['met'] else '**no**'} | {g['best']} |" for g in report["goals"]]
    return "\n".join(lines)


def summary(report: dict) -> str:
    m, c = report["machine"], report["sd15_call_tflop"]
    return (f"Model {report['model']}, {report['videos']} held-out videos x {report['frames']} frames at "
            f"{report['size'][0]}x{report['size'][1]}, guidance {report['guidance']}, seed {report['seed']}; "
            f"{m['cores']} CPU cores ({m['machine']}), torch {m['torch']}. SD1.5 call (24 frames 768x512, both "
            f"guidance rows): full {c['full']:.1f} TFLOP, cached {c['cached/1']:.1f} / {c['cached/2']:.1f} / "
            f"{c['cached/3']:.1f} TFLOP with 1 / 2 / 3 skips.")


def update_docs(report: dict, files=("README.md", "docs/benchmarks.md")) -> list[str]:
    from ..markers import replace_marked

    sections = {"table": markdown_table(report), "goals": goals_table(report), "summary": summary(report)}
    rows = {r["label"]: r for r in report["rows"]}
    fast, base = rows.get("fast"), rows[BASELINE.label]
    if fast:
        f = report["fast"]
        sections["fast"] = (
            f"`--fast` ({f['scheduler']}, {f['steps']} steps, step cache {f['cache_interval']}/{f['cache_skips']}): "
            f"{fast['flops_vs_ddim25']:.2f}x the UNet FLOPs of DDIM-25 and {fast['time_vs_ddim25']:.2f}x its CPU "
            f"time on the demo model, {fast['psnr_vs_ddim50']:.1f} dB against a DDIM-50 render, ground-truth PSNR "
            f"{fast['psnr_gt']:.2f} dB vs DDIM-25's {base['psnr_gt']:.2f}.")
    return replace_marked(files, sections, "speed")


def main(args) -> int:
    from ..atomic import write_json
    from ..errors import UserError

    model, data = args.model, args.data
    if args.demo:
        demo = Path(args.demo)
        model = model or demo / "stage2" / "model"
        data = data or demo / "data" / "heldout" / "meta.json"
    if not model or not data:
        raise UserError("give --demo DEMO_DIR, or --model MODEL_DIR and --data META_JSON")
    for path, what in ((Path(model), "model folder"), (Path(data), "held-out data")):
        if not path.exists():
            raise UserError(f"{what} not found: {path}")
    report = run(model, data, QUICK if args.quick else SETTINGS, videos=args.videos, frames=args.frames,
                 guidance=args.guidance, seed=args.seed, context=args.context)
    print(summary(report) + "\n\n" + markdown_table(report) + "\n\n" + goals_table(report))
    if args.out:
        write_json(args.out, report, indent=1)
        print(f"wrote {args.out}")
    if args.update_docs:
        print("updated " + (", ".join(update_docs(report)) or "nothing (no markers found)"))
    return 0
