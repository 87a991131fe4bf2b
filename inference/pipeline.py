"""`PoseToVideoPipeline`: a reference image + a pose sequence -> a video of that person performing the poses.

Built on `models.Animator`: the ReferenceNet runs ONCE per video (clean reference latent, timestep 0) and its bank
serves every denoising step and every context window; the Pose Guider runs once per video; the denoising UNet runs
per step per window. Long videos are denoised in overlapping context windows whose predictions are blended with
position weights (`inference.windows`). An image (stage-1) model renders each frame independently from one shared
initial noise, so the frames differ only where the poses do.

Guidance (all rows of one window go through the UNet as ONE batch):
- reference guidance (`guidance_scale`, default 3.5): the unconditional row sees no reference tokens and a zero CLIP
  token — training's reference-dropout path. 1.0 turns it off and halves the denoising work.
- pose guidance (`pose_guidance_scale`, off by default), after InstructPix2Pix's two scales: a third row with neither
  pose nor reference, combined as
      e = e(no ref, no pose) + s_pose * (e(no ref, pose) - e(no ref, no pose)) + s_ref * (e(ref, pose) - e(no ref, pose))
  It costs 3 rows instead of 2 (1.5x the denoising work); with s_pose = 1 it reduces to ordinary reference guidance.
Initial-noise re-roll (after "Guided Image Synthesis via Initial Image Editing"): `reroll_mask` marks pixels whose
initial noise is re-drawn from `reroll_seed`; the rest of the noise is kept, so a broken hand or face is regenerated
while the composition stays.
"""
from __future__ import annotations

import inspect
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline
from diffusers.utils import BaseOutput, logging

from ..models.animator import Animator
from ..models.loading import MissingWeightsError, offline_kwargs, require_dir

from .io import as_rgb_array, fit_reference, load_pose_frames, resize, round_size
from .windows import context_windows, position_weights

logger = logging.get_logger(__name__)

REQUIRED_COMPONENTS = ("reference_unet", "denoising_unet", "pose_guider", "vae", "image_encoder",
                       "feature_extractor", "scheduler")


@dataclass
class PoseToVideoOutput(BaseOutput):
    """frames: uint8 (F, H, W, 3) for "np", a list of PIL images for "pil", float (F, 3, H, W) in [0, 1] for "pt",
    latents (1, 4, F, h, w) for "latent"."""

    frames: object


@dataclass
class Conditioning:
    """Everything computed once per video that the per-window denoising calls share."""

    image_embeds: torch.Tensor  # (1, 1, D)
    pose_features: torch.Tensor  # (F, C, h, w): one row per frame
    rows: tuple  # per guidance row: (drop_reference, use_pose)
    guidance_scale: float
    pose_guidance_scale: float | None


def guidance_rows(guidance_scale: float, pose_guidance_scale: float | None) -> tuple:
    """Which (drop_reference, use_pose) rows a step needs, in the order `combine_guidance` expects."""
    if pose_guidance_scale is not None:
        return ((True, False), (True, True), (False, True))
    if guidance_scale == 0.0:  # exactly the unconditional row: the model without its reference
        return ((True, True),)
    if guidance_scale != 1.0:
        return ((True, True), (False, True))
    return ((False, True),)


def combine_guidance(pred: torch.Tensor, rows: tuple, guidance_scale: float,
                     pose_guidance_scale: float | None) -> torch.Tensor:
    """Combine per-row predictions (rows, ...) into one prediction (1, ...)."""
    if len(rows) == 1:
        return pred[:1]
    if len(rows) == 2:
        uncond, cond = pred[0:1], pred[1:2]
        return uncond + guidance_scale * (cond - uncond)
    none, pose_only, full = pred[0:1], pred[1:2], pred[2:3]
    return none + pose_guidance_scale * (pose_only - none) + guidance_scale * (full - pose_only)


