"""Validation during training: sample held-out reference/pose pairs with the model being trained and log them.

A small DDIM loop of our own over the Animator's parts (encode_reference once, encode_pose once, denoise per step)
with the training scheduler, and classifier-free guidance over the reference exactly as inference does it:
the unconditional rows take the `drop_reference` path that reference dropout trained.

Stage 1 writes an image grid (reference | pose | result | ground truth, one row per pair); stage 2 an mp4 and a GIF
with the same four panels per frame. Both go to output_dir/validation/ and to the trackers (TensorBoard by default).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def sample(animator, frozen, reference: torch.Tensor, clip_image: torch.Tensor, pose: torch.Tensor,
           num_inference_steps: int, guidance_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Pixels in [-1, 1]: (B, 3, H, W) for (B, 3, H, W) poses, (B, 3, F, H, W) for (B, 3, F, H, W) poses."""
    from diffusers import DDIMScheduler

    from .core import vae_encode

    vae, device = frozen.vae, animator.device
    scheduler = DDIMScheduler.from_config(frozen.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    ref_latents = vae_encode(vae, reference.to(device, vae.dtype), None, sample=False).float()
    embeds = frozen.image_encoder(clip_image.to(device, frozen.image_encoder.dtype)).image_embeds.unsqueeze(1)
    embeds = embeds.float()
    batch = reference.shape[0]
    animator.encode_reference(ref_latents, embeds)
    pose_features = animator.encode_pose(pose.to(device))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (batch, 4) + tuple(pose.shape[2:-2]) + (pose.shape[-2] // factor, pose.shape[-1] // factor)
    latents = torch.randn(shape, generator=generator).to(device) * scheduler.init_noise_sigma

    guided = guidance_scale > 1.0
    dropped = None
    if guided:  # one batch of [unconditional ; conditional] rows; the bank and pose features tiled to match
        animator.reference_state.repeat_bank(2)
        pose_features = torch.cat([pose_features, pose_features])
        embeds = torch.cat([embeds, embeds])
        dropped = torch.arange(2 * batch, device=device) < batch
    for t in scheduler.timesteps:
        model_input = torch.cat([latents, latents]) if guided else latents
        prediction = animator.denoise(model_input, t, embeds, pose_features, dropped).float()
        if guided:
            unconditional, conditional = prediction.chunk(2)
            prediction = unconditional + guidance_scale * (conditional - unconditional)
        latents = scheduler.step(prediction, t, latents).prev_sample
    animator.reference_state.clear()

    video = latents.ndim == 5
    flat = latents.permute(0, 2, 1, 3, 4).flatten(0, 1) if video else latents
    pixels = torch.cat([vae.decode((chunk / vae.config.scaling_factor).to(vae.dtype)).sample
                        for chunk in flat.split(8)]).float()
    if video:
        pixels = pixels.unflatten(0, (batch, -1)).permute(0, 2, 1, 3, 4)
    return pixels.clamp(-1, 1).cpu()


def to_uint8(images: torch.Tensor, signed: bool) -> np.ndarray:
    """(..., 3, H, W) float -> (..., H, W, 3) uint8."""
    images = (images + 1) / 2 if signed else images
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).numpy()


def render_validation(animator, frozen, items: list, cfg, step: int, accelerator) -> list[Path]:
    """Sample every held-out item, write the media under output_dir/validation/ and log them; returns the files."""
    from ..data.atomic import atomic_path

    out_dir = Path(cfg.output_dir) / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(cfg.seed)  # the same starting noise at every validation
    was_training = animator.training
    animator.eval()
    rows = []
    with accelerator.autocast():
        for item in items:
            pose = item["pose"][None]
            if pose.ndim == 5:  # (1, F, 3, H, W) -> (1, 3, F, H, W)
                pose = pose.permute(0, 2, 1, 3, 4)
            result = sample(animator, frozen, item["reference"][None], item["clip_image"][None], pose,
                            cfg.validation.num_inference_steps, cfg.validation.guidance_scale, generator)[0]
            if result.ndim == 4:  # (3, F, H, W) -> (F, 3, H, W)
                result = result.permute(1, 0, 2, 3)
            reference = item["reference"].expand_as(item["target"])
            panels = [to_uint8(reference, True), to_uint8(item["pose"], False), to_uint8(result, True),
                      to_uint8(item["target"], True)]
            rows.append(np.concatenate(panels, axis=-2))  # side by side along the width
    animator.train(was_training)

    written = []
    if rows[0].ndim == 3:  # stage 1: one grid image
        grid = np.concatenate(rows, axis=0)
        path = out_dir / f"step-{step:06d}.png"
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
        written.append(path)
        log_image(accelerator, "validation", grid, step)
    else:  # stage 2: the pairs stacked vertically, frame by frame
        from ..data.video import write_gif, write_video

        frames = np.concatenate(rows, axis=1)
        fps = 8.0
        for suffix, writer in ((".mp4", write_video), (".gif", write_gif)):
            path = out_dir / f"step-{step:06d}{suffix}"
            writer(path, list(frames), fps, overwrite=True)
            written.append(path)
        log_image(accelerator, "validation_first_frame", frames[0], step)
        log_video(accelerator, "validation", frames, step, fps)
    return written


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
