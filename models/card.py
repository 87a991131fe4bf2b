"""Model cards: the README.md every exported or converted model folder carries, written with huggingface_hub's
`ModelCard`, so a folder says what produced it (stage, base weights, config, data, steps, scheduler, frame-noise
correlation, validation figures) wherever it is copied or uploaded.
"""
from __future__ import annotations

import datetime
from pathlib import Path

from ..atomic import write_text

TAGS = ["marionet", "animate-anyone", "pose-to-video", "diffusers"]


def _scheduler_line(scheduler) -> str:
    if scheduler is None:
        return "none"
    config = scheduler.config
    parts = [type(scheduler).__name__, f"{config.get('beta_schedule')} betas",
             f"prediction {config.get('prediction_type')}", f"spacing {config.get('timestep_spacing')}"]
    if config.get("rescale_betas_zero_snr"):
        parts.append("zero terminal SNR")
    if "set_alpha_to_one" in config:
        parts.append(f"set_alpha_to_one {config.get('set_alpha_to_one')}")
    return ", ".join(str(p) for p in parts)


def _count(module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f} M" if module is not None else "-"


def _table(rows: list[tuple[str, object]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in rows if value not in (None, "")]
    return "\n".join(lines)


def render_card(title: str, summary: str, rows: list[tuple[str, object]], sections: dict[str, str] | None = None,
                pipeline_tag: str | None = None) -> str:
    """The card's text: YAML metadata (huggingface_hub's ModelCardData), a title, a summary, a facts table and
    optional sections (heading -> markdown)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="marionet", tags=list(TAGS), pipeline_tag=pipeline_tag)
    body = [f"# {title}", "", summary, "", _table(rows)]
    for heading, text in (sections or {}).items():
        body += ["", f"## {heading}", "", text.rstrip()]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"))


def model_folder_card(out_dir, animator, scheduler, frame_noise_correlation: float, fields: dict | None) -> Path:
    """README.md for a marionet model folder (`models.export`). `fields` (all optional): produced_by, stage,
    base_model, data, steps, config (YAML text), validation (dict of figures), validation_image (file name in the
    folder), source (converted files), notes."""
    from .. import __version__

    fields = dict(fields or {})
    video = animator.is_video_model
    kind = "video model (stage 2: motion modules)" if video else "image model (stage 1: frame by frame)"
    rows = [
        ("produced by", fields.get("produced_by", "marionet")), ("stage", fields.get("stage")), ("kind", kind),
        ("base weights", fields.get("base_model")), ("source files", fields.get("source")),
        ("training data", fields.get("data")), ("training steps", fields.get("steps")),
        ("scheduler (sampling uses it)", _scheduler_line(scheduler)),
        ("frame-noise correlation", f"{frame_noise_correlation:g}" + (
            " (inference draws the initial noise this way)" if video else " (image model: frames share one noise)")),
        ("parameters", (f"ReferenceNet {_count(animator.reference_unet)}" if animator.has_reference_net else
                        "no ReferenceNet (stock model: CLIP token only)") + ", denoising UNet "
                       f"{_count(animator.denoising_unet)}, Pose Guider {_count(animator.pose_guider)}"),
        ("written", f"{datetime.date.today().isoformat()} by marionet {__version__}"),
    ]
    sections = {}
    validation = fields.get("validation")
    if validation:
        text = _table([(name, value) for name, value in validation.items()])
        if fields.get("validation_image"):
            text += f"\n\n![validation samples: reference, pose, result, ground truth]({fields['validation_image']})"
        sections["Validation (held-out pairs, during training)"] = text
    sections["Use"] = (
        "```python\nfrom marionet.inference.pipeline import PoseToVideoPipeline\n\n"
        "pipe = PoseToVideoPipeline.from_pretrained(\"path/to/this/folder\")\n"
        "video = pipe(\"reference.png\", \"poses.mp4\", num_inference_steps=25).frames[0]\n```\n\n"
        "or `marionet animate --model path/to/this/folder --ref reference.png --pose poses.mp4 --out out.mp4`.")
    if fields.get("notes"):
        sections["Notes"] = fields["notes"]
    if fields.get("config"):
        sections["Training config"] = f"```yaml\n{fields['config'].rstrip()}\n```"
    text = render_card("marionet " + ("video" if video else "image") + " model",
                       "A marionet pose-to-video model folder: ReferenceNet, denoising UNet, Pose Guider"
                       + (", motion modules" if video else "") + ", VAE, CLIP image encoder and the scheduler it "
                       "was trained with.", rows, sections, pipeline_tag="image-to-video")
    return write_text(Path(out_dir) / "README.md", text)


def converted_folder_card(out_dir, what: str, source, command: str, rows: list[tuple[str, object]] = (),
                          notes: str | None = None) -> Path:
    """README.md for a folder written by a converter (`marionet convert ...`)."""
    from .. import __version__

    facts = [("converted from", source), ("command", f"`{command}`"), *rows,
             ("written", f"{datetime.date.today().isoformat()} by marionet {__version__}")]
    text = render_card(what, f"Converted offline by `marionet convert` from weights that already existed; the "
                             f"numbers are unchanged (the converters load every key exactly).", facts,
                       {"Notes": notes} if notes else None)
    return write_text(Path(out_dir) / "README.md", text)
