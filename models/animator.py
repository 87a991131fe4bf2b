"""`Animator`: ReferenceNet + denoising UNet + Pose Guider (+ optional motion modules) as one trainable module.

One module is what Accelerate (DDP, DeepSpeed ZeRO-2) prepares. Its forward is the public contract:

    animator(noisy_latents, timesteps, ref_latents, image_embeds, pose_images, drop_reference=None) -> prediction

images: latents (B, 4, h, w), poses (B, 3, H, W); video: latents (B, 4, F, h, w), poses (B, 3, F, H, W);
`ref_latents` (B, 4, h, w) are VAE latents already multiplied by the scaling factor; `image_embeds` (B, 1, D) is the
CLIP image embedding as one token; `drop_reference` (B,) marks rows that get no reference tokens and a zero CLIP
token — the unconditional path shared by training's reference dropout and inference's guidance.

Inference reuses the parts: `encode_reference` once per video, `encode_pose` once per video, `denoise` per step.

A *stock* Animator has no ReferenceNet (`reference_unet=None`): the denoising UNet + Pose Guider conditioned on the
CLIP token alone, the tiny analogue of SD1.5 + pose ControlNet + IP-Adapter that the zero-shot baseline is meant for.
Its folder's model_index.json says `"reference_net": false`; everything else (training, export, pipelines) is shared.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch import nn

from ..atomic import atomic_folder
from .attention import (ReferenceComplete, ReferenceState, check_reference_processors, install_reference_processors,
                        set_reference_kernel)
from .loading import offline_kwargs, require_dir
from .motion import checkpoint_transformers, is_motion_parameter, source_configs, split_motion_unet, to_motion_unet
from .pose_guider import ConvInAdder, PoseGuider

SUBFOLDERS = ("reference_unet", "denoising_unet", "pose_guider")


def has_reference_net(model_dir) -> bool:
    """False for a stock model folder (model_index.json says `"reference_net": false`), True otherwise."""
    index = Path(model_dir) / "model_index.json"
    return not index.is_file() or bool(json.loads(index.read_text()).get("reference_net", True))


def as_flags(drop_reference) -> tuple | None:
    """A drop mask ((B,) bool tensor, list or tuple) as Python bools: read once per call, not once per layer."""
    if drop_reference is None:
        return None
    if isinstance(drop_reference, torch.Tensor):
        return tuple(bool(flag) for flag in drop_reference.tolist())
    return tuple(bool(flag) for flag in drop_reference)


def clone_unet(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A second UNet with `unet`'s config and a copy of its weights (same dtype and device): how a base UNet
    becomes the ReferenceNet/denoising pair. Built on the meta device, so no time goes into a random init."""
    with torch.device("meta"):
        clone = UNet2DConditionModel.from_config(unet.config)
    clone = clone.to_empty(device=unet.device)
    if clone.dtype != unet.dtype:
        clone = clone.to(unet.dtype)
    clone.load_state_dict(unet.state_dict())
    return clone.train(unet.training)


def reference_tail_parameter_names(unet: UNet2DConditionModel, last_layer: str) -> set[str]:
    """Parameters of a ReferenceNet that only feed its unused output (computed after the last banked input).

    The last banked layer is the first self-attention of the last transformer block of the last up block; after its
    input (norm1's output) is banked, the forward stops, so that block's attention/feed-forward, the transformer's
    output projection and the UNet's output norm/conv are never computed and must not be trained.
    """
    block = last_layer[: -len(".attn1.processor")]
    transformer = block.rsplit(".transformer_blocks.", 1)[0]
    prefixes = [block + ".", transformer + ".proj_out.", transformer + ".norm_out.", "conv_norm_out.", "conv_out."]
    return {name for name, _ in unet.named_parameters()
            if any(name.startswith(p) for p in prefixes) and not name.startswith(block + ".norm1.")}


