"""The zero-shot baseline: training-free pose transfer by cross-image attention, as a diffusers pipeline.

Every trained model is compared against this method. Per denoising step:

1. **source pass** (`ReferenceState.mode = "write"`): the source image's latent, noised to the current timestep, goes
   through the same UNet; every spatial self-attention layer banks its input tokens;
2. **target pass** (`mode = "swap"`): the image being generated goes through ControlNet (target pose) + UNet, and in
   the chosen self-attention layers the queries attend to the *source* tokens only (keys/values from the bank),
   with a softmax temperature;
3. scheduler step.

Three backbones run the same loop:

- **stock**: SD1.5 UNet + ControlNet-openpose (+ IP-Adapter, the source image as image prompt), text prompt empty;
- **stock model folder** (`models.animator`, `"reference_net": false`): a denoising UNet + Pose Guider trained with
  the CLIP token as its only appearance input, the tiny analogue of the stock backbone; the source's CLIP token is
  the prompt (as the IP-Adapter's image prompt is), zeros in unconditional rows;
- **trained**: our model's denoising UNet + Pose Guider on its unconditional-reference path (zero CLIP token, no
  ReferenceNet bank), so zero-shot and trained results come from exactly the same weights and pose conditioning.

The method's switches (`ZeroShotOptions`): swap on/off, the noise added to the source (fresh Gaussian, the generated
image's previous noise prediction, or the source pass's own previous prediction), the temperature, which layers swap
and over which part of the trajectory. Guidance is 1.0 (off) by default; when it is turned on, unconditional rows
have no image prompt *and* no cross-image attention (the trained model's own unconditional path), so guidance
extrapolates towards the source appearance.

Noise, windows, guidance combination, scheduler-step arguments, decode and output come from `inference.sampling`,
shared with `PoseToVideoPipeline`: the same size policy, the same `PoseVideoPipelineOutput`, context windows for
long videos on a video backbone (chunks of frames on an image backbone).
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
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from ..models.animator import has_reference_net
from ..models.attention import (ReferenceState, check_reference_processors, install_reference_processors,
                                remove_reference_processors, spatial_self_attention_names)
from ..models.loading import (MissingWeightsError, clip_image_processor_class, load_image_encoder, offline_kwargs,
                              require_dir, require_file)
from ..models.pose_guider import ConvInAdder
from .io import as_rgb_array, fit_reference, resize
from .sampling import (PoseVideoPipelineOutput, SamplingMixin, combine_guidance, frame_windows, guidance_rows,
                       sampling_scheduler, scheduler_step_kwargs, to_uint8)

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


class _SwapStep:
    """The method's work for one window of frames at one step: source pass (write), target pass (swap), guidance.

    It keeps what the source-noise variants need from step to step: the generated frames' noise predictions of the
    previous step ("previous-target") and the source pass's own ("previous-source").
    """

    def __init__(self, pipe, scheduler, options, rows, guidance_scale, conditions: dict, num_steps: int,
                 generator, control_scale: float):
        self.pipe, self.scheduler, self.options, self.rows = pipe, scheduler, options, rows
        self.guidance_scale, self.c, self.num_steps = guidance_scale, conditions, num_steps
        self.generator, self.control_scale = generator, control_scale
        self.step = -1
        self.target_now = self.target_before = None  # (B, 4, F, h, w) noise predictions of this / the last step
        self.source_before: dict = {}  # window -> the source pass's noise prediction at the last step
        self.swapped_before: dict = {}  # window -> did the last step swap

    def _source_noise(self, key, frames, shape):
        kind = self.options.source_noise
        if kind == "previous-target" and self.target_before is not None:
            return self.target_before[:, :, frames]
        if kind == "previous-source" and key in self.source_before and self.swapped_before.get(key):
            return self.source_before[key]
        return randn_tensor(shape, generator=self.generator, device=self.c["source"].device, dtype=torch.float32)

    def __call__(self, i, t, frames, sample):
        pipe, state, c = self.pipe, self.pipe.reference_state, self.c
        if i != self.step:
            self.step, self.target_before = i, self.target_now
            self.target_now = torch.zeros_like(c["latents_like"])
        videos, f = sample.shape[0], len(frames)
        key = tuple(frames)
        reads_source = any(not dropped for dropped, _ in self.rows)
        swap_now = self.options.swaps_at(i, self.num_steps) and reads_source
        state.clear()
        if swap_now:
            # Source pass: the source latent noised to t (one frame; F frames of it for "previous-target").
            noise = self._source_noise(key, frames, (1, 4, 1) + tuple(c["source"].shape[-2:]))
            clean = c["source"][:, :, None].expand(noise.shape[0], -1, noise.shape[2], -1, -1)
            source = self.scheduler.scale_model_input(
                self.scheduler.add_noise(clean, noise.to(clean.dtype), t.reshape(1)), t)
            state.mode = "write"
            n = source.shape[0]  # the source pass sees the same prompt and image prompt as the target
            # The source's frame count can change between steps ("previous-target" noise): part of the cache key.
            # With the source's own skeleton the source pass is conditioned as in training (a pose for every image);
            # without it the pose conditioner is left out of the source pass.
            rows_in = n * source.shape[2]
            per_row = lambda x: None if x is None else x.expand(rows_in, *x.shape[1:])  # noqa: E731
            with pipe.cached_call(i, ("source", key, tuple(source.shape))):
                source_out = pipe.run_unet(source, t, c["context"][:n], None if c["ip"] is None else c["ip"][:n],
                                           per_row(c["source_control"]), per_row(c["source_pose"]),
                                           self.control_scale)
            self.source_before[key] = as_epsilon(self.scheduler, source_out.float(), source, t)
            # The bank has a row per source frame (one, or one per target frame); target row r reads bank row
            # r % source_rows, in each guidance group; only conditional groups read it.
            source_rows = source.shape[0] * source.shape[2]
            state.samples = len(self.rows) * source_rows
            state.dropped = tuple(dropped for dropped, _ in self.rows for _ in range(source_rows))
            state.mode = "swap"
        else:
            state.mode = "off"
        self.swapped_before[key] = swap_now

        # Target pass: every guidance row of every video in one batch; unconditional rows: no image prompt, no swap.
        model_input = sample.repeat(len(self.rows), 1, 1, 1, 1)
        context = torch.cat([c["negative"] if dropped else c["context"] for dropped, _ in self.rows])
        ip = None if c["ip"] is None else torch.cat([c["uncond_ip"] if dropped else c["ip"]
                                                     for dropped, _ in self.rows])
        control = None if c["control"] is None else c["control"][frames].repeat(len(model_input), 1, 1, 1)
        pose = None if c["pose"] is None else c["pose"][frames].repeat(len(model_input), 1, 1, 1)
        with pipe.cached_call(i, ("target", key)):
            out = pipe.run_unet(model_input, t, context, ip, control, pose, self.control_scale)
        out = combine_guidance(out.float(), self.rows, self.guidance_scale)
        self.target_now[:, :, frames] = as_epsilon(self.scheduler, out, sample, t)
        return out


class ZeroShotPoseTransferPipeline(SamplingMixin, DiffusionPipeline, IPAdapterMixin):
    """Cross-image-attention pose transfer on a stock (ControlNet) or trained (Pose Guider) backbone.

    Exactly one of `controlnet` / `pose_guider` conditions on the target pose. `unet` may be a `UNetMotionModel`
    (trained video backbone). IP-Adapter (stock backbone only) is loaded with `load_ip_adapter`, after which the
    swap processors are re-installed on the self-attention layers (loading rebuilds every processor).
    """

    model_cpu_offload_seq = "image_encoder->pose_guider->unet->vae"  # the ControlNet runs every step: own hook
    _optional_components = ["controlnet", "pose_guider", "image_encoder", "feature_extractor"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, vae, unet, scheduler, controlnet=None, pose_guider=None, image_encoder=None,
                 feature_extractor=None, frame_noise_correlation: float = 0.0):
        super().__init__()
        if (controlnet is None) == (pose_guider is None):
            raise ValueError("give exactly one pose conditioner: controlnet (stock) or pose_guider (trained)")
        if not hasattr(scheduler, "add_noise") or not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(f"{type(scheduler).__name__} cannot noise the source latent: use DDIM or DDPM")
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, controlnet=controlnet,
                              pose_guider=pose_guider, image_encoder=image_encoder,
                              feature_extractor=feature_extractor)
        self.register_to_config(frame_noise_correlation=float(frame_noise_correlation))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)
        self.reference_state = ReferenceState()
        self.prompt_embeds = None  # the empty-prompt embedding; zeros when no text encoder was given
        self._pose_adder = None
        if pose_guider is not None:
            self._pose_adder = ConvInAdder()
            unet.conv_in.register_forward_hook(self._pose_adder)
        self._swap_layers = self._install_swap_processors()

    # ------------------------------------------------------------------------------------------- construction
    def _install_swap_processors(self) -> list[str]:
        # role=None: the processors follow reference_state.mode ("write" on the source pass, "swap" on the target).
        return install_reference_processors(self.unet, self.reference_state, role=None)

    def load_ip_adapter(self, *args, **kwargs):
        if self.pose_guider is not None:
            raise ValueError("the trained backbone has no IP-Adapter path (its reference is dropped)")
        # The loader re-creates each self-attention processor from its class with no arguments: hand it defaults.
        remove_reference_processors(self.unet)
        super().load_ip_adapter(*args, **kwargs)
        self._swap_layers = self._install_swap_processors()

    def enable_xformers_memory_efficient_attention(self, attention_op=None):
        """xformers for every attention layer; the swap processors stay and use the xformers kernel."""
        super().enable_xformers_memory_efficient_attention(attention_op)
        self._swap_layers = install_reference_processors(self.unet, self.reference_state, kernel="xformers")

    def disable_xformers_memory_efficient_attention(self):
        super().disable_xformers_memory_efficient_attention()
        self._swap_layers = self._install_swap_processors()

    def enable_attention_slicing(self, slice_size="auto"):
        """Sliced attention everywhere; the swap processors stay and slice too."""
        super().enable_attention_slicing(slice_size)
        self._swap_layers = install_reference_processors(
            self.unet, self.reference_state, kernel="sdpa" if slice_size is None else "sliced",
            slice_size=slice_size)

    def _step_cache_models(self) -> tuple:
        return (self.unet, self.controlnet)

    @property
    def has_ip_adapter(self) -> bool:
        return getattr(self.unet, "encoder_hid_proj", None) is not None

    @property
    def is_video_backbone(self) -> bool:
        return isinstance(self.unet, UNetMotionModel)

    @property
    def initial_noise_correlation(self) -> float:
        return self.config.frame_noise_correlation if self.is_video_backbone else 1.0

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
            image_encoder, feature_extractor = _load_image_encoder(encoder_dir, base, torch_dtype)
        pipe = cls(vae=vae, unet=unet, scheduler=scheduler, controlnet=controlnet, image_encoder=image_encoder,
                   feature_extractor=feature_extractor)
        pipe.prompt_embeds = _empty_prompt_embeds(base, unet.config.cross_attention_dim)
        if ip_adapter is not None:
            pipe.load_ip_adapter(str(ip_file.parent), subfolder="", weight_name=ip_file.name,
                                 image_encoder_folder=None, local_files_only=True)
        return pipe

    @classmethod
    def from_model_folder(cls, model_dir, torch_dtype: torch.dtype | None = None) -> "ZeroShotPoseTransferPipeline":
        """Our model folder (models/export.py layout): denoising UNet [+ motion] + Pose Guider + vae/ scheduler/.
        A trained model's ReferenceNet and image encoder are not used (the reference is dropped); a stock model's
        image encoder gives the source's CLIP token as the prompt."""
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
        index = root / "model_index.json"
        correlation = float(json.loads(index.read_text()).get("frame_noise_correlation", 0.0)
                            if index.is_file() else 0.0)
        image_encoder = feature_extractor = None
        if not has_reference_net(root):  # a stock model: its CLIP token is the image prompt
            require_dir(root / "image_encoder", f"model folder {root} is missing its image_encoder")
            require_dir(root / "feature_extractor", f"model folder {root} is missing its feature_extractor",
                        must_contain=("preprocessor_config.json",))
            image_encoder = load_image_encoder(root / "image_encoder", torch_dtype)
            feature_extractor = clip_image_processor_class().from_pretrained(root / "feature_extractor",
                                                                             **offline_kwargs())
        pipe = cls(vae=vae, unet=unet, scheduler=scheduler, pose_guider=pose_guider, image_encoder=image_encoder,
                   feature_extractor=feature_extractor, frame_noise_correlation=correlation)
        pipe.prompt_embeds = torch.zeros(1, 1, unet.config.cross_attention_dim, dtype=vae.dtype)  # zero CLIP token
        return pipe

    @property
    def uses_image_token(self) -> bool:
        """A Pose Guider backbone with an image encoder (a stock model folder): the source's CLIP token is the
        prompt, a zero token the unconditional one."""
        return self.pose_guider is not None and self.image_encoder is not None

    # ------------------------------------------------------------------------------------------- pieces
    @torch.no_grad()
    def encode_source(self, source: np.ndarray, height: int, width: int) -> torch.Tensor:
        """VAE latent (mode) x scaling factor of the source cropped to the output's aspect ratio: (1, 4, h, w)."""
        pixels = self.reference_pixels(source, height, width)
        return self.vae.encode(pixels).latent_dist.mode() * self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_ip_image(self, source: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """IP-Adapter image embeddings of the source and their unconditional counterpart, (1, 1, ...) each.

        Plain IP-Adapters take CLIP `image_embeds` (unconditional: zeros); Plus-style ones (Resampler) take the
        penultimate hidden states (unconditional: those of a zero image), as diffusers' own pipelines do.
        """
        from diffusers.models.embeddings import ImageProjection

        if self.image_encoder is None or self.feature_extractor is None:
            raise ValueError("an IP-Adapter is loaded but no image encoder / feature extractor is set")
        pixels = self.feature_extractor(source, return_tensors="pt").pixel_values
        pixels = pixels.to(self._execution_device, self.image_encoder.dtype)
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

    def run_unet(self, sample, t, context, ip_embeds, control, pose_features, control_scale):
        """One UNet call on (N, 4, f, h, w) latents: N*f spatial rows for a 2-D UNet, N clips for a motion UNet.

        context / ip_embeds: one row per sample (N, ...), repeated per frame here; control (ControlNet pose pixels)
        and pose_features (Pose Guider) are already per frame, (N*f, ...) batch-major.
        """
        batch, channels, frames = sample.shape[:3]
        dtype = self.unet.dtype
        per_frame = lambda x: None if x is None else x.repeat_interleave(frames, dim=0).to(dtype)  # noqa: E731
        context, ip_embeds = per_frame(context), per_frame(ip_embeds)
        rows = sample.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, *sample.shape[3:])
        model_input = (sample if self.is_video_backbone else rows).to(dtype)
        kwargs = {}
        if ip_embeds is not None:
            kwargs["added_cond_kwargs"] = {"image_embeds": [ip_embeds]}
        if control is not None:
            down, mid = self.controlnet(model_input, t, encoder_hidden_states=context,
                                        controlnet_cond=control.to(self.controlnet.dtype),
                                        conditioning_scale=control_scale, return_dict=False)
            kwargs.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        if self._pose_adder is not None:
            self._pose_adder.residual = pose_features
        try:
            out = self.unet(model_input, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]
        finally:
            if self._pose_adder is not None:
                self._pose_adder.residual = None
        if self.is_video_backbone:
            return out
        return out.reshape(batch, frames, channels, *out.shape[2:]).permute(0, 2, 1, 3, 4)

    # ------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(self, source_image, pose_images, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = 1.0, options: ZeroShotOptions | None = None,
                 source_pose=None, num_videos_per_prompt: int = 1, context_frames: int = 24,
                 context_overlap: int = 4,
                 closed_loop: bool = False, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, controlnet_conditioning_scale: float = 1.0,
                 decode_chunk_size: int = 8, generator=None, latents: torch.Tensor | None = None, eta: float = 0.0,
                 output_type: str = "np", return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",)):
        """Render `source_image`'s subject in each pose of `pose_images`; returns `PoseVideoPipelineOutput`.

        Inputs and sizes as `PoseToVideoPipeline`: the source is a path, PIL image or uint8 (H, W, 3); the poses a
        video/image/folder path, uint8 (F, H, W, 3) or a list of images; the output size defaults to the poses'
        (rounded down to multiples of 8). Frames beyond `context_frames` are denoised in windows (a video backbone)
        or chunks (an image backbone, frames sharing one initial noise). `source_pose`: the source image's own
        skeleton (path, PIL image or uint8 (H, W, 3), framed like the source), which then conditions the source pass
        (ControlNet pixels or Pose Guider features); without it the source pass runs with no pose.
        """
        # 1. Check inputs; bring the source and the poses to the output size.
        options = (options or ZeroShotOptions()).validate()
        self.check_common_inputs(num_inference_steps, decode_chunk_size, output_type, callback_on_step_end,
                                 callback_on_step_end_tensor_inputs)
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
        source, poses, height, width = self.prepare_inputs(source_image, pose_images, height, width)
        if source_pose is not None:
            source_pose = as_rgb_array(source_pose, "source pose")
            if source_pose.shape[:2] != source.shape[:2]:  # another resolution of the same framing
                source_pose = resize(source_pose, source.shape[1], source.shape[0])
            source_pose = fit_reference(source_pose, width, height)  # the crop the source gets
        check_reference_processors(self.unet, self._swap_layers, "zero-shot UNet")
        self._guidance_scale = guidance_scale
        self._interrupt = False

        # 2. Call parameters: guidance rows (no pose guidance here), layers that swap, windows.
        device, num_frames = self._execution_device, len(poses)
        rows = guidance_rows(guidance_scale)
        state = self.reference_state
        state.temperature = float(options.temperature)
        state.active_layers = select_swap_layers(self.unet, options.swap_layers)
        max_frames = self.unet.config.motion_max_seq_length if self.is_video_backbone else None
        windows = frame_windows(num_frames, context_frames, context_overlap, closed_loop, self.is_video_backbone,
                                max_frames)

        # 3. Conditions: prompt (the encoded empty prompt, the zero CLIP token, or a stock model folder's CLIP token
        #    of the source, zeros when unconditional), source latent, IP-Adapter
        #    image embeddings, pose conditioning (ControlNet pixels or Pose Guider features), per video.
        context = prompt_embeds if prompt_embeds is not None else self.prompt_embeds
        if context is None:
            context = torch.zeros(1, 77, self.unet.config.cross_attention_dim)
        context = context.to(device, torch.float32)
        negative = negative_prompt_embeds.to(device, torch.float32) if negative_prompt_embeds is not None \
            else context
        if self.uses_image_token and prompt_embeds is None:
            context = self.encode_image(source).float()
            negative = torch.zeros_like(context) if negative_prompt_embeds is None else negative
        ip = uncond_ip = None
        if self.has_ip_adapter:
            ip, uncond_ip = (e.float() for e in self.encode_ip_image(source))
        pose_pixels = torch.from_numpy(poses).permute(0, 3, 1, 2).to(device, torch.float32) / 255.0
        source_pixels = None if source_pose is None else \
            torch.from_numpy(np.array(source_pose)).permute(2, 0, 1)[None].to(device, torch.float32) / 255.0
        pose_features = source_features = None
        if self.pose_guider is not None:
            pose_features = self.pose_guider(pose_pixels.to(self.pose_guider.dtype))
            if source_pixels is not None:
                source_features = self.pose_guider(source_pixels.to(self.pose_guider.dtype))
        batch = num_videos_per_prompt
        per_video = lambda x: None if x is None else x.expand(batch, *x.shape[1:])  # noqa: E731 - one row a video
        conditions = {
            "source": self.encode_source(source, height, width).float(),
            "context": per_video(context), "negative": per_video(negative), "ip": per_video(ip),
            "uncond_ip": per_video(uncond_ip), "control": pose_pixels if self.controlnet is not None else None,
            "pose": pose_features, "source_pose": source_features,
            "source_control": source_pixels if self.controlnet is not None else None,
        }

        # 4. Timesteps; 5. initial noise; 6. extra scheduler-step arguments.
        scheduler = sampling_scheduler(self.scheduler)
        scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(batch, num_frames, height, width, generator,
                                       latents) * scheduler.init_noise_sigma
        conditions["latents_like"] = latents
        step_kwargs = scheduler_step_kwargs(scheduler, generator, eta)

        # 7. Denoising loop: per step and window, the source pass then the swapped target pass.
        step = _SwapStep(self, scheduler, options, rows, guidance_scale, conditions, len(scheduler.timesteps),
                         generator, controlnet_conditioning_scale)
        try:
            latents = self.denoise(latents, scheduler.timesteps, scheduler, windows, step, step_kwargs,
                                   callback_on_step_end, callback_on_step_end_tensor_inputs)
        finally:
            state.clear()
            state.mode = "off"

        # 8. Decode in chunks and convert; 9. offload hooks back to their resting state.
        frames = self.postprocess(latents, output_type, decode_chunk_size)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return PoseVideoPipelineOutput(frames=frames)


