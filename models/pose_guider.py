"""Pose Guider: a small conv stack that turns an RGB skeleton image into features added after the UNet's conv_in.

The layout (conv_in, pairs of 3x3 / 3x3-stride-2 convs with SiLU, zero-initialised conv_out) matches ControlNet's
`controlnet_cond_embedding`, so a ControlNet-openpose checkpoint can initialise everything but the output conv.
A zero output conv means the denoising UNet behaves exactly as before training starts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class PoseGuider(ModelMixin, ConfigMixin):
    """RGB skeleton in [0, 1] (N, 3, H, W) -> features (N, C, H / 2^k, W / 2^k), k = len(block_out_channels) - 1."""

    @register_to_config
    def __init__(self, conditioning_channels: int = 3, block_out_channels: tuple = (16, 32, 96, 256),
                 conditioning_embedding_channels: int = 320):
        super().__init__()
        channels = list(block_out_channels)
        self.conv_in = nn.Conv2d(conditioning_channels, channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(channels[-1], conditioning_embedding_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, pose_images: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(pose_images.to(self.conv_in.weight.dtype)))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)

    @classmethod
    def from_controlnet(cls, controlnet, conditioning_embedding_channels: int | None = None) -> "PoseGuider":
        """A Pose Guider whose conv stack starts from a ControlNet's conditioning embedding; conv_out stays zero."""
        embedding = controlnet.controlnet_cond_embedding
        guider = cls(
            conditioning_channels=embedding.conv_in.in_channels,
            block_out_channels=tuple([embedding.conv_in.out_channels] + [b.out_channels for b in embedding.blocks[1::2]]),
            conditioning_embedding_channels=conditioning_embedding_channels or embedding.conv_out.out_channels,
        )
        state = {k: v for k, v in embedding.state_dict().items() if not k.startswith("conv_out.")}
        missing, unexpected = guider.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {"conv_out.weight", "conv_out.bias"}:
            raise ValueError(f"ControlNet conditioning embedding does not fit: missing {missing}, unexpected {unexpected}")
        return guider


class ConvInAdder:
    """Forward hook on a UNet's `conv_in` that adds a prepared residual (the Pose Guider's output) to its output.

    A hook is the public way to add features at that point without copying or patching the UNet's forward.
    The residual must be laid out like conv_in's output: (B, C, h, w) for images, (B*F, C, h, w) batch-major
    for video frames.
    """

    def __init__(self):
        self.residual: torch.Tensor | None = None

    def __call__(self, module, inputs, output):
        if self.residual is None:
            return output
        if self.residual.shape != output.shape:
            raise ValueError(f"pose features {tuple(self.residual.shape)} do not match conv_in output "
                             f"{tuple(output.shape)}: pose image size must be latent size x the guider's factor")
        return output + self.residual.to(output.dtype)
