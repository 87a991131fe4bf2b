"""AnimateDiff temporal layers for the denoising UNet: conversion, per-frame GroupNorm, freezing, splitting.

The original AnimateDiff code (and every Animate Anyone reproduction built on it) normalises each frame separately
in the motion modules' input GroupNorm, while diffusers' `AnimateDiffTransformer3D` normalises over all frames at
once. Weights such as `mm_sd_v15_v2.ckpt` were trained with per-frame statistics, so we swap in a per-frame
GroupNorm (same parameters, same state-dict keys) to give those weights the numbers they were trained to give.
"""
from __future__ import annotations

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch.utils.checkpoint import checkpoint
from torch import nn
from torch.nn import functional as F


class PerFrameGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are computed per frame for (B, C, F, H, W) inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x)
        b, c, f, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        frames = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return frames.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def use_per_frame_norm(unet: nn.Module) -> int:
    """Make every motion module's input GroupNorm per-frame; returns how many were changed."""
    changed = 0
    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D) and type(module.norm) is nn.GroupNorm:
            module.norm.__class__ = PerFrameGroupNorm  # same parameters and keys, different statistics
            changed += 1
    return changed


def to_motion_unet(unet: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """A `UNetMotionModel` with `unet`'s spatial weights and `adapter`'s motion modules (per-frame GroupNorm).

    The two source configs are kept on the result (`source_configs`), so it can be split back into the model
    folder's `denoising_unet/` + `motion_adapter/` (the motion UNet's own config does not hold everything the 2-D
    UNet's does).
    """
    motion_unet = UNetMotionModel.from_unet2d(unet, adapter)
    if motion_unet.dtype != unet.dtype or motion_unet.device != unet.device:
        motion_unet.to(dtype=unet.dtype, device=unet.device)
    use_per_frame_norm(motion_unet)
    motion_unet.marionet_source_configs = {"unet": dict(unet.config), "motion_adapter": dict(adapter.config)}
    return motion_unet


def source_configs(motion_unet: UNetMotionModel) -> dict:
    """{"unet": 2-D UNet config, "motion_adapter": MotionAdapter config} of a motion UNet built by `to_motion_unet`."""
    configs = getattr(motion_unet, "marionet_source_configs", None)
    if configs is None:
        raise ValueError("this UNetMotionModel was not built by marionet.models.to_motion_unet, so its 2-D UNet and "
                         "MotionAdapter configs are unknown: pass the 2-D UNet and the MotionAdapter instead")
    return configs


def is_motion_parameter(name: str) -> bool:
    return "motion_modules" in name


def split_motion_unet(motion_unet: UNetMotionModel):
    """Split a motion UNet into a `UNet2DConditionModel` (spatial weights) and a `MotionAdapter` (temporal)."""
    configs = source_configs(motion_unet)
    state = motion_unet.state_dict()
    unet = UNet2DConditionModel.from_config(configs["unet"])
    unet.load_state_dict({k: v for k, v in state.items() if not is_motion_parameter(k)}, strict=True)
    adapter = MotionAdapter.from_config(configs["motion_adapter"])
    adapter.load_state_dict({k: v for k, v in state.items() if is_motion_parameter(k)}, strict=True)
    if motion_unet.dtype != unet.dtype:
        unet, adapter = unet.to(motion_unet.dtype), adapter.to(motion_unet.dtype)
    return unet, adapter


def checkpoint_transformers(unet: UNetMotionModel) -> int:
    """Activation checkpointing for the spatial transformers and motion modules of a motion UNet.

    diffusers' `UNetMotionModel.enable_gradient_checkpointing()` checkpoints only the resnets of its blocks, so every
    attention and motion module keeps its activations for backward: at 512², 24 frames that is most of the ~24 GiB
    `marionet bench memory` counts. Each such module's forward is wrapped (an instance attribute, as accelerate's
    hooks do) to recompute in backward when gradients are on. Returns how many modules were wrapped.
    """
    wrapped = 0
    for module in unet.modules():
        if isinstance(module, (Transformer2DModel, AnimateDiffTransformer3D)) and "forward" not in vars(module):
            def forward(*args, _forward=module.forward, **kwargs):
                if torch.is_grad_enabled():
                    return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
                return _forward(*args, **kwargs)

            module.forward = forward
            wrapped += 1
    return wrapped
