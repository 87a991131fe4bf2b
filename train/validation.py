"""Validation during training: render held-out reference/pose pairs with the model being trained, score them against
the ground truth, write and log them.

Rendering goes through `PoseToVideoPipeline.from_animator` on the live weights, the pipeline the exported model
folder is used with, with the training scheduler and frame-noise correlation: what validation shows is what the
exported model produces for the same seed and steps (a test checks this).

Stage 1 writes an image grid (reference | pose | result | ground truth, one row per pair); stage 2 an mp4 and a GIF
with the same four panels per frame. Both go to output_dir/validation/ and to the trackers (TensorBoard by default),
together with the mean PSNR / SSIM of the results against the ground truth (`validation/psnr`, `validation/ssim`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..inference.metrics import SSIM_WINDOW, psnr, ssim
from ..inference.pipeline import PoseToVideoPipeline
from ..inference.sampling import to_uint8


@dataclass
class ValidationResult:
    step: int
    files: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)  # {"psnr": dB, "ssim": ...}, means over the pairs


def to_uint8_panel(images: torch.Tensor, signed: bool) -> np.ndarray:
    """(..., 3, H, W) float ([-1, 1] if signed, else [0, 1]) -> (..., H, W, 3) uint8."""
    images = (images + 1) / 2 if signed else images
    return to_uint8(images.clamp(0, 1).movedim(-3, -1))


def validation_pipeline(animator, frozen, frame_noise_correlation: float) -> PoseToVideoPipeline:
    pipe = PoseToVideoPipeline.from_animator(animator, frozen.vae, frozen.image_encoder, frozen.feature_extractor,
                                             frozen.scheduler, frame_noise_correlation=frame_noise_correlation)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render_items(pipe: PoseToVideoPipeline, items: list, num_inference_steps: int, guidance_scale: float,
                 seed: int) -> list[np.ndarray]:
    """uint8 (F, H, W, 3) results, one per held-out item (its reference crop and its poses), each from `seed`."""
    results = []
    for item in items:
        reference = to_uint8_panel(item["reference"], signed=True)
        poses = to_uint8_panel(item["pose"] if item["pose"].ndim == 4 else item["pose"][None], signed=False)
        frames = pipe(reference, poses, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                      generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
        results.append(to_uint8(frames))
    return results


def render_validation(animator, frozen, items: list, cfg, step: int, accelerator) -> ValidationResult:
    """Render every held-out item, score it, write the media under output_dir/validation/ and log everything."""
    out_dir = Path(cfg.output_dir) / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = animator.training
    animator.eval()
    try:
        with accelerator.autocast():
            pipe = validation_pipeline(animator, frozen, cfg.noise.frame_noise_correlation)
            results = render_items(pipe, items, cfg.validation.num_inference_steps,
                                   cfg.validation.guidance_scale, cfg.seed)
    finally:
        animator.train(was_training)

    rows, scores = [], {"psnr": [], "ssim": []}
    for item, result in zip(items, results):
        target = item["target"] if item["target"].ndim == 4 else item["target"][None]
        truth = to_uint8_panel(target, signed=True)
        poses = to_uint8_panel(item["pose"] if item["pose"].ndim == 4 else item["pose"][None], signed=False)
        reference = np.broadcast_to(to_uint8_panel(item["reference"], signed=True), truth.shape)
        scores["psnr"].append(psnr(result, truth))
        if min(truth.shape[1:3]) >= SSIM_WINDOW:
            scores["ssim"].append(ssim(result, truth))
        rows.append(np.concatenate([reference, poses, result, truth], axis=-2))  # side by side along the width
    outcome = ValidationResult(step, figures={k: float(np.mean(v)) for k, v in scores.items() if v})
    accelerator.log({f"validation/{name}": value for name, value in outcome.figures.items()}, step=step)

    if len(rows[0]) == 1:  # stage 1: one grid image
        grid = np.concatenate([row[0] for row in rows], axis=0)
        path = out_dir / f"step-{step:06d}.png"
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
        outcome.files.append(path)
        log_image(accelerator, "validation", grid, step)
    else:  # stage 2: the pairs stacked vertically, frame by frame
        from ..data.video import write_gif, write_video

        frames = np.concatenate(rows, axis=1)
        fps = 8.0
        for suffix, writer in ((".mp4", write_video), (".gif", write_gif)):
            path = out_dir / f"step-{step:06d}{suffix}"
            writer(path, list(frames), fps, overwrite=True)
            outcome.files.append(path)
        first = out_dir / f"step-{step:06d}.png"
        from PIL import Image

        with atomic_path(first) as tmp:
            Image.fromarray(frames[0]).save(tmp, format="PNG")
        outcome.files.append(first)
        log_image(accelerator, "validation_first_frame", frames[0], step)
        log_video(accelerator, "validation", frames, step, fps)
    return outcome


def log_image(accelerator, tag: str, image: np.ndarray, step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, image, step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(image)}, step=step)


def log_video(accelerator, tag: str, frames: np.ndarray, step: int, fps: float) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Video(frames.transpose(0, 3, 1, 2), fps=int(fps))}, step=step)
