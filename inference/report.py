"""The files of a comparison report: report.json, report.md, plots, frame grids and side-by-side videos.

Layout of a report folder:
  report.json              every number, the settings and software versions (shape described in build_report)
  report.md                the table (mean ± std per method, best per column in bold), definitions, per-video values
  plots/metrics.png        one bar chart per metric, error bars = std over videos
  plots/per_video.png      one scatter per metric: each video's value for each method
  grids/<video>.png        rows: ground truth, pose, each method; columns: frames
  videos/<video>.mp4       ground truth | pose | each method, side by side, with a name strip on top
Everything here writes into a folder that run_comparison later moves into place as a whole.
"""
from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

M_NOT_SUPPLIED = "not computed: weights not supplied"
METRICS = ("psnr", "psnr_star", "ssim", "temporal", "lpips", "fvd", "seconds_per_frame")
PER_VIDEO_METRICS = ("psnr", "psnr_star", "ssim", "temporal", "lpips", "seconds_per_frame")
LABELS = {"psnr": "PSNR (dB)", "psnr_star": "PSNR* (dB, uint8 overflow)", "ssim": "SSIM", "temporal": "Temporal err",
          "lpips": "LPIPS", "fvd": "FVD", "seconds_per_frame": "s / frame"}
HIGHER_IS_BETTER = {"psnr": True, "psnr_star": True, "ssim": True, "temporal": False, "lpips": False, "fvd": False,
                    "seconds_per_frame": False}
DEFINITIONS = {
    "psnr": "mean over frames of 10 log10(1 / MSE) on [0, 1] floats (identical frames: 100 dB); higher is better",
    "psnr_star": "the published tables' PSNR: MSE computed as np.mean((a - b) ** 2) on uint8 arrays, so difference "
                 "and square wrap modulo 256 (MSE <= 255, never below 24.1 dB); per frame 10 log10(255^2 / MSE), "
                 "averaged; only for comparison with those tables",
    "ssim": "gaussian-window SSIM (11x11, sigma 1.5, K1 0.01, K2 0.03, data range 1, valid region), averaged over "
            "channels and frames; matches skimage structural_similarity(gaussian_weights=True, "
            "use_sample_covariance=False); higher is better",
    "temporal": "mean over t >= 1, pixels, channels of |(x_t - x_(t-1)) - (g_t - g_(t-1))| on [0, 1] floats "
                "(x rendered, g ground truth): error in frame-to-frame change; lower is better",
    "lpips": "LPIPS (AlexNet) averaged over frames, from local weights; lower is better",
    "fvd": "Frechet distance of I3D features between a method's videos and the ground-truth videos (one value per "
           "method, needs >= 2 videos; few videos make it noisy); lower is better",
    "seconds_per_frame": "wall-clock render time of a video / its frame count; model loading is timed apart "
                         "(load_seconds) for methods that load in prepare(), but one-time warm-up (kernel selection, "
                         "caches) falls on a method's first video; lower is better",
}