def _load_image_encoder(encoder_dir: Path, base: Path, torch_dtype=None):
    """The IP-Adapter's CLIP image encoder and its preprocessor (from beside it, the base folder, or CLIP's
    standard preprocessing at the encoder's image size)."""
    encoder = load_image_encoder(encoder_dir, torch_dtype)
    processor = clip_image_processor_class()
    for folder in (encoder_dir, base / "feature_extractor"):
        if (folder / "preprocessor_config.json").exists():
            return encoder, processor.from_pretrained(folder, **offline_kwargs())
    size = encoder.config.image_size
    return encoder, processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _empty_prompt_embeds(base: Path, cross_attention_dim: int) -> torch.Tensor:
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


def render_zero_shot(model_dir_or_pipe, reference_image, pose_frames, num_inference_steps: int = 25, seed: int = 0,
                     guidance_scale: float = 1.0, options: ZeroShotOptions | None = None, device=None,
                     torch_dtype: torch.dtype | None = None, **kwargs) -> np.ndarray:
    """The zero-shot method (for the comparison tool, the app): uint8 (F, H, W, 3) frames of one video.

    model_dir_or_pipe: a trained model folder (its backbone is used) or a loaded pipeline (stock or trained);
    reference_image: uint8 (H, W, 3); pose_frames: uint8 (F, H, W, 3) skeletons; other keyword arguments go to
    the pipeline call (height, width, context_frames, ...).
    """
    pipe = model_dir_or_pipe
    if not isinstance(pipe, ZeroShotPoseTransferPipeline):
        pipe = ZeroShotPoseTransferPipeline.from_model_folder(pipe, torch_dtype=torch_dtype)
        pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    frames = pipe(reference_image, pose_frames, num_inference_steps=num_inference_steps,
                  guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(int(seed)),
                  options=options, output_type="np", **kwargs).frames
    return to_uint8(frames[0])


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
                picture = resize(as_rgb_array(source if label == "source" else pose), pose.shape[1], pose.shape[0])
            else:
                picture = render_zero_shot(pipe, source, pose, num_inference_steps=num_inference_steps,
                                           options=options, seed=seed)[0]
            grid.paste(Image.fromarray(picture).resize((cell, cell), Image.NEAREST), (90 + c * cell, top))
    return np.asarray(grid)