class Animator(nn.Module):
    """The trainable model. `denoising_unet` is a 2-D UNet (with `motion_adapter` to add motion modules), or a
    motion UNet built by `models.to_motion_unet`; the parts are used as given (never copied), so an Animator can
    also be a view over a pipeline's registered components. `reference_unet=None` makes a stock model (no
    ReferenceNet: the CLIP token is the only appearance input)."""

    def __init__(self, reference_unet: UNet2DConditionModel | None, denoising_unet, pose_guider: PoseGuider,
                 motion_adapter: MotionAdapter | None = None):
        super().__init__()
        if isinstance(denoising_unet, UNetMotionModel):
            if motion_adapter is not None:
                raise ValueError("the denoising UNet already has motion modules: pass no motion_adapter")
            source_configs(denoising_unet)  # a clear error now rather than at save time
        self.reference_unet = reference_unet
        self.denoising_unet = denoising_unet
        self.pose_guider = pose_guider
        self.reference_state = ReferenceState()
        self._pose_adder = ConvInAdder()
        self._hook = None
        self._wire_reference()
        if motion_adapter is not None:
            self.add_motion_adapter(motion_adapter)

    @classmethod
    def from_base_unet(cls, unet: UNet2DConditionModel, pose_guider: PoseGuider,
                       motion_adapter: MotionAdapter | None = None) -> "Animator":
        """Stage 1's starting point: the ReferenceNet is a copy of the base UNet, which becomes the denoising UNet."""
        return cls(clone_unet(unet), unet, pose_guider, motion_adapter)

    # ----------------------------------------------------------------------------------------------- structure
    def _wire_reference(self, kernel: str = "sdpa", slice_size=None) -> None:
        """(Re)install processors and the conv_in hook; needed again after the denoising UNet is replaced."""
        if self._hook is not None:
            self._hook.remove()
        self._hook = self.denoising_unet.conv_in.register_forward_hook(self._pose_adder)
        if self.reference_unet is None:  # stock model: plain attention, nothing banked or read
            self.reference_layers, self.last_reference_layer, self.reference_tail = [], None, set()
            return
        reference_layers = install_reference_processors(self.reference_unet, self.reference_state, role="write",
                                                        kernel=kernel, slice_size=slice_size)
        denoising_layers = install_reference_processors(self.denoising_unet, self.reference_state, role="read",
                                                        kernel=kernel, slice_size=slice_size)
        if set(reference_layers) != set(denoising_layers):
            raise ValueError("ReferenceNet and denoising UNet self-attention layers differ: "
                             f"{sorted(set(reference_layers) ^ set(denoising_layers))[:4]} ...")
        self.reference_layers = reference_layers
        self.last_reference_layer = reference_layers[-1]
        tail = reference_tail_parameter_names(self.reference_unet, self.last_reference_layer)
        for name, param in self.reference_unet.named_parameters():
            if name in tail:
                param.requires_grad_(False)
        self.reference_tail = tail

    def set_attention_kernel(self, kernel: str = "sdpa", slice_size=None, reinstall: bool = False) -> None:
        """Choose the reference processors' attention kernel ("sdpa", "xformers", "sliced"); `reinstall` first
        puts them back where another call replaced them (e.g. diffusers' xformers or slicing switches)."""
        if reinstall:
            self._wire_reference(kernel, slice_size)
        for unet in self._unets:
            set_reference_kernel(unet, kernel, slice_size)

    def check_reference_attention(self) -> None:
        """Before a forward: raise a message naming the cause if either UNet lost its reference processors (see
        models.attention); take them back if another Animator over the same modules wired them to its own state."""
        if not self.has_reference_net:
            return
        check_reference_processors(self.reference_unet, self.reference_layers, "ReferenceNet")
        check_reference_processors(self.denoising_unet, self.reference_layers, "denoising UNet")
        processor = self.denoising_unet.attn_processors[self.last_reference_layer]
        if processor.state is not self.reference_state:
            self._wire_reference(processor.kernel, processor.slice_size)

    @property
    def unet_config(self) -> dict:
        """The 2-D denoising UNet's config (what `denoising_unet/` holds on disk)."""
        if self.is_video_model:
            return source_configs(self.denoising_unet)["unet"]
        return dict(self.denoising_unet.config)

    @property
    def motion_adapter_config(self) -> dict | None:
        return source_configs(self.denoising_unet)["motion_adapter"] if self.is_video_model else None

    @property
    def has_reference_net(self) -> bool:
        return self.reference_unet is not None

    @property
    def _unets(self) -> tuple:
        return tuple(unet for unet in (self.reference_unet, self.denoising_unet) if unet is not None)

    @property
    def is_video_model(self) -> bool:
        return isinstance(self.denoising_unet, UNetMotionModel)

    @property
    def dtype(self) -> torch.dtype:
        return self.denoising_unet.dtype

    @property
    def device(self) -> torch.device:
        return self.denoising_unet.device

    def add_motion_adapter(self, adapter: MotionAdapter) -> None:
        """Turn the denoising UNet into a motion UNet, keeping its weights and the reference attention."""
        if self.is_video_model:
            raise ValueError("the denoising UNet already has motion modules")
        self.denoising_unet = to_motion_unet(self.denoising_unet, adapter)
        self._wire_reference()

    def freeze_except_motion(self) -> list[str]:
        """Stage 2: only motion-module parameters stay trainable. Returns their names."""
        if not self.is_video_model:
            raise ValueError("no motion modules to train: add a motion adapter first")
        trainable = []
        for name, param in self.named_parameters():
            keep = name.startswith("denoising_unet.") and is_motion_parameter(name)
            param.requires_grad_(keep)
            if keep:
                trainable.append(name)
        return trainable

    def enable_gradient_checkpointing(self) -> None:
        """diffusers' checkpointing on both UNets; for a motion UNet also its transformers and motion modules,
        which diffusers leaves out (see `models.motion.checkpoint_transformers`)."""
        for unet in self._unets:
            unet.enable_gradient_checkpointing()
        if self.is_video_model:
            checkpoint_transformers(self.denoising_unet)

    # ----------------------------------------------------------------------------------------------- compute
    def encode_reference(self, ref_latents: torch.Tensor, image_embeds: torch.Tensor) -> None:
        """Run the ReferenceNet at timestep 0 on the clean reference; fills the bank the denoising UNet reads
        (a stock model has none: its bank stays empty)."""
        self.check_reference_attention()
        unet = self.reference_unet
        state = self.reference_state
        state.bank, state.projected = {}, {}
        if unet is None:
            return
        state.stop_after = self.last_reference_layer
        timesteps = torch.zeros(ref_latents.shape[0], device=ref_latents.device, dtype=torch.long)
        try:
            unet(ref_latents.to(unet.dtype), timesteps, encoder_hidden_states=image_embeds.to(unet.dtype))
            raise RuntimeError("the ReferenceNet forward ended without reaching its last self-attention layer")
        except ReferenceComplete:
            pass
        finally:
            state.stop_after = None

    def encode_pose(self, pose_images: torch.Tensor) -> torch.Tensor:
        """Pose Guider features laid out for conv_in: (B, C, h, w), or (B*F, C, h, w) for (B, 3, F, H, W) poses."""
        if pose_images.ndim == 5:
            b, c, f, h, w = pose_images.shape
            pose_images = pose_images.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        return self.pose_guider(pose_images)

    def denoise(self, noisy_latents: torch.Tensor, timesteps, image_embeds: torch.Tensor,
                pose_features: torch.Tensor | None, drop_reference: torch.Tensor | None = None) -> torch.Tensor:
        """One denoising UNet call reading the current bank (see `encode_reference`)."""
        unet = self.denoising_unet
        batch = noisy_latents.shape[0]
        timesteps = torch.as_tensor(timesteps, device=noisy_latents.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        dropped = as_flags(drop_reference)
        if dropped is not None:
            mask = torch.tensor(dropped, device=image_embeds.device)
            image_embeds = torch.where(mask[:, None, None], torch.zeros_like(image_embeds), image_embeds)
        self.reference_state.samples, self.reference_state.dropped = batch, dropped
        image_embeds = image_embeds.to(unet.dtype)

        video = noisy_latents.ndim == 5
        if video:
            frames = noisy_latents.shape[2]
            image_embeds = image_embeds.repeat_interleave(frames, dim=0)  # per frame, batch-major
        if video and not self.is_video_model:  # image model on a video: frames become batch rows
            b, c, f, h, w = noisy_latents.shape
            sample = noisy_latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
            timesteps = timesteps.repeat_interleave(f)
        elif not video and self.is_video_model:
            raise ValueError("a video model needs (B, 4, F, h, w) latents")
        else:
            sample = noisy_latents

        self._pose_adder.residual = pose_features
        try:
            out = unet(sample.to(unet.dtype), timesteps, encoder_hidden_states=image_embeds).sample
        finally:
            self._pose_adder.residual = None
        if video and not self.is_video_model:
            out = out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
        return out

    def forward(self, noisy_latents, timesteps, ref_latents, image_embeds, pose_images, drop_reference=None):
        self.encode_reference(ref_latents, image_embeds)
        pose_features = self.encode_pose(pose_images)
        out = self.denoise(noisy_latents, timesteps, image_embeds, pose_features, drop_reference)
        dropped = as_flags(drop_reference)
        if dropped is not None and torch.is_grad_enabled() and all(dropped) and self.has_reference_net:
            # Every row dropped: keep the ReferenceNet in the graph with a zero contribution so DDP still sees a
            # gradient for each of its parameters (no find_unused_parameters needed).
            out = out + 0.0 * sum(tokens.sum() for tokens in self.reference_state.bank.values())
        return out

    # ----------------------------------------------------------------------------------------------- save / load
    def save_pretrained(self, save_directory, safe_serialization: bool = True) -> Path:
        """Write reference_unet/ (not for a stock model), denoising_unet/ (2-D weights), pose_guider/ and
        motion_adapter/ (if any).

        Each subfolder is written beside its final place and moved in when complete, so an interrupted save never
        leaves a folder that looks complete.
        """
        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        parts = {"pose_guider": self.pose_guider}
        if self.has_reference_net:
            parts["reference_unet"] = self.reference_unet
        if self.is_video_model:
            unet2d, adapter = split_motion_unet(self.denoising_unet)
            parts.update(denoising_unet=unet2d, motion_adapter=adapter)
        else:
            parts["denoising_unet"] = self.denoising_unet
        for name, model in parts.items():
            with atomic_folder(root / name) as tmp:
                model.save_pretrained(tmp, safe_serialization=safe_serialization)
        return root

    @classmethod
    def from_pretrained(cls, model_dir, torch_dtype: torch.dtype | None = None) -> "Animator":
        root = require_dir(model_dir, "model folder", must_contain=())
        kwargs = dict(offline_kwargs(), torch_dtype=torch_dtype) if torch_dtype else offline_kwargs()
        stock = not has_reference_net(root)
        for name in (SUBFOLDERS[1:] if stock else SUBFOLDERS):
            require_dir(root / name, f"model folder {root} is missing its {name}")
        reference = None if stock else UNet2DConditionModel.from_pretrained(root / "reference_unet", **kwargs)
        denoising = UNet2DConditionModel.from_pretrained(root / "denoising_unet", **kwargs)
        pose_guider = PoseGuider.from_pretrained(root / "pose_guider", **kwargs)
        adapter = None
        if (root / "motion_adapter").exists():
            require_dir(root / "motion_adapter", f"model folder {root}: motion_adapter")
            adapter = MotionAdapter.from_pretrained(root / "motion_adapter", **kwargs)
        return cls(reference, denoising, pose_guider, adapter)