def software_versions() -> dict:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("marionet", "torch", "diffusers", "transformers", "numpy"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    return versions


def build_report(clips, methods, per_video: dict, fvd_values: dict, timings: dict, load_seconds: dict, settings: dict,
                 lpips_given: bool, fvd_given: bool, claims=()) -> dict:
    """{"methods": {NAME: {metric: {"mean", "std", "n"}, "fvd": {"value"}, ...}}, "per_video": {VIDEO: {NAME:
    {metric: value}}}, "videos": [...], "settings", "definitions", "software", "notes"}."""
    report_methods = {}
    for method in methods:
        entry = {"settings": _jsonable(getattr(method, "settings", {}) or {})}
        for metric in PER_VIDEO_METRICS:
            values = [per_video[c.video_id][method.name][metric] for c in clips]
            entry[metric] = _summary(values)
        if not lpips_given:
            entry["lpips"]["note"] = M_NOT_SUPPLIED
        if fvd_given:
            value = fvd_values.get(method.name)
            entry["fvd"] = {"value": value} if value is not None else {
                "value": None, "note": "not computed: FVD needs at least 2 videos"}
        else:
            entry["fvd"] = {"value": None, "note": M_NOT_SUPPLIED}
        entry["render_seconds"] = timings.get(method.name)
        entry["load_seconds"] = load_seconds.get(method.name)
        report_methods[method.name] = entry
    notes = []
    if not lpips_given:
        notes.append("LPIPS " + M_NOT_SUPPLIED + " (give --lpips with local weights; they cannot be downloaded here)")
    if not fvd_given:
        notes.append("FVD " + M_NOT_SUPPLIED + " (give --fvd with a local I3D TorchScript file)")
    if any(c.ref_frame < len(c.truth) for c in clips):
        notes.append("the reference frame is one of the scored frames (as in the published protocols): a method "
                     "that reproduces it exactly gets the 100 dB PSNR cap on that frame")
    return {
        "methods": report_methods,
        "per_video": per_video,
        "videos": [{"video_id": c.video_id, "source": c.source, "frames": int(len(c.truth)),
                    "width": int(c.truth.shape[2]), "height": int(c.truth.shape[1]), "fps": c.fps,
                    "ref_frame": c.ref_frame} for c in clips],
        "settings": settings,
        "definitions": DEFINITIONS,
        "software": software_versions(),
        "notes": notes,
        "claims": check_claims(per_video, claims),
    }



# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: an expansion, see `ci95`).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def ci95(values) -> list | None:
    """95% confidence interval of the mean (Student's t, sample std with ddof=1); None for fewer than 2 values."""
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(values) < 2:
        return None
    df = len(values) - 1
    if df <= len(_T95):
        t = _T95[df - 1]
    else:  # Cornish-Fisher expansion around the normal quantile: within 1e-3 of the exact t beyond 30 dof
        z = 1.959964
        t = z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
    half = t * values.std(ddof=1) / np.sqrt(len(values))
    return [float(values.mean() - half), float(values.mean() + half)]


def _summary(values) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0, "ci95": None}
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values), "ci95": ci95(values)}


@dataclass(frozen=True)
class Claim:
    """An ordering a comparison is run to test: `better` beats `worse` on `metric` by more than `margin` (in the
    metric's own direction; a negative margin allows a loss of at most -margin), on the paired per-video
    differences: it holds when the 95% interval of the mean paired difference lies entirely beyond the margin."""
    better: str
    worse: str
    metric: str
    margin: float = 0.0

    def text(self) -> str:
        relation = "<" if not HIGHER_IS_BETTER[self.metric] else ">"
        extra = f" (margin {self.margin:+g})" if self.margin else ""
        return f"{self.better} {relation} {self.worse} on {LABELS[self.metric]}{extra}"


def check_claims(per_video: dict, claims) -> list[dict]:
    """Paired differences (better - worse, sign-flipped for lower-is-better metrics) over the videos both have."""
    results = []
    for claim in claims:
        sign = 1.0 if HIGHER_IS_BETTER[claim.metric] else -1.0
        diffs = [sign * (scores[claim.better][claim.metric] - scores[claim.worse][claim.metric])
                 for scores in per_video.values()
                 if claim.better in scores and claim.worse in scores
                 and scores[claim.better].get(claim.metric) is not None
                 and scores[claim.worse].get(claim.metric) is not None]
        interval = ci95(diffs)
        results.append({"claim": claim.text(), "better": claim.better, "worse": claim.worse, "metric": claim.metric,
                        "margin": claim.margin, "n": len(diffs),
                        "mean_difference": float(np.mean(diffs)) if diffs else None, "ci95": interval,
                        "holds": bool(interval is not None and interval[0] > claim.margin)})
    return results


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def headline(entry: dict, metric: str):
    """(value, std) shown for a metric of one method: FVD has a single value, the others a mean over videos."""
    block = entry.get(metric) or {}
    if metric == "fvd":
        return block.get("value"), None
    return block.get("mean"), block.get("std")