def _share_parameters(source: torch.nn.Module, *targets: torch.nn.Module) -> None:
    """Make the targets' parameters the very tensors of `source` with the same names (no second copy in memory).

    The motion UNet the Animator builds copies the 2-D UNet's and the adapter's weights; tying them back means the
    registered components (what `save_pretrained` writes and `to()` moves) are the weights that actually run.
    """
    owned = dict(source.named_parameters())
    for target in targets:
        for name, _ in list(target.named_parameters()):
            module_name, _, leaf = name.rpartition(".")
            module = target.get_submodule(module_name) if module_name else target
            if name not in owned:
                raise ValueError(f"cannot tie {name}: not a parameter of the motion UNet")
            module._parameters[leaf] = owned[name]


def _image_processor_class():
    try:  # transformers 5 without torchvision: the PIL processor reads the same config
        from transformers import CLIPImageProcessorPil as processor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as processor
    return processor


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_model_folder(path) -> Path:
    """The model folder, or MissingWeightsError naming the first missing component."""
    root = require_dir(path, "model folder", must_contain=())
    for name in REQUIRED_COMPONENTS:
        require_dir(root / name, f"model folder {root} is missing its {name} component", must_contain=())
    if not (root / "model_index.json").is_file():
        raise MissingWeightsError(f"model folder {root} has no model_index.json (write one with "
                                  "models.export.export_model_folder)")
    return root


