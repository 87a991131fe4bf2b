"""Tiny, seeded components built from config, saved in the same folder layouts as real SD1.5-family weights.

Tests, benchmarks and the demo use these so that every code path — including loading from disk — is the one a
real SD1.5 folder goes through. Nothing here downloads anything.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .loading import clip_image_processor_class
from .pose_guider import PoseGuider

TINY_WIDTH = 32  # UNet first-block width == cross-attention (CLIP projection) width for the tiny set


def tiny_unet_config(block_out_channels=(32, 64), layers_per_block: int = 1, cross_attention_dim: int = TINY_WIDTH,
                     sample_size: int = 8, norm_num_groups: int | None = None, attention_heads: int = 8) -> dict:
    """attention_heads: heads in every transformer block (diffusers' UNet2DConditionModel reads its
    `attention_head_dim` as the number of heads)."""
    return dict(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=layers_per_block,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("CrossAttnDownBlock2D",) * len(block_out_channels),
        up_block_types=("CrossAttnUpBlock2D",) * len(block_out_channels),
        cross_attention_dim=cross_attention_dim, attention_head_dim=attention_heads,
        norm_num_groups=norm_num_groups or min(32, block_out_channels[0]),
    )


def tiny_vae_config(block_out_channels=(32, 32, 64, 64), norm_num_groups: int | None = None,
                    mid_block_attention: bool = True) -> dict:
    """Four blocks give SD's 8x downsampling, so pose images and latents relate exactly as in SD1.5.

    With as many groups as channels, GroupNorm removes every channel's mean — the colour — at each layer; models
    meant to learn (the demo's) use a few channels per group, as SD1.5's 128-channel layers with 32 groups do.
    """
    n = len(block_out_channels)
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=tuple(block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1, norm_num_groups=norm_num_groups or min(32, block_out_channels[0]), sample_size=64,
        mid_block_add_attention=mid_block_attention,
    )


def tiny_clip_config(image_size: int = 32, projection_dim: int = TINY_WIDTH) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=32, image_size=image_size, patch_size=4, projection_dim=projection_dim,
                            intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)


def training_scheduler(prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> DDIMScheduler:
    """SD1.5's DDIM schedule; with zero_terminal_snr, rescaled betas and trailing spacing (for v-prediction)."""
    extra = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing") if zero_terminal_snr else {}
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type, **extra)


def build_tiny_components(seed: int = 0, with_motion: bool = False, unet_channels=(32, 64),
                          vae_channels=(32, 32, 64, 64), layers_per_block: int = 1,
                          pose_guider_channels=(8, 16, 32, 64), clip_image_size: int = 32,
                          norm_num_groups: int | None = None, attention_heads: int = 8) -> dict:
    """A complete tiny set: unet, vae, image_encoder, feature_extractor, scheduler, pose_guider[, motion_adapter].

    norm_num_groups (UNet, VAE and motion modules) defaults to one channel per group at the first width, which is
    fine for plumbing tests; pass e.g. 8 for a tiny model that has to learn.
    """
    width = unet_channels[0]
    groups = norm_num_groups or min(32, width)

    def seeded(build):
        torch.manual_seed(seed)
        return build()

    parts = {
        "unet": seeded(lambda: UNet2DConditionModel(**tiny_unet_config(unet_channels, layers_per_block, width,
                                                                        norm_num_groups=groups,
                                                                        attention_heads=attention_heads))),
        "vae": seeded(lambda: AutoencoderKL(**tiny_vae_config(vae_channels, norm_num_groups=norm_num_groups))),
        "image_encoder": seeded(lambda: CLIPVisionModelWithProjection(tiny_clip_config(clip_image_size, width))),
        "feature_extractor": clip_image_processor_class()(
            size={"shortest_edge": clip_image_size}, crop_size={"height": clip_image_size, "width": clip_image_size}),
        "scheduler": training_scheduler(),
        "pose_guider": seeded(lambda: PoseGuider(block_out_channels=tuple(pose_guider_channels),
                                                 conditioning_embedding_channels=width)),
    }
    if with_motion:
        parts["motion_adapter"] = seeded(lambda: MotionAdapter(
            block_out_channels=tuple(unet_channels), motion_layers_per_block=layers_per_block,
            motion_num_attention_heads=2, motion_norm_num_groups=groups,
            motion_max_seq_length=32))
    return parts


def save_base_folder(parts: dict, out_dir) -> Path:
    """Save in the SD1.5 diffusers layout (unet/ vae/ image_encoder/ feature_extractor/ scheduler/ ...)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        part.save_pretrained(out / name)
    return out


def write_tiny_model(out_dir, with_motion: bool = False, seed: int = 0, **sizes) -> Path:
    """A complete random-weight model folder in the layout trained models are exported in.

    reference_unet/ denoising_unet/ pose_guider/ [motion_adapter/] vae/ image_encoder/ feature_extractor/ scheduler/
    """
    from .animator import Animator
    from .export import export_model_folder

    parts = build_tiny_components(seed=seed, with_motion=with_motion, **sizes)
    animator = Animator.from_base_unet(parts.pop("unet"), parts.pop("pose_guider"), parts.pop("motion_adapter", None))
    return export_model_folder(out_dir, animator, card={"produced_by": "marionet tiny-model (random weights)",
                                                        "seed": seed}, **parts)