def best_methods(report: dict) -> dict:
    """metric -> set of method names holding the best value (ties share it)."""
    best = {}
    for metric in METRICS:
        scored = {name: headline(entry, metric)[0] for name, entry in report["methods"].items()}
        scored = {k: v for k, v in scored.items() if v is not None}
        if scored:
            target = (max if HIGHER_IS_BETTER[metric] else min)(scored.values())
            best[metric] = {k for k, v in scored.items() if v == target}
    return best


def _cell(value, std, digits: int) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if std is not None else "")


DIGITS = {"psnr": 2, "psnr_star": 2, "ssim": 4, "temporal": 4, "lpips": 4, "fvd": 1, "seconds_per_frame": 3}


def _interval(ci, digits: int) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def claims_table(report: dict) -> str:
    """The claimed orderings: paired mean difference, its 95% interval, and whether the interval clears the margin."""
    lines = ["| claim | videos | mean paired difference | 95% interval | holds |", "|---|---|---|---|---|"]
    for c in report.get("claims", []):
        digits = DIGITS[c["metric"]]
        mean = "n/a" if c["mean_difference"] is None else f"{c['mean_difference']:+.{digits}f}"
        lines.append(f"| {c['claim']} | {c['n']} | {mean} | {_interval(c['ci95'], digits)} | "
                     f"{'yes' if c['holds'] else '**no**'} |")
    return "\n".join(lines)


