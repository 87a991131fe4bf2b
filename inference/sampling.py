"""The sampling core: what every marionet denoising loop shares, in one place.

`PoseToVideoPipeline` (and through it training validation, which renders with the live weights) and
`ZeroShotPoseTransferPipeline` inherit `SamplingMixin`, so they cannot drift apart on:

- the size policy: the output size defaults to the pose frames' size, rounded down to multiples of the VAE factor
  (with a warning), and every input is brought to it (`prepare_inputs`);
- the initial noise (`prepare_latents`): drawn with `randn_tensor` (a CPU generator gives the same video on any
  device; a list of generators gives one per video), shared by all frames for image models, and for video models
  correlated across frames as the model was trained (`frame_noise_correlation`, model_index.json);
- guidance rows and their combination (`guidance_rows`, `combine_guidance`);
- scheduler-step arguments (`scheduler_step_kwargs`: only what the scheduler's `step` accepts);
- context windows: long videos are denoised as overlapping windows blended with position weights, image models
  in chunks of frames (`frame_windows`, `denoise`), with `callback_on_step_end` once per step and `interrupt`;
- step caching (`enable_step_cache`: deep UNet features reused between full steps, `inference.step_cache`);
- the chunked VAE decode and the output conversion (`decode_latents`, `postprocess`): one output dataclass,
  `PoseVideoPipelineOutput`, with diffusers' video conventions.

Latents are (B, 4, F, h, w) float32 everywhere; each pipeline casts to its models' dtype at the model call.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from .io import as_rgb_array, fit_reference, load_pose_frames, resize, round_size
from .step_cache import StepCache
from .windows import context_windows, position_weights

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("np", "pil", "pt", "latent")


@dataclass
class PoseVideoPipelineOutput(BaseOutput):
    """What both marionet pipelines return (diffusers' video conventions; `frames[0]` is the first video).

    frames:
        - output_type "np": float32 array (B, F, H, W, 3) in [0, 1] (`to_uint8` converts it for writing);
        - "pt": float tensor (B, F, 3, H, W) in [0, 1];
        - "pil": a list (one per video) of lists of PIL images;
        - "latent": the final latents (B, 4, F, h, w), not decoded.
    """

    frames: object


def to_uint8(frames) -> np.ndarray:
    """Float frames in [0, 1] (array or tensor, any leading axes, channels last) -> uint8."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().float().numpy()
    return np.clip(np.round(np.asarray(frames) * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ guidance
def guidance_rows(guidance_scale: float, pose_guidance_scale: float | None = None) -> tuple:
    """Which (drop_reference, use_pose) rows a step needs, in the order `combine_guidance` expects.

    guidance 1: the conditional row only; 0: the unconditional row only (the model without its reference);
    otherwise [unconditional ; conditional]; with a pose scale, a third row without pose (InstructPix2Pix-style).
    """
    if pose_guidance_scale is not None:
        return ((True, False), (True, True), (False, True))
    if guidance_scale == 0.0:
        return ((True, True),)
    if guidance_scale != 1.0:
        return ((True, True), (False, True))
    return ((False, True),)


def combine_guidance(pred: torch.Tensor, rows: tuple, guidance_scale: float,
                     pose_guidance_scale: float | None = None) -> torch.Tensor:
    """Predictions of len(rows) groups stacked on dim 0 (R*B, ...) -> one guided prediction per video (B, ...)."""
    parts = pred.chunk(len(rows))
    if len(rows) == 1:
        return parts[0]
    if len(rows) == 2:
        uncond, cond = parts
        return uncond + guidance_scale * (cond - uncond)
    none, pose_only, full = parts
    return none + pose_guidance_scale * (pose_only - none) + guidance_scale * (full - pose_only)


# ------------------------------------------------------------------------------------------------ schedule
def sampling_scheduler(scheduler):
    """A fresh copy of a pipeline's scheduler for one call; a DDPM (training) scheduler samples as DDIM."""
    if isinstance(scheduler, DDPMScheduler):
        return DDIMScheduler.from_config(scheduler.config)
    return type(scheduler).from_config(scheduler.config)


def scheduler_step_kwargs(scheduler, generator=None, eta: float = 0.0) -> dict:
    """The extra `scheduler.step` arguments this scheduler accepts (DDIM takes eta and a generator, most a subset)."""
    accepted = inspect.signature(scheduler.step).parameters
    return {name: value for name, value in (("eta", eta), ("generator", generator)) if name in accepted}


def frame_windows(num_frames: int, context_frames: int, context_overlap: int, closed_loop: bool, video: bool,
                  max_frames: int | None = None) -> list[list[int]]:
    """Context windows for a video model (capped at what its motion modules take), plain chunks for an image model."""
    if not video:
        return context_windows(num_frames, max(1, context_frames), 0)
    if max_frames is not None and context_frames > max_frames:
        logger.warning(f"context_frames {context_frames} > the motion modules' length {max_frames}: using {max_frames}")
        context_frames = max_frames
    return context_windows(num_frames, context_frames, min(context_overlap, context_frames - 1), closed_loop)


# ------------------------------------------------------------------------------------------------ the mixin
class SamplingMixin:
    """Shared by the marionet pipelines (DiffusionPipeline subclasses with a `vae` and a `video_processor`)."""

    _callback_tensor_inputs = ["latents"]

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` (e.g. from a callback) to stop after the current step."""
        return getattr(self, "_interrupt", False)

    @property
    def initial_noise_correlation(self) -> float:
        """Share of the initial noise common to all frames: 1 for image models (frames share one noise)."""
        return 1.0

    # -------------------------------------------------------------------------------------------- step cache
    def _step_cache_models(self) -> tuple:
        """The models whose deep features step caching reuses (each pipeline names its UNet / ControlNet)."""
        raise NotImplementedError

    @property
    def step_cache(self) -> StepCache | None:
        return getattr(self, "_step_cache", None)

    def enable_step_cache(self, interval: int = 3, skips: int = 2) -> StepCache:
        """Reuse the UNet's deep features between full steps: a full pass every `interval` steps, the steps between
        recompute only the outer `skips` skip connections' layers (`inference.step_cache`). interval 1 = off."""
        self.disable_step_cache()
        self._step_cache = StepCache(interval, skips).attach(*self._step_cache_models())
        return self._step_cache

    def disable_step_cache(self) -> None:
        if self.step_cache is not None:
            self._step_cache.detach()
        self._step_cache = None

    def cached_call(self, step: int, key):
        """Context for one denoising model call of step `step` (`key`: which call of the step it is)."""
        return self._step_cache.call(step, key) if self.step_cache is not None else contextlib.nullcontext(True)

    # -------------------------------------------------------------------------------------------- inputs
    def check_common_inputs(self, num_inference_steps, decode_chunk_size, output_type, callback_on_step_end,
                            callback_on_step_end_tensor_inputs) -> None:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be >= 1, got {decode_chunk_size}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError("callback_on_step_end must be callable(pipe, step, timestep, callback_kwargs)")
        unknown = [k for k in callback_on_step_end_tensor_inputs or () if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not among "
                             f"{self._callback_tensor_inputs}")

    def prepare_inputs(self, reference_image, pose, height: int | None = None, width: int | None = None):
        """-> (reference uint8 (H, W, 3) as given, poses uint8 (F, H, W, 3) at the output size, height, width).

        reference_image: path, PIL image or array; pose: video/image/folder path, array (F, H, W, 3) or list of
        images. The output size defaults to the poses' and is rounded down to multiples of the VAE factor.
        """
        reference = as_rgb_array(reference_image, "reference image")
        poses, _ = load_pose_frames(pose)
        width, height, changed = round_size(width or poses.shape[2], height or poses.shape[1],
                                            self.vae_scale_factor)
        if changed:
            logger.warning(f"output size rounded down to {width}x{height} (multiples of {self.vae_scale_factor})")
        poses = np.stack([resize(frame, width, height) for frame in poses])
        return reference, poses, height, width

    @torch.no_grad()
    def encode_image(self, reference: np.ndarray) -> torch.Tensor:
        """CLIP image embedding of the whole reference image as one cross-attention token: (1, 1, D)."""
        pixels = self.feature_extractor(images=reference, return_tensors="pt").pixel_values
        embeds = self.image_encoder(pixels.to(self._execution_device, self.image_encoder.dtype)).image_embeds
        return embeds.unsqueeze(1)

    def reference_pixels(self, reference: np.ndarray, height: int, width: int) -> torch.Tensor:
        """(1, 3, H, W) in [-1, 1] on the execution device: the reference centre-cropped to the output's aspect
        ratio (as training crops it) and resized."""
        pixels = torch.from_numpy(np.array(fit_reference(reference, width, height)))  # a writable copy
        pixels = pixels.permute(2, 0, 1)[None].float() / 127.5 - 1.0
        return pixels.to(self._execution_device, self.vae.dtype)

    def prepare_latents(self, batch_size: int, num_frames: int, height: int, width: int, generator=None,
                        latents: torch.Tensor | None = None, reroll_mask=None,
                        reroll_seed: int | None = None) -> torch.Tensor:
        """Initial noise (B, C, F, h, w) float32 on the execution device, not yet scaled by the scheduler.

        Frames share a part of their noise: all of it for image models, `initial_noise_correlation` of its variance
        for video models (their trained `frame_noise_correlation`). `latents` replaces the draw (checked for
        shape). With `reroll_mask` ((H, W) or (F, H, W); > 0.5 re-rolls), noise under the mask (any latent cell
        touching it) is re-drawn from `reroll_seed`, the rest kept.
        """
        device = self._execution_device
        channels = self.vae.config.latent_channels
        shape = (batch_size, channels, num_frames, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            return latents.to(device, torch.float32)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"{len(generator)} generators for {batch_size} videos: give one per video")

        rho = float(self.initial_noise_correlation)

        def draw(gen) -> torch.Tensor:
            common_shape = shape[:2] + (1,) + shape[3:]
            if rho >= 1.0:
                return randn_tensor(common_shape, generator=gen, device=device, dtype=torch.float32).expand(shape)
            noise = randn_tensor(shape, generator=gen, device=device, dtype=torch.float32)
            if rho > 0.0:  # the correlated frame noise the video model was trained with
                common = randn_tensor(common_shape, generator=gen, device=device, dtype=torch.float32)
                noise = rho ** 0.5 * common + (1.0 - rho) ** 0.5 * noise
            return noise

        noise = draw(generator)
        if reroll_mask is not None:
            if reroll_seed is None:
                raise ValueError("reroll_mask needs a reroll_seed (a different seed draws the new noise)")
            mask = self.latent_mask(reroll_mask, num_frames, height, width).to(device)  # (F, h, w) bool
            fresh = draw(torch.Generator().manual_seed(int(reroll_seed)))
            noise = torch.where(mask[None, None], fresh, noise)
        return noise.contiguous()

    def latent_mask(self, mask, num_frames: int, height: int, width: int) -> torch.Tensor:
        """A pixel mask ((H, W) or (F, H, W), image/array/tensor) -> bool (F, h, w) at latent resolution."""
        if hasattr(mask, "convert"):  # PIL
            mask = np.asarray(mask.convert("L"))
        mask = torch.as_tensor(np.asarray(mask))
        if mask.ndim == 3 and mask.shape[-1] in (3, 4) and mask.shape[0] not in (1, num_frames):
            mask = mask[..., 0]  # an RGB(A) mask image
        if mask.dtype == torch.uint8:
            mask = mask.float() / 255.0
        mask = mask.float()
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim != 3 or mask.shape[0] not in (1, num_frames):
            raise ValueError(f"reroll_mask must be (H, W) or ({num_frames}, H, W), got {tuple(mask.shape)}")
        mask = F.interpolate(mask[:, None], size=(height, width), mode="nearest")
        cells = F.max_pool2d(mask, kernel_size=self.vae_scale_factor)[:, 0] > 0.5
        return cells.expand(num_frames, -1, -1)

    # -------------------------------------------------------------------------------------------- the loop
    def denoise(self, latents: torch.Tensor, timesteps, scheduler, windows: list[list[int]],
                predict: Callable, step_kwargs: dict, callback_on_step_end=None,
                callback_on_step_end_tensor_inputs=("latents",)) -> torch.Tensor:
        """The denoising loop over windows of frames.

        predict(step_index, t, frames, model_input (B, C, f, h, w)) -> the guided model output for those frames.
        Each step, every frame's output is the position-weighted mean over the windows that hold it; then one
        scheduler step on the whole video and `callback_on_step_end(self, i, t, {name: tensor})`, whose returned
        "latents" replaces the latents.
        """
        num_frames = latents.shape[2]
        weights = [position_weights(len(window)).to(latents.device, torch.float32) for window in windows]
        self._num_timesteps = len(timesteps)
        if self.step_cache is not None:
            self.step_cache.reset()
        with self.progress_bar(total=len(timesteps)) as progress, self._forget_step_cache():
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                total = torch.zeros_like(latents)
                weight_sum = torch.zeros(num_frames, device=latents.device, dtype=torch.float32)
                for frames, weight in zip(windows, weights):
                    model_input = scheduler.scale_model_input(latents[:, :, frames], t)
                    total[:, :, frames] += predict(i, t, frames, model_input).float() * weight[None, None, :, None,
                                                                                                None]
                    weight_sum[frames] += weight
                noise_pred = total / weight_sum[None, None, :, None, None]
                latents = scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    available = {"latents": latents}
                    callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = outputs.pop("latents", latents)
                progress.update()
        return latents

    @contextlib.contextmanager
    def _forget_step_cache(self):
        try:
            yield
        finally:
            if self.step_cache is not None:
                self.step_cache.reset()  # the kept features are this video's only

    # -------------------------------------------------------------------------------------------- output
    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
        """(B, C, F, h, w) latents -> video (B, 3, F, H, W) float32 in [-1, 1] on the CPU, decoded `chunk_size`
        frames per VAE call so that the VAE's activation memory does not grow with the video's length."""
        batch, channels, frames = latents.shape[:3]
        flat = latents.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, *latents.shape[3:])
        flat = flat / self.vae.config.scaling_factor
        device = self._execution_device
        images = [self.vae.decode(chunk.to(device, self.vae.dtype)).sample.float().cpu()
                  for chunk in flat.split(chunk_size)]
        video = torch.cat(images)
        return video.reshape(batch, frames, *video.shape[1:]).permute(0, 2, 1, 3, 4)

    def postprocess(self, latents: torch.Tensor, output_type: str, decode_chunk_size: int):
        """Final latents -> `frames` of the requested output type (see `PoseVideoPipelineOutput`)."""
        if output_type == "latent":
            return latents
        return self.video_processor.postprocess_video(self.decode_latents(latents, decode_chunk_size),
                                                      output_type=output_type)