class PoseToVideoPipeline(DiffusionPipeline):
    """Animate a reference image with a pose sequence. See the module docstring for the method."""

    _optional_components = ["motion_adapter"]

    def __init__(self, reference_unet, denoising_unet, pose_guider, vae, image_encoder, feature_extractor,
                 scheduler, motion_adapter=None, frame_noise_correlation: float = 0.0):
        super().__init__()
        self.register_modules(reference_unet=reference_unet, denoising_unet=denoising_unet, pose_guider=pose_guider,
                              vae=vae, image_encoder=image_encoder, feature_extractor=feature_extractor,
                              scheduler=scheduler, motion_adapter=motion_adapter)
        # How the video model's training noise was drawn (model_index.json); initial noise is drawn the same way.
        self.register_to_config(frame_noise_correlation=float(frame_noise_correlation))
        self.animator = Animator(reference_unet, denoising_unet, pose_guider, motion_adapter)
        if motion_adapter is not None:
            _share_parameters(self.animator.denoising_unet, denoising_unet, motion_adapter)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.timings: dict = {}

    # --------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype: torch.dtype | None = None,
                        **components) -> "PoseToVideoPipeline":
        """Load a model folder from disk only (never the hub); a missing component is named.

        Each part is loaded by its own class rather than through diffusers' generic loader, which only finds load
        methods for libraries that re-export diffusers' base classes (our `models` package does not).
        `components` may replace any part with an already loaded object.
        """
        import diffusers
        from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
        from transformers import CLIPVisionModelWithProjection

        from ..models.pose_guider import PoseGuider

        root = check_model_folder(pretrained_model_name_or_path)
        weights = dict(offline_kwargs(), **({"torch_dtype": torch_dtype} if torch_dtype else {}))
        scheduler_class = json.loads((root / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        loaders = {
            "reference_unet": lambda p: UNet2DConditionModel.from_pretrained(p, **weights),
            "denoising_unet": lambda p: UNet2DConditionModel.from_pretrained(p, **weights),
            "pose_guider": lambda p: PoseGuider.from_pretrained(p, **weights),
            "vae": lambda p: AutoencoderKL.from_pretrained(p, **weights),
            "image_encoder": lambda p: CLIPVisionModelWithProjection.from_pretrained(
                p, **offline_kwargs(), **({"dtype": torch_dtype} if torch_dtype else {})),
            "feature_extractor": lambda p: _image_processor_class().from_pretrained(p, **offline_kwargs()),
            "scheduler": lambda p: getattr(diffusers, scheduler_class).from_pretrained(p, **offline_kwargs()),
        }
        if (root / "motion_adapter").is_dir():
            loaders["motion_adapter"] = lambda p: MotionAdapter.from_pretrained(p, **weights)
        for name, load in loaders.items():
            if name not in components:
                components[name] = load(root / name)
        index_path = root / "model_index.json"
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        components.setdefault("frame_noise_correlation", float(index.get("frame_noise_correlation", 0.0)))
        return cls(**components)

    def to(self, *args, **kwargs) -> "PoseToVideoPipeline":
        super().to(*args, **kwargs)
        # The motion UNet is not a registered component: its parameters are tied to ones that were just moved,
        # its buffers (positional encodings) are not. Moved by hand: ModelMixin.to warns about dtype casts.
        device, dtype = self.reference_unet.device, self.reference_unet.dtype
        for module in self.animator.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = buffer.to(device, dtype if buffer.is_floating_point() else None)
        return self

    @property
    def is_video_model(self) -> bool:
        return self.animator.is_video_model

    @property
    def max_context_frames(self) -> int | None:
        return self.motion_adapter.config.motion_max_seq_length if self.motion_adapter is not None else None

    # --------------------------------------------------------------------------------------------- inputs
    def sampling_scheduler(self):
        """A fresh copy of the saved (training) schedule; a DDPM training scheduler samples as DDIM."""
        if isinstance(self.scheduler, DDPMScheduler):
            return DDIMScheduler.from_config(self.scheduler.config)
        return type(self.scheduler).from_config(self.scheduler.config)

    def prepare_inputs(self, reference_image, pose, height=None, width=None):
        """-> (reference uint8 (H, W, 3) at the output size, poses uint8 (F, H, W, 3), width, height)."""
        reference = as_rgb_array(reference_image, "reference image")
        poses, _ = load_pose_frames(pose)
        if width is None or height is None:
            width = width or poses.shape[2]
            height = height or poses.shape[1]
        width, height, changed = round_size(width, height, self.vae_scale_factor)
        if changed:
            logger.warning(f"output size rounded down to {width}x{height} (multiples of {self.vae_scale_factor})")
        poses = np.stack([resize(frame, width, height) for frame in poses])
        return reference, poses, width, height

    @torch.no_grad()
    def encode_reference_image(self, reference: np.ndarray, width: int, height: int):
        """-> (reference latents (1, 4, h, w) = VAE latent mean x scaling factor, CLIP image_embeds (1, 1, D))."""
        device, dtype = self.animator.device, self.vae.dtype
        pixels = torch.tensor(fit_reference(reference, width, height)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        latents = self.vae.encode(pixels.to(device, dtype)).latent_dist.mean * self.vae.config.scaling_factor
        clip_pixels = self.feature_extractor(images=reference, return_tensors="pt").pixel_values
        embeds = self.image_encoder(clip_pixels.to(device, self.image_encoder.dtype)).image_embeds
        return latents, embeds.unsqueeze(1)

    def prepare_latents(self, num_frames: int, height: int, width: int, generator: torch.Generator,
                        reroll_mask=None, reroll_seed: int | None = None) -> torch.Tensor:
        """Initial noise (1, 4, F, h, w), unscaled, drawn on the CPU so a seed gives the same video on any device.

        An image model shares one noise over all frames; a video model draws each frame's noise with the
        frame correlation it was trained with (model_index.json). With `reroll_mask` ((H, W) or (F, H, W), values > 0.5 or
        True re-roll), noise under the mask (any latent cell touching it) is re-drawn from `reroll_seed`.
        """
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        channels = self.animator.denoising_unet.config.in_channels
        rho = self.config.frame_noise_correlation if self.is_video_model else 1.0

        def draw(gen: torch.Generator) -> torch.Tensor:
            if rho >= 1.0:
                return torch.randn((1, channels, 1, h, w), generator=gen).expand(1, channels, num_frames, h, w)
            noise = torch.randn((1, channels, num_frames, h, w), generator=gen)
            if rho > 0.0:  # the correlated frame noise the video model was trained with
                common = torch.randn((1, channels, 1, h, w), generator=gen)
                noise = rho ** 0.5 * common + (1.0 - rho) ** 0.5 * noise
            return noise

        noise = draw(generator)
        if reroll_mask is not None:
            if reroll_seed is None:
                raise ValueError("reroll_mask needs a reroll_seed (a different seed draws the new noise)")
            mask = self.latent_mask(reroll_mask, num_frames, height, width)  # (F, h, w) bool
            fresh = draw(torch.Generator().manual_seed(int(reroll_seed)))
            return torch.where(mask[None, None], fresh, noise).contiguous()
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

    # --------------------------------------------------------------------------------------------- denoising
    def predict_window(self, latents: torch.Tensor, t, cond: Conditioning, frames: list[int]) -> torch.Tensor:
        """The guided model prediction for the frames `frames` of `latents` (1, 4, f, h, w): all guidance rows run
        as one batch; the bank must hold one row per guidance row."""
        rows = cond.rows
        sample = latents.expand(len(rows), -1, -1, -1, -1)
        features = cond.pose_features[frames]
        pose_rows = torch.cat([features if use_pose else torch.zeros_like(features) for _, use_pose in rows])
        drop = torch.tensor([dropped for dropped, _ in rows], device=latents.device)
        embeds = cond.image_embeds.expand(len(rows), -1, -1)
        pred = self.animator.denoise(sample, t, embeds, pose_rows, drop if drop.any() else None)
        return combine_guidance(pred.float(), rows, cond.guidance_scale, cond.pose_guidance_scale)

    @torch.no_grad()
    def __call__(self, reference_image, pose, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = 3.5, pose_guidance_scale: float | None = None,
                 context_frames: int = 24, context_overlap: int = 4, closed_loop: bool = False,
                 decode_chunk_size: int = 8, seed: int | None = None, generator: torch.Generator | None = None,
                 eta: float = 0.0, reroll_mask=None, reroll_seed: int | None = None, output_type: str = "np",
                 return_dict: bool = True, recompute_reference_every_step: bool = False):
        """Render the pose sequence with the reference's appearance.

        reference_image: path, PIL image or uint8 (H, W, 3). pose: video path, image path, folder of images,
        uint8 (F, H, W, 3) or a list of images (RGB skeletons on black). height/width default to the pose size
        (rounded down to multiples of 8). seed or generator (CPU) make the result exactly reproducible.
        context_frames/context_overlap: the sliding window for video models (capped by the motion modules' length);
        an image model ignores the overlap and renders `context_frames` frames per UNet batch.
        recompute_reference_every_step: for benchmarks only — reruns the ReferenceNet at every step and window, as
        a naive implementation would, to measure what running it once saves.
        """
        if output_type not in ("np", "pil", "pt", "latent"):
            raise ValueError(f"output_type must be np, pil, pt or latent, got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be >= 1, got {decode_chunk_size}")
        device = self.animator.device
        timings = {"reference_s": 0.0, "denoise_s": 0.0, "vae_s": 0.0, "reference_calls": 0}
        self.timings = timings

        reference, poses, width, height = self.prepare_inputs(reference_image, pose, height, width)
        num_frames = len(poses)
        if self.is_video_model:
            limit = self.max_context_frames
            if limit is not None and context_frames > limit:
                logger.warning(f"context_frames {context_frames} > the motion modules' length {limit}: using {limit}")
                context_frames = limit
            windows = context_windows(num_frames, context_frames, min(context_overlap, context_frames - 1),
                                      closed_loop)
        else:  # independent frames: plain chunks, nothing to blend
            windows = context_windows(num_frames, max(1, context_frames), 0)

        if generator is None:
            generator = torch.Generator().manual_seed(random.randrange(2**31) if seed is None else int(seed))
        latents = self.prepare_latents(num_frames, height, width, generator, reroll_mask, reroll_seed)
        scheduler = self.sampling_scheduler()
        # DDIM takes eta and a generator; other schedulers a subset (or neither).
        accepted = inspect.signature(scheduler.step).parameters
        step_kwargs = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepted}
        scheduler.set_timesteps(num_inference_steps, device=device)
        latents = (latents * scheduler.init_noise_sigma).to(device)

        # once per video: VAE + CLIP encoding of the reference, ReferenceNet bank, Pose Guider features
        start = time.perf_counter()
        ref_latents, image_embeds = self.encode_reference_image(reference, width, height)
        _sync(device)
        timings["vae_s"] += time.perf_counter() - start
        rows = guidance_rows(guidance_scale, pose_guidance_scale)
        if not recompute_reference_every_step:
            start = time.perf_counter()
            self._encode_reference(ref_latents, image_embeds, len(rows))
            _sync(device)
            timings["reference_s"] += time.perf_counter() - start
        pose_pixels = torch.from_numpy(poses).permute(0, 3, 1, 2).to(device, self.animator.pose_guider.dtype) / 255.0
        cond = Conditioning(image_embeds, self.animator.encode_pose(pose_pixels), rows, guidance_scale,
                            pose_guidance_scale)

        weights = [position_weights(len(window)).to(device, torch.float32) for window in windows]
        start = time.perf_counter()
        with self.progress_bar(total=num_inference_steps * len(windows)) as bar:
            for t in scheduler.timesteps:
                total = torch.zeros_like(latents, dtype=torch.float32)
                weight_sum = torch.zeros(num_frames, device=device, dtype=torch.float32)
                for window, weight in zip(windows, weights):
                    if recompute_reference_every_step:
                        _sync(device)
                        tick = time.perf_counter()
                        self._encode_reference(ref_latents, image_embeds, len(rows))
                        _sync(device)
                        timings["reference_s"] += time.perf_counter() - tick
                        start += time.perf_counter() - tick  # keep denoise_s the UNet's own time
                    sample = scheduler.scale_model_input(latents[:, :, window], t)
                    pred = self.predict_window(sample, t, cond, window)
                    total[:, :, window] += pred * weight[None, None, :, None, None]
                    weight_sum[window] += weight
                    bar.update()
                pred = (total / weight_sum[None, None, :, None, None]).to(latents.dtype)
                latents = scheduler.step(pred, t, latents, **step_kwargs).prev_sample
        _sync(device)
        timings["denoise_s"] += time.perf_counter() - start
        self.animator.reference_state.clear()

        if output_type == "latent":
            frames = latents
        else:
            start = time.perf_counter()
            frames = self.decode_latents(latents, decode_chunk_size)  # float (F, 3, H, W) in [0, 1], on the CPU
            timings["vae_s"] += time.perf_counter() - start
            if output_type in ("np", "pil"):
                frames = (frames.permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8).numpy()
            if output_type == "pil":
                from PIL import Image

                frames = [Image.fromarray(frame) for frame in frames]
        timings["frames"] = num_frames
        timings["windows"] = len(windows)
        if not return_dict:
            return (frames,)
        return PoseToVideoOutput(frames=frames)

    def _encode_reference(self, ref_latents, image_embeds, rows: int) -> None:
        """ReferenceNet on the clean reference; the bank is tiled to one row per guidance row."""
        self.animator.encode_reference(ref_latents, image_embeds)
        self.timings["reference_calls"] = self.timings.get("reference_calls", 0) + 1
        if rows > 1:
            self.animator.reference_state.repeat_bank(rows)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
        """(1, 4, F, h, w) -> float (F, 3, H, W) in [0, 1] on the CPU, `chunk_size` frames per VAE call, so the
        VAE's activation memory does not grow with the video's length."""
        frames = latents[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor
        out = []
        for start in range(0, len(frames), chunk_size):
            chunk = frames[start:start + chunk_size].to(self.vae.dtype)
            image = self.vae.decode(chunk).sample
            out.append(((image.float() + 1.0) / 2.0).clamp(0, 1).cpu())
        return torch.cat(out)


def render_video(model_dir_or_pipe, reference_image, pose_frames, num_inference_steps: int = 25,
                 guidance_scale: float = 3.5, seed: int = 0, device: str | None = None,
                 torch_dtype: torch.dtype | None = None, **kwargs) -> np.ndarray:
    """One call for other tools (e.g. the comparison): uint8 (F, H, W, 3) frames.

    model_dir_or_pipe: a model folder or a loaded `PoseToVideoPipeline`; other keyword arguments go to the pipeline
    call (height, width, context_frames, pose_guidance_scale, reroll_mask, ...).
    """
    pipe = model_dir_or_pipe
    if not isinstance(pipe, PoseToVideoPipeline):
        pipe = PoseToVideoPipeline.from_pretrained(pipe, **({"torch_dtype": torch_dtype} if torch_dtype else {}))
        pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    return pipe(reference_image, pose_frames, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, seed=seed, output_type="np", **kwargs).frames