def summary_table(report: dict, metrics=("psnr", "ssim", "temporal", "psnr_star"), labels: dict | None = None) -> str:
    """Mean and 95% interval per method (the demo's README table)."""
    labels = labels or {}
    arrow = {m: "↑" if HIGHER_IS_BETTER[m] else "↓" for m in metrics}
    best = best_methods(report)
    lines = ["| method | " + " | ".join(f"{LABELS[m]} {arrow[m]} (95% interval)" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for name, entry in report["methods"].items():
        cells = []
        for m in metrics:
            block = entry[m]
            text = "n/a" if block["mean"] is None else (f"{block['mean']:.{DIGITS[m]}f} "
                                                        f"{_interval(block.get('ci95'), DIGITS[m])}")
            cells.append(f"**{text}**" if name in best.get(m, ()) else text)
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(report: dict, images: dict) -> str:
    best = best_methods(report)
    arrow = {m: "↑" if HIGHER_IS_BETTER[m] else "↓" for m in METRICS}
    lines = ["# marionet comparison", ""]
    s = report["settings"]
    lines.append(f"{s['videos']} videos from `{s['data']}`, reference frame {s['ref_frame']}, {s['steps']} steps, "
                 f"seed {s['seed']}, device {s['device']}. Mean ± std over videos ({s['std']}); best per column in "
                 "**bold**.")
    lines += ["", "| method | " + " | ".join(f"{LABELS[m]} {arrow[m]}" for m in METRICS) + " |",
              "|---|" + "---|" * len(METRICS)]
    for name, entry in report["methods"].items():
        cells = []
        for metric in METRICS:
            value, std = headline(entry, metric)
            text = _cell(value, std, DIGITS[metric])
            cells.append(f"**{text}**" if name in best.get(metric, ()) else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report["notes"]:
        lines += [""] + [f"- {note}" for note in report["notes"]]
    if report.get("claims"):
        lines += ["", "## Claimed orderings", "", claims_table(report)]
    lines += ["", "## Definitions", ""] + [f"- **{LABELS[k]}**: {v}" for k, v in report["definitions"].items()]
    lines += ["", "## Methods", ""]
    for name, entry in report["methods"].items():
        lines.append(f"- **{name}**: `{json.dumps(entry['settings'])}`")
    lines += ["", "## Per video", "", "| video | method | " + " | ".join(LABELS[m] for m in PER_VIDEO_METRICS) + " |",
              "|---|---|" + "---|" * len(PER_VIDEO_METRICS)]
    for video, by_method in report["per_video"].items():
        for name, scores in by_method.items():
            cells = [_cell(scores.get(m), None, DIGITS[m]) for m in PER_VIDEO_METRICS]
            lines.append(f"| {video} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Figures", ""]
    for title, path in images.items():
        lines.append(f"- [{title}]({path})")
    versions = ", ".join(f"{k} {v}" for k, v in report["software"].items())
    lines += ["", f"Software: {versions}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- figures

def plot_metrics(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    shown = [m for m in METRICS if any(headline(e, m)[0] is not None for e in report["methods"].values())]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown) + 1, 3.2), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        values = [headline(report["methods"][n], metric) for n in names]
        heights = [v if v is not None else 0.0 for v, _ in values]
        errors = [s if s is not None else 0.0 for _, s in values]
        ax.bar(range(len(names)), heights, yerr=errors, capsize=3, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(LABELS[metric] + (" ↑" if HIGHER_IS_BETTER[metric] else " ↓"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_video(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    videos = list(report["per_video"])
    names = list(report["methods"])
    shown = [m for m in PER_VIDEO_METRICS
             if any(s.get(m) is not None for v in report["per_video"].values() for s in v.values())]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.8 * len(shown) + 1, 3.2), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        for i, name in enumerate(names):
            xs = [k for k, v in enumerate(videos) if report["per_video"][v][name].get(metric) is not None]
            ys = [report["per_video"][videos[k]][name][metric] for k in xs]
            ax.scatter(xs, ys, s=14, color=f"C{i}", label=name)
        ax.set_xlabel("video", fontsize=8)
        ax.set_title(LABELS[metric], fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label_tile(text: str, height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(tile).text((3, max(0, height // 2 - 6)), text[: max(1, width // 6)], fill=(0, 0, 0))
    return np.asarray(tile)


def frame_grid(rows: list[tuple[str, np.ndarray]], columns: int = 8, label_width: int = 96) -> np.ndarray:
    """rows of (name, (F, H, W, 3)) -> one uint8 image; columns are evenly spaced frames, names in a left column."""
    count = len(rows[0][1])
    picks = np.unique(np.linspace(0, count - 1, min(columns, count)).round().astype(int))
    height = rows[0][1].shape[1]
    lines = []
    for name, frames in rows:
        lines.append(np.concatenate([_label_tile(name, height, label_width)] + [frames[i] for i in picks], axis=1))
    return np.concatenate(lines, axis=0)


def side_by_side(panels: list[tuple[str, np.ndarray]], strip: int = 14):
    """Yield frames with every panel next to the others and its name in a white strip above it."""
    width = panels[0][1].shape[2]
    header = np.concatenate([_label_tile(name, strip, width) for name, _ in panels], axis=1)
    for t in range(len(panels[0][1])):
        yield np.concatenate([header, np.concatenate([frames[t] for _, frames in panels], axis=1)], axis=0)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report_files(folder: Path, report: dict, clips, methods, load_render, grid_frames: int = 8) -> None:
    """Write every file of the report into `folder`; load_render(method_index, clip_index) gives the frames."""
    from PIL import Image

    from ..data.video import write_video

    folder = Path(folder)
    for sub in ("plots", "grids", "videos"):
        (folder / sub).mkdir(exist_ok=True)
    images = {"metrics": "plots/metrics.png", "per-video values": "plots/per_video.png"}
    plot_metrics(report, folder / images["metrics"])
    plot_per_video(report, folder / images["per-video values"])
    artefacts = {"report_md": "report.md", "plots": list(images.values()), "grids": {}, "videos": {}}
    for clip_index, clip in enumerate(clips):
        panels = [("ground truth", clip.truth), ("pose", clip.poses)]
        panels += [(m.name, load_render(i, clip_index)) for i, m in enumerate(methods)]
        grid_path = f"grids/{_safe(clip.video_id)}.png"
        Image.fromarray(frame_grid(panels, grid_frames)).save(folder / grid_path)
        video_path = f"videos/{_safe(clip.video_id)}.mp4"
        write_video(folder / video_path, side_by_side(panels), clip.fps)
        artefacts["grids"][clip.video_id] = grid_path
        artefacts["videos"][clip.video_id] = video_path
        images[f"grid {clip.video_id}"] = grid_path
        images[f"video {clip.video_id}"] = video_path
    report["artefacts"] = artefacts
    (folder / "report.md").write_text(render_markdown(report, images))
    (folder / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
