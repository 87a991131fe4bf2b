"""The SD1.5-family architecture in one place: configs of the UNet, VAE, CLIP ViT-L/14 image encoder, Pose Guider
and AnimateDiff v2 motion module, and a builder of the whole component set with random weights.

Benchmarks build these (nothing is downloaded; random weights cost the same as trained ones) and the converters fall
back on them when no local config folder is given. Real weights always come with their own configs.
"""
from __future__ import annotations

UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215,
)
# sd-image-variations-diffusers' image_encoder: CLIP ViT-L/14 vision tower with a 768-d projection.
CLIP_VISION_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                          image_size=224, patch_size=14, projection_dim=768)
# mm_sd_v15_v2.ckpt converted to a diffusers MotionAdapter.
MOTION_ADAPTER_CONFIG = dict(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                             motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32,
                             use_motion_mid_block=True)
# ControlNet-openpose's conditioning embedding, which initialises the Pose Guider.
POSE_GUIDER_CONFIG = dict(block_out_channels=(16, 32, 96, 256), conditioning_embedding_channels=320)


def build_sd15_components(video: bool = False, seed: int = 0) -> dict:
    """Random-weight SD1.5-size components in the layout `PoseToVideoPipeline` takes: reference_unet,
    denoising_unet, pose_guider, vae, image_encoder, feature_extractor, scheduler [, motion_adapter]."""
    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .animator import clone_unet
    from .loading import clip_image_processor_class
    from .pose_guider import PoseGuider
    from .tiny import training_scheduler

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    parts = dict(reference_unet=clone_unet(unet), denoising_unet=unet, pose_guider=PoseGuider(**POSE_GUIDER_CONFIG),
                 vae=AutoencoderKL(**VAE_CONFIG),
                 image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VISION_CONFIG)),
                 feature_extractor=clip_image_processor_class()(size={"shortest_edge": 224},
                                                                crop_size={"height": 224, "width": 224}),
                 scheduler=training_scheduler())
    if video:
        parts["motion_adapter"] = MotionAdapter(**MOTION_ADAPTER_CONFIG)
    return parts
