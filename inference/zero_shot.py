"""The zero-shot baseline: training-free pose transfer by cross-image attention, as a diffusers pipeline.

Every trained model is compared against this method. Per denoising step:

1. **source pass** (`ReferenceState.mode = "write"`): the source image's latent, noised to the current timestep, goes
   through the same UNet; every spatial self-attention layer banks its input tokens;
2. **target pass** (`mode = "swap"`): the image being generated goes through ControlNet (target pose) + UNet, and in
   the chosen self-attention layers the queries attend to the *source* tokens only (keys/values from the bank),
   with a softmax temperature;
3. scheduler step.

Two backbones run the same loop:

- **stock**: SD1.5 UNet + ControlNet-openpose (+ IP-Adapter, the source image as image prompt), text prompt empty;
- **trained**: our model's denoising UNet + Pose Guider on its unconditional-reference path (zero CLIP token, no
  ReferenceNet bank), so zero-shot and trained results come from exactly the same weights and pose conditioning.

The method's switches (`ZeroShotOptions`): swap on/off, the noise added to the source (fresh Gaussian, the generated
image's previous noise prediction, or the source pass's own previous prediction), the temperature, which layers swap
and over which part of the trajectory. Guidance is 1.0 (off) by default; when it is turned on, unconditional rows
have no image prompt *and* no cross-image attention (the trained model's own unconditional path), so guidance
extrapolates towards the source appearance.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNetMotionModel
from diffusers.loaders import IPAdapterMixin

from ..models.attention import (ReferenceAttnProcessor, ReferenceState, install_reference_processors,
                              spatial_self_attention_names)
from ..models.loading import MissingWeightsError, offline_kwargs, require_dir, require_file
from ..models.pose_guider import ConvInAdder

SOURCE_NOISES = ("random", "previous-target", "previous-source")
LAYER_PARTS = {"encoder": "down_blocks", "mid": "mid_block", "decoder": "up_blocks"}
STUDY_TEMPERATURE = 1.3


@dataclass
class ZeroShotOptions:
    """The method's switches (defaults: the full method as the study ran it, guidance off).

    swap: cross-image attention on (False: plain ControlNet (+IP-Adapter) sampling, no source pass at all).
    source_noise: noise added to the source latent each step — "random" (fresh Gaussian every step),
        "previous-target" (the generated image's noise prediction from the previous step) or "previous-source"
        (the source pass's own noise prediction from the previous step); fresh Gaussian noise at the first step.
    temperature: swapped attention computes softmax(q.k * scale / temperature): > 1 flattens (each query spreads
        over more source tokens), < 1 sharpens, 1 is plain attention. The study's value 1.3 is used as this divisor.
    swap_layers: "all", "encoder", "mid", "decoder" or "+"-joined parts, optionally ":" and the latent-resolution
        divisors to keep, e.g. "decoder:1,2" (decoder layers at full and half latent resolution); or a set of
        processor names.
    swap_steps: (start, end) fractions of the denoising steps that swap: step i of N swaps when start <= i/N < end.
    """

    swap: bool = True
    source_noise: str = "previous-target"
    temperature: float = STUDY_TEMPERATURE
    swap_layers: object = "all"
    swap_steps: tuple = (0.0, 1.0)

    def validate(self) -> "ZeroShotOptions":
        if self.source_noise not in SOURCE_NOISES:
            raise ValueError(f"source_noise must be one of {SOURCE_NOISES}, got {self.source_noise!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        start, end = (float(x) for x in self.swap_steps)
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"swap_steps must satisfy 0 <= start < end <= 1, got {self.swap_steps}")
        if isinstance(self.swap_layers, str):
            parse_swap_layers(self.swap_layers)
        return self

    def swaps_at(self, step: int, num_steps: int) -> bool:
        start, end = self.swap_steps
        return self.swap and start <= step / num_steps < end


def parse_swap_steps(text: str) -> tuple[float, float]:
    """"START:END" fractions of the trajectory, e.g. "0:0.6" (the noisiest 60% of the steps)."""
    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"swap steps must look like START:END with fractions in [0, 1], got {text!r}") from None
    return start, end


def layer_resolution_divisor(name: str, num_blocks: int) -> int:
    """How many times smaller than the latent a spatial attention layer's feature map is."""
    part, *rest = name.split(".")
    if part == "mid_block":
        return 2 ** (num_blocks - 1)
    index = int(rest[0])
    return 2 ** index if part == "down_blocks" else 2 ** (num_blocks - 1 - index)


def parse_swap_layers(spec: str) -> tuple[tuple[str, ...], set[int] | None]:
    """"decoder:1,2" -> (("up_blocks",), {1, 2}); raises ValueError naming the problem."""
    parts_text, _, divisors_text = spec.partition(":")
    parts = parts_text.split("+")
    if not parts_text or any(p != "all" and p not in LAYER_PARTS for p in parts):
        raise ValueError(f"swap layers {spec!r}: parts must be all, encoder, mid or decoder (joined by +)")
    prefixes = tuple(LAYER_PARTS.values()) if "all" in parts else tuple(LAYER_PARTS[p] for p in parts)
    if not divisors_text:
        return prefixes, None
    try:
        divisors = {int(d) for d in divisors_text.split(",")}
    except ValueError:
        raise ValueError(f"swap layers {spec!r}: resolution divisors must be integers like 1,2") from None
    return prefixes, divisors


def select_swap_layers(unet, spec) -> set[str]:
    """Processor names of the spatial self-attention layers that swap (see `ZeroShotOptions.swap_layers`)."""
    names = spatial_self_attention_names(unet)
    if not isinstance(spec, str):
        chosen = set(spec)
        unknown = chosen - set(names)
        if unknown:
            raise ValueError(f"not spatial self-attention layers of this UNet: {sorted(unknown)[:3]}")
        return chosen
    prefixes, divisors = parse_swap_layers(spec)
    chosen = {n for n in names if n.startswith(prefixes)}
    if divisors is not None:
        blocks = len(unet.config.block_out_channels)
        chosen = {n for n in chosen if layer_resolution_divisor(n, blocks) in divisors}
    if not chosen:
        raise ValueError(f"swap layers {spec!r} selects no self-attention layer of this UNet")
    return chosen


def as_epsilon(scheduler, model_output: torch.Tensor, sample: torch.Tensor, t) -> torch.Tensor:
    """The noise a model output stands for, whatever the scheduler's prediction type."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return model_output
    alpha = scheduler.alphas_cumprod.to(sample.device)[int(t)].to(sample.dtype)
    if kind == "v_prediction":
        return alpha.sqrt() * model_output + (1 - alpha).sqrt() * sample
    if kind == "sample":
        return (sample - alpha.sqrt() * model_output) / (1 - alpha).sqrt().clamp(min=1e-8)
    raise ValueError(f"unsupported prediction type {kind!r}")


def to_uint8_frames(images) -> np.ndarray:
    """uint8 (F, H, W, 3) from an (H, W, 3) / (F, H, W, 3) array or a PIL image / list of them."""
    if isinstance(images, (list, tuple)):
        return np.stack([to_uint8_frames(image)[0] for image in images])
    array = np.array(images.convert("RGB")) if hasattr(images, "convert") else np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images (H, W, 3) or (F, H, W, 3), got {array.dtype} {array.shape}")
    return array


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    if frames.shape[1:3] == (height, width):
        return frames
    from .io import resize

    return np.stack([resize(frame, width, height) for frame in frames])


class ZeroShotPoseTransferPipeline(DiffusionPipeline, IPAdapterMixin):
    """Cross-image-attention pose transfer on a stock (ControlNet) or trained (Pose Guider) backbone.

    Exactly one of `controlnet` / `pose_guider` conditions on the target pose. `unet` may be a `UNetMotionModel`
    (trained video backbone). IP-Adapter (stock backbone only) is loaded with `load_ip_adapter`, after which the
    swap processors are re-installed on the self-attention layers (loading rebuilds every processor).
    """

    model_cpu_offload_seq = "image_encoder->unet->vae"
    _optional_components = ["controlnet", "pose_guider", "image_encoder", "feature_extractor"]

    def __init__(self, vae, unet, scheduler, controlnet=None, pose_guider=None, image_encoder=None,
                 feature_extractor=None):
        super().__init__()
        if (controlnet is None) == (pose_guider is None):
            raise ValueError("give exactly one pose conditioner: controlnet (stock) or pose_guider (trained)")
        if not hasattr(scheduler, "add_noise") or not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(f"{type(scheduler).__name__} cannot noise the source latent: use DDIM or DDPM")
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, controlnet=controlnet,
                              pose_guider=pose_guider, image_encoder=image_encoder,
                              feature_extractor=feature_extractor)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.reference_state = ReferenceState()
        self.prompt_embeds = None  # the empty-prompt embedding; zeros when no text encoder was given
        self._pose_adder = None
        if pose_guider is not None:
            self._pose_adder = ConvInAdder()
            unet.conv_in.register_forward_hook(self._pose_adder)
        self._install_swap_processors()

    # ------------------------------------------------------------------------------------------- construction
    def _install_swap_processors(self) -> None:
        # role=None: the processors follow reference_state.mode ("write" on the source pass, "swap" on the target).
        install_reference_processors(self.unet, self.reference_state, role=None)

    def load_ip_adapter(self, *args, **kwargs):
        if self.pose_guider is not None:
            raise ValueError("the trained backbone has no IP-Adapter path (its reference is dropped)")
        # The loader re-creates each self-attention processor from its class with no arguments: hand it defaults.
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.unet.set_attn_processor({name: AttnProcessor2_0() if isinstance(proc, ReferenceAttnProcessor) else proc
                                      for name, proc in self.unet.attn_processors.items()})
        super().load_ip_adapter(*args, **kwargs)
        self._install_swap_processors()

    @property
    def has_ip_adapter(self) -> bool:
        return getattr(self.unet, "encoder_hid_proj", None) is not None

    @property
    def is_video_backbone(self) -> bool:
        return isinstance(self.unet, UNetMotionModel)

    @classmethod
    def from_stock(cls, base_dir, controlnet_dir, ip_adapter=None, image_encoder_dir=None,
                   torch_dtype: torch.dtype | None = None) -> "ZeroShotPoseTransferPipeline":
        """SD1.5 folder (unet/ vae/ scheduler/ [text_encoder/ tokenizer/ image_encoder/ feature_extractor/]) +
        a ControlNet folder + optionally an IP-Adapter file (.bin / .safetensors) and its CLIP image encoder."""
        from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

        kwargs = dict(offline_kwargs(), **({"torch_dtype": torch_dtype} if torch_dtype else {}))
        base = require_dir(base_dir, "SD1.5 base folder", must_contain=())
        for part in ("unet", "vae", "scheduler"):
            require_dir(base / part, f"SD1.5 base folder {base} is missing its {part}",
                        must_contain=("scheduler_config.json",) if part == "scheduler" else ("config.json",))
        cn_dir = require_dir(controlnet_dir, "ControlNet folder")
        unet = UNet2DConditionModel.from_pretrained(base / "unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(base / "vae", **kwargs)
        controlnet = ControlNetModel.from_pretrained(cn_dir, **kwargs)
        # SD1.5 ships PNDM; the source is noised through alphas_cumprod, so sample with DDIM on the same betas.
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(base / "scheduler"))
        image_encoder = feature_extractor = None
        if ip_adapter is not None:
            ip_file = require_file(ip_adapter, "IP-Adapter weights")
            if ip_file.suffix not in (".bin", ".safetensors", ".pt", ".pth"):
                raise MissingWeightsError(f"IP-Adapter weights: {ip_file} is not a .bin or .safetensors file")
            encoder_dir = Path(image_encoder_dir) if image_encoder_dir else base / "image_encoder"
            encoder_dir = require_dir(encoder_dir, "IP-Adapter image encoder folder (--image-encoder)")
            image_encoder, feature_extractor = _load_image_encoder(encoder_dir, base, kwargs)
        pipe = cls(vae=vae, unet=unet, scheduler=scheduler, controlnet=controlnet, image_encoder=image_encoder,
                   feature_extractor=feature_extractor)
        pipe.prompt_embeds = _empty_prompt_embeds(base, unet.config.cross_attention_dim, kwargs)
        if ip_adapter is not None:
            pipe.load_ip_adapter(str(ip_file.parent), subfolder="", weight_name=ip_file.name,
                                 image_encoder_folder=None, local_files_only=True)
        return pipe

    @classmethod
    def from_model_folder(cls, model_dir, torch_dtype: torch.dtype | None = None) -> "ZeroShotPoseTransferPipeline":
        """Our trained model folder (models/export.py layout): denoising UNet [+ motion] + Pose Guider + vae/
        scheduler/. The ReferenceNet and image encoder are not used: the reference is dropped."""
        from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel

        from ..models.motion import to_motion_unet
        from ..models.pose_guider import PoseGuider

        root = require_dir(model_dir, "model folder", must_contain=())
        for part in ("denoising_unet", "pose_guider", "vae"):
            require_dir(root / part, f"model folder {root} is missing its {part}")
        require_dir(root / "scheduler", f"model folder {root} is missing its scheduler",
                    must_contain=("scheduler_config.json",))
        kwargs = dict(offline_kwargs(), **({"torch_dtype": torch_dtype} if torch_dtype else {}))
        # The ReferenceNet is never used (the reference is dropped): load only what the method runs, built exactly
        # as `Animator.from_pretrained` builds it (motion modules with per-frame GroupNorm).
        unet = UNet2DConditionModel.from_pretrained(root / "denoising_unet", **kwargs)
        if (root / "motion_adapter").exists():
            require_dir(root / "motion_adapter", f"model folder {root}: motion_adapter")
            unet = to_motion_unet(unet, MotionAdapter.from_pretrained(root / "motion_adapter", **kwargs))
        pose_guider = PoseGuider.from_pretrained(root / "pose_guider", **kwargs)
        vae = AutoencoderKL.from_pretrained(root / "vae", **kwargs)
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(root / "scheduler"))
        pipe = cls(vae=vae, unet=unet, scheduler=scheduler, pose_guider=pose_guider)
        cross = unet.config.cross_attention_dim
        pipe.prompt_embeds = torch.zeros(1, 1, cross, dtype=vae.dtype)  # the zero CLIP token
        index = root / "model_index.json"
        pipe.frame_noise_correlation = float(json.loads(index.read_text()).get("frame_noise_correlation", 0.0)
                                             if index.is_file() else 0.0)
        return pipe

    # ------------------------------------------------------------------------------------------- pieces
    def _encode_source(self, source: np.ndarray, height: int, width: int) -> torch.Tensor:
        from .io import fit_reference

        image = fit_reference(to_uint8_frames(source)[0], width, height)[None]
        pixels = torch.from_numpy(np.array(image)).permute(0, 3, 1, 2).to(self.device, self.vae.dtype) / 127.5 - 1.0
        return self.vae.encode(pixels).latent_dist.mode() * self.vae.config.scaling_factor

    def _encode_ip_image(self, source: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """IP-Adapter image embeddings of the source and their unconditional counterpart, (1, 1, ...) each.

        Plain IP-Adapters take CLIP `image_embeds` (unconditional: zeros); Plus-style ones (Resampler) take the
        penultimate hidden states (unconditional: those of a zero image), as diffusers' own pipelines do.
        """
        from diffusers.models.embeddings import ImageProjection

        if self.image_encoder is None or self.feature_extractor is None:
            raise ValueError("an IP-Adapter is loaded but no image encoder / feature extractor is set")
        pixels = self.feature_extractor(source[0], return_tensors="pt").pixel_values
        pixels = pixels.to(self.device, self.image_encoder.dtype)
        layers = self.unet.encoder_hid_proj.image_projection_layers
        if len(layers) != 1:
            raise ValueError(f"exactly one IP-Adapter is supported, {len(layers)} are loaded")
        if isinstance(layers[0], ImageProjection):
            embeds = self.image_encoder(pixels).image_embeds
            uncond = torch.zeros_like(embeds)
        else:
            embeds = self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
            uncond = self.image_encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        return embeds[:, None], uncond[:, None]  # one image per IP-Adapter, as the UNet's projection expects

    def _predict(self, sample, t, context, ip_embeds, control, pose_features, control_scale):
        """One UNet call (with ControlNet residuals or Pose Guider features when given)."""
        kwargs = {}
        if ip_embeds is not None:
            kwargs["added_cond_kwargs"] = {"image_embeds": [ip_embeds]}
        if control is not None:
            down, mid = self.controlnet(sample, t, encoder_hidden_states=context, controlnet_cond=control,
                                        conditioning_scale=control_scale, return_dict=False)
            kwargs.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        if self._pose_adder is not None:
            self._pose_adder.residual = pose_features
        try:
            return self.unet(sample, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]
        finally:
            if self._pose_adder is not None:
                self._pose_adder.residual = None

    # ------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(self, source_image, pose_images, num_inference_steps: int = 25, guidance_scale: float = 1.0,
                 generator: torch.Generator | None = None, options: ZeroShotOptions | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 controlnet_conditioning_scale: float = 1.0, frame_batch_size: int = 8,
                 output_type: str = "np", latents: torch.Tensor | None = None, progress: bool = True):
        """Render `source_image`'s subject in each pose of `pose_images` (uint8 RGB skeletons, (H, W, 3) or
        (F, H, W, 3); the output has their size). Returns uint8 (F, H, W, 3), or latents for output_type="latent"
        ((F, 4, h, w); (1, 4, F, h, w) on a video backbone)."""
        options = (options or ZeroShotOptions()).validate()
        source = to_uint8_frames(source_image)[:1]
        poses = to_uint8_frames(pose_images)
        frames, height, width = poses.shape[:3]
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"pose images are {width}x{height}: both sides must be multiples of "
                             f"{self.vae_scale_factor}")
        if self.is_video_backbone:
            max_frames = self.unet.config.get("motion_max_seq_length", frames)
            if frames > max_frames:
                raise ValueError(f"{frames} frames exceed the motion modules' maximum of {max_frames}")
        device, dtype = self.device, self.unet.dtype

        context = prompt_embeds if prompt_embeds is not None else self.prompt_embeds
        if context is None:
            context = torch.zeros(1, 77, self.unet.config.cross_attention_dim)
        context = context.to(device, dtype)
        negative = negative_prompt_embeds.to(device, dtype) if negative_prompt_embeds is not None else context
        source_latents = self._encode_source(source, height, width).to(dtype)
        ip_embeds = uncond_ip = None
        if self.has_ip_adapter:
            ip_embeds, uncond_ip = (e.to(dtype) for e in self._encode_ip_image(source))
        pose_pixels = torch.from_numpy(np.array(poses)).permute(0, 3, 1, 2).to(device, dtype) / 255.0
        latent_shape = (height // self.vae_scale_factor, width // self.vae_scale_factor)

        if self.is_video_backbone:
            noise = self._initial_noise((1, 4, frames) + latent_shape, generator, latents)
            result = self._sample(noise, pose_pixels, source_latents, context, negative, (ip_embeds, uncond_ip),
                                  num_inference_steps, guidance_scale, generator, options,
                                  controlnet_conditioning_scale, progress)
            out_latents = result.permute(0, 2, 1, 3, 4).reshape(frames, 4, *latent_shape)
        else:
            # Image backbone: frames are independent rows sharing one initial noise (consistent identity/layout).
            shared = self._initial_noise((1, 4) + latent_shape, generator, latents)
            chunks = []
            for start in range(0, frames, max(1, frame_batch_size)):
                stop = min(frames, start + max(1, frame_batch_size))
                chunks.append(self._sample(shared.expand(stop - start, -1, -1, -1).clone(), pose_pixels[start:stop],
                                           source_latents, context, negative, (ip_embeds, uncond_ip),
                                           num_inference_steps, guidance_scale, generator, options,
                                           controlnet_conditioning_scale, progress))
            out_latents = torch.cat(chunks)
            result = out_latents
        if output_type == "latent":
            return result
        return self.decode(out_latents)

    def _initial_noise(self, shape, generator, latents):
        from diffusers.utils.torch_utils import randn_tensor

        if latents is not None:
            if tuple(latents.shape) != tuple(shape):
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            noise = latents.to(self.device, self.unet.dtype)
        else:
            noise = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
            rho = getattr(self, "frame_noise_correlation", 0.0)
            if len(shape) == 5 and rho > 0:  # a video backbone: its frames' noise as it was trained (model_index)
                common_shape = (shape[0], shape[1], 1) + tuple(shape[3:])
                common = randn_tensor(common_shape, generator=generator, device=self.device, dtype=self.unet.dtype)
                noise = common.expand(shape) if rho >= 1 else rho ** 0.5 * common + (1 - rho) ** 0.5 * noise
        return noise * self.scheduler.init_noise_sigma

    def _sample(self, latents, pose_pixels, source_latents, context, negative, ip_pair, num_inference_steps,
                guidance_scale, generator, options, control_scale, progress):
        """The denoising loop for one batch of target rows (F image rows, or one (1, 4, F, h, w) video)."""
        from diffusers.utils.torch_utils import randn_tensor

        ip_embeds, uncond_ip = ip_pair
        state, scheduler = self.reference_state, self.scheduler
        video = latents.ndim == 5
        rows = latents.shape[2] if video else latents.shape[0]  # spatial-attention rows of the target pass
        guided = guidance_scale > 1.0
        state.temperature = float(options.temperature)
        state.active_layers = select_swap_layers(self.unet, options.swap_layers)

        def repeat_rows(tensor, n):
            return tensor.expand(n, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor

        target_context = repeat_rows(context, rows)
        target_ip = repeat_rows(ip_embeds, rows) if ip_embeds is not None else None
        control = pose_pixels if self.controlnet is not None else None
        pose_features = self.pose_guider(pose_pixels) if self.pose_guider is not None else None
        if guided:
            target_context = torch.cat([repeat_rows(negative, rows), target_context])
            if target_ip is not None:
                target_ip = torch.cat([repeat_rows(uncond_ip, rows), target_ip])
            control = torch.cat([control] * 2) if control is not None else None
            pose_features = torch.cat([pose_features] * 2) if pose_features is not None else None

        scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = scheduler.timesteps
        extra = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
        previous_target = previous_source = None
        swapped_last_step = False
        bar = self.progress_bar(total=len(timesteps)) if progress else None
        try:
            for i, t in enumerate(timesteps):
                swap_now = options.swaps_at(i, len(timesteps))
                state.bank = {}
                state.dropped = None
                if swap_now:
                    # Source noise for this step: the previous prediction when asked for and available.
                    if options.source_noise == "previous-target" and previous_target is not None:
                        source_noise = previous_target
                    elif options.source_noise == "previous-source" and previous_source is not None \
                            and swapped_last_step:
                        source_noise = previous_source
                    else:
                        shape = (1, 4, 1) + tuple(source_latents.shape[-2:]) if video else source_latents.shape
                        source_noise = randn_tensor(shape, generator=generator, device=self.device,
                                                    dtype=latents.dtype)
                    clean = source_latents[:, :, None] if video else source_latents
                    source_sample = scheduler.add_noise(clean, source_noise, t.reshape(1))
                    source_sample = scheduler.scale_model_input(source_sample, t)
                    source_rows = source_sample.shape[2] if video else source_sample.shape[0]
                    state.mode = "write"
                    source_out = self._predict(source_sample, t, repeat_rows(context, source_rows),
                                               repeat_rows(ip_embeds, source_rows) if ip_embeds is not None
                                               else None, None, None, control_scale)
                    previous_source = as_epsilon(scheduler, source_out, source_sample, t)
                    if guided:  # [unconditional ; conditional] rows: only conditional rows see the source
                        state.repeat_bank(2)
                        state.dropped = torch.tensor([True] * source_rows + [False] * source_rows)
                    state.mode = "swap"
                else:
                    state.mode = "off"
                swapped_last_step = swap_now

                model_input = torch.cat([latents] * 2) if guided else latents
                model_input = scheduler.scale_model_input(model_input, t)
                out = self._predict(model_input, t, target_context, target_ip, control, pose_features,
                                    control_scale)
                if guided:
                    uncond, cond = out.chunk(2)
                    out = uncond + guidance_scale * (cond - uncond)
                previous_target = as_epsilon(scheduler, out, latents, t)
                latents = scheduler.step(out, t, latents, **extra, return_dict=False)[0]
                if bar is not None:
                    bar.update()
        finally:
            if bar is not None:
                bar.close()
            state.mode, state.bank, state.dropped = "off", {}, None
        return latents

    def decode(self, latents: torch.Tensor, chunk: int = 8) -> np.ndarray:
        """(F, 4, h, w) latents -> uint8 (F, H, W, 3), decoded a few frames at a time."""
        images = []
        for start in range(0, latents.shape[0], chunk):
            part = latents[start:start + chunk].to(self.vae.dtype) / self.vae.config.scaling_factor
            pixels = self.vae.decode(part, return_dict=False)[0]
            images.append(((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu())
        return torch.cat(images).permute(0, 2, 3, 1).numpy()


def _load_image_encoder(encoder_dir: Path, base: Path, kwargs: dict):
    from transformers import CLIPVisionModelWithProjection

    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor

    require_dir(encoder_dir, "image encoder folder")
    tf_kwargs = {k: v for k, v in kwargs.items() if k != "torch_dtype"}
    if "torch_dtype" in kwargs:
        tf_kwargs["dtype"] = kwargs["torch_dtype"]
    encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_dir, **tf_kwargs)
    for folder in (encoder_dir, base / "feature_extractor"):
        if (folder / "preprocessor_config.json").exists():
            return encoder, CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    size = encoder.config.image_size
    return encoder, CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _empty_prompt_embeds(base: Path, cross_attention_dim: int, kwargs: dict) -> torch.Tensor:
    """The CLIP text embedding of "" when the base folder has a text encoder; zeros (1, 77, D) otherwise.

    The method needs no text: the appearance comes from the IP-Adapter and the swap. SD1.5 and its IP-Adapter were
    trained with the encoded empty prompt as "no text", so that is the faithful choice when it can be computed.
    """
    if not ((base / "text_encoder").is_dir() and (base / "tokenizer").is_dir()):
        return torch.zeros(1, 77, cross_attention_dim)
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(base / "text_encoder", local_files_only=True)
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0].float()


def render_zero_shot(model_dir, reference_image, pose_frames, num_inference_steps: int = 25, seed: int = 0,
                     guidance_scale: float = 1.0, options: ZeroShotOptions | None = None, device=None,
                     torch_dtype: torch.dtype | None = None, progress: bool = False) -> np.ndarray:
    """The zero-shot method on a trained model's backbone (for the comparison tool): uint8 (F, H, W, 3).

    reference_image: uint8 (H, W, 3); pose_frames: uint8 (F, H, W, 3) skeletons; the output has the poses' size.
    """
    pipe = ZeroShotPoseTransferPipeline.from_model_folder(model_dir, torch_dtype=torch_dtype)
    if device is not None:
        pipe.to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return pipe(reference_image, pose_frames, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, generator=generator, options=options, progress=progress)


GRID_VARIANTS = (
    ("no swap", ZeroShotOptions(swap=False)),
    ("random noise", ZeroShotOptions(source_noise="random")),
    ("prev. target", ZeroShotOptions(source_noise="previous-target")),
    ("prev. source", ZeroShotOptions(source_noise="previous-source")),
    ("T = 1.0", ZeroShotOptions(temperature=1.0)),
    ("decoder:1,2", ZeroShotOptions(swap_layers="decoder:1,2")),
    ("steps 0:0.5", ZeroShotOptions(swap_steps=(0.0, 0.5))),
)


def render_variant_grid(pipes: dict, source: np.ndarray, pose: np.ndarray, num_inference_steps: int = 20,
                        seed: int = 0, variants=GRID_VARIANTS, cell: int = 96) -> np.ndarray:
    """One row per backbone (name -> pipeline): source, pose, then one picture per variant, same seed; labelled."""
    from PIL import Image, ImageDraw

    label_height = 14
    columns = [("source", None), ("pose", None)] + list(variants)
    grid = Image.new("RGB", (cell * len(columns) + 90, (cell + label_height) * len(pipes) + label_height),
                     (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, (label, _) in enumerate(columns):
        draw.text((90 + c * cell + 2, 1), label, fill=(0, 0, 0))
    for r, (name, pipe) in enumerate(pipes.items()):
        top = label_height + r * (cell + label_height)
        draw.text((2, top + cell // 2), name, fill=(0, 0, 0))
        for c, (label, options) in enumerate(columns):
            if options is None:
                picture = resize_frames(to_uint8_frames(source if label == "source" else pose)[:1],
                                        pose.shape[0], pose.shape[1])[0]
            else:
                picture = pipe(source, pose, num_inference_steps=num_inference_steps, options=options,
                               generator=torch.Generator().manual_seed(seed), progress=False)[0]
            grid.paste(Image.fromarray(picture).resize((cell, cell), Image.NEAREST), (90 + c * cell, top))
    return np.asarray(grid)
