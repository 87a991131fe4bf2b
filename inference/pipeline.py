"""`PoseToVideoPipeline`: a reference image + a pose sequence -> a video of that person performing the poses.

Built on `models.Animator`: the ReferenceNet runs ONCE per video (clean reference latent, timestep 0) and its bank
serves every denoising step and every context window; the Pose Guider runs once per video; the denoising UNet runs
per step per window. Long videos are denoised in overlapping context windows whose predictions are blended with
position weights. An image (stage-1) model renders each frame independently from one shared initial noise, so the
frames differ only where the poses do. The loop, noise, windows, decode and output live in `inference.sampling`,
shared with the zero-shot pipeline and training validation.

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

diffusers conventions: every module that runs is a registered component (the motion UNet is `denoising_unet`), so
`to()`, `enable_model_cpu_offload()` and `enable_sequential_cpu_offload()` need no code of ours;
`callback_on_step_end`, `latents=`, generator lists and `PoseVideoPipelineOutput` work as in `AnimateDiffPipeline`.
The attention switches keep the reference processors and choose their kernel (see `models.attention`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel, UNetMotionModel
from diffusers.utils import logging
from diffusers.video_processor import VideoProcessor

from ..models.animator import Animator, has_reference_net
from ..models.loading import (MissingWeightsError, clip_image_processor_class, load_image_encoder, offline_kwargs,
                              require_dir)
from ..models.motion import to_motion_unet
from .sampling import (PoseVideoPipelineOutput, SamplingMixin, combine_guidance, frame_windows, guidance_rows,
                       sampling_scheduler, scheduler_step_kwargs, to_uint8)

logger = logging.get_logger(__name__)

REQUIRED_COMPONENTS = ("reference_unet", "denoising_unet", "pose_guider", "vae", "image_encoder",
                       "feature_extractor", "scheduler")


@dataclass
class Conditioning:
    """Everything computed once per video that the per-window denoising calls share."""

    image_embeds: torch.Tensor  # (1, 1, D)
    pose_features: torch.Tensor  # (F, C, h, w): one row per frame
    rows: tuple  # per guidance row: (drop_reference, use_pose)
    guidance_scale: float
    pose_guidance_scale: float | None
    batch_rows: bool = True  # all guidance rows in one UNet call (else one call per row: less memory)


def check_model_folder(path) -> Path:
    """The model folder, or MissingWeightsError naming the first missing component."""
    root = require_dir(path, "model folder", must_contain=())
    for name in REQUIRED_COMPONENTS[0 if has_reference_net(root) else 1:]:  # a stock model has no reference_unet
        require_dir(root / name, f"model folder {root} is missing its {name} component", must_contain=())
    if not (root / "model_index.json").is_file():
        raise MissingWeightsError(f"model folder {root} has no model_index.json (write one with "
                                  "marionet.models.export.export_model_folder)")
    return root


class PoseToVideoPipeline(SamplingMixin, DiffusionPipeline):
    """Animate a reference image with a pose sequence. See the module docstring for the method.

    Components: reference_unet (2-D), denoising_unet (2-D, or the motion UNet of a video model), pose_guider, vae,
    image_encoder (CLIP vision with projection), feature_extractor, scheduler (the training schedule). A
    `motion_adapter` given to the constructor is merged into the denoising UNet (with per-frame GroupNorm) and not
    kept as a separate module; `save_pretrained` splits it out again into the model folder layout.
    reference_unet is None for a stock model (`models.animator`): then the CLIP token is the only appearance input
    and guidance runs over it alone.
    """

    model_cpu_offload_seq = "image_encoder->reference_unet->pose_guider->denoising_unet->vae"
    _optional_components = ["motion_adapter", "reference_unet"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, reference_unet, denoising_unet, pose_guider, vae, image_encoder, feature_extractor,
                 scheduler, motion_adapter=None, frame_noise_correlation: float = 0.0, *,
                 animator: Animator | None = None):
        super().__init__()
        if motion_adapter is not None:
            if isinstance(denoising_unet, UNetMotionModel):
                raise ValueError("denoising_unet already has motion modules: pass no motion_adapter")
            denoising_unet = to_motion_unet(denoising_unet, motion_adapter)
        self.register_modules(reference_unet=reference_unet, denoising_unet=denoising_unet, pose_guider=pose_guider,
                              vae=vae, image_encoder=image_encoder, feature_extractor=feature_extractor,
                              scheduler=scheduler, motion_adapter=None)
        # How the video model's training noise was drawn (model_index.json); initial noise is drawn the same way.
        self.register_to_config(frame_noise_correlation=float(frame_noise_correlation))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)
        # The reference processors and the Pose Guider hook go on the registered modules now; `animator` (the live
        # training model, for validation) is used as it is.
        self._animator = animator if animator is not None else Animator(reference_unet, denoising_unet, pose_guider)

    # --------------------------------------------------------------------------------------------- structure
    @property
    def animator(self) -> Animator:
        """The `Animator` over the registered reference_unet / denoising_unet / pose_guider (the same modules, no
        copies): it holds the reference processors and the Pose Guider hook. Rebuilt if a component is replaced."""
        parts = (self.reference_unet, self.denoising_unet, self.pose_guider)
        current = self._animator
        if any(a is not b for a, b in zip(
                (current.reference_unet, current.denoising_unet, current.pose_guider), parts)):
            self._animator = Animator(*parts)
        return self._animator

    @classmethod
    def from_animator(cls, animator: Animator, vae, image_encoder, feature_extractor, scheduler,
                      frame_noise_correlation: float = 0.0) -> "PoseToVideoPipeline":
        """A pipeline over a live `Animator` (training validation): the same modules, processors and weights, so it
        renders exactly what the exported model folder will."""
        return cls(animator.reference_unet, animator.denoising_unet, animator.pose_guider, vae, image_encoder,
                   feature_extractor, scheduler, frame_noise_correlation=frame_noise_correlation, animator=animator)

    @property
    def is_video_model(self) -> bool:
        return isinstance(self.denoising_unet, UNetMotionModel)

    @property
    def max_context_frames(self) -> int | None:
        return self.denoising_unet.config.motion_max_seq_length if self.is_video_model else None

    @property
    def initial_noise_correlation(self) -> float:
        return self.config.frame_noise_correlation if self.is_video_model else 1.0

    # --------------------------------------------------------------------------------------------- attention
    def enable_xformers_memory_efficient_attention(self, attention_op=None):
        """xformers for every attention layer; the reference processors stay and use the xformers kernel."""
        super().enable_xformers_memory_efficient_attention(attention_op)
        self.animator.set_attention_kernel("xformers", reinstall=True)

    def disable_xformers_memory_efficient_attention(self):
        super().disable_xformers_memory_efficient_attention()
        self.animator.set_attention_kernel("sdpa", reinstall=True)

    def enable_attention_slicing(self, slice_size="auto"):
        """Sliced attention (fewer heads at a time) everywhere; the reference processors stay and slice too."""
        super().enable_attention_slicing(slice_size)
        self.animator.set_attention_kernel("sdpa" if slice_size is None else "sliced", slice_size, reinstall=True)

    # --------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype: torch.dtype | None = None,
                        **components) -> "PoseToVideoPipeline":
        """Load a model folder from disk only (never the hub); a missing component is named.

        Each part is loaded by its own class rather than through diffusers' generic loader, which only finds load
        methods for libraries that re-export diffusers' base classes (our package does not).
        `components` may replace any part with an already loaded object.
        """
        import diffusers
        from diffusers import AutoencoderKL, MotionAdapter

        from ..models.pose_guider import PoseGuider

        root = check_model_folder(pretrained_model_name_or_path)
        weights = dict(offline_kwargs(), **({"torch_dtype": torch_dtype} if torch_dtype else {}))
        scheduler_class = json.loads((root / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        loaders = {
            "reference_unet": lambda p: UNet2DConditionModel.from_pretrained(p, **weights),
            "denoising_unet": lambda p: UNet2DConditionModel.from_pretrained(p, **weights),
            "pose_guider": lambda p: PoseGuider.from_pretrained(p, **weights),
            "vae": lambda p: AutoencoderKL.from_pretrained(p, **weights),
            "image_encoder": lambda p: load_image_encoder(p, torch_dtype),
            "feature_extractor": lambda p: clip_image_processor_class().from_pretrained(p, **offline_kwargs()),
            "scheduler": lambda p: getattr(diffusers, scheduler_class).from_pretrained(p, **offline_kwargs()),
        }
        if not has_reference_net(root):
            loaders.pop("reference_unet")
            components.setdefault("reference_unet", None)
        if (root / "motion_adapter").is_dir():
            loaders["motion_adapter"] = lambda p: MotionAdapter.from_pretrained(p, **weights)
        for name, load in loaders.items():
            if name not in components:
                components[name] = load(root / name)
        index = json.loads((root / "model_index.json").read_text())
        components.setdefault("frame_noise_correlation", float(index.get("frame_noise_correlation", 0.0)))
        return cls(**components)

    def save_pretrained(self, save_directory, safe_serialization: bool = True, **card_fields) -> Path:
        """Write the model folder layout (`models.export`): denoising_unet/ 2-D + motion_adapter/, model_index.json
        with the frame-noise correlation, a model card; each part is moved into place only when complete."""
        from ..models.export import export_model_folder

        return export_model_folder(save_directory, self.animator, self.vae, self.image_encoder,
                                   self.feature_extractor, self.scheduler,
                                   frame_noise_correlation=self.config.frame_noise_correlation,
                                   card={"produced_by": "PoseToVideoPipeline.save_pretrained", **card_fields})

    # --------------------------------------------------------------------------------------------- conditions
    @torch.no_grad()
    def encode_reference_latents(self, reference: np.ndarray, height: int, width: int) -> torch.Tensor:
        """VAE latent mean x scaling factor of the reference cropped to the output's aspect ratio: (1, 4, h, w)."""
        pixels = self.reference_pixels(reference, height, width)
        return self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def write_reference_bank(self, ref_latents: torch.Tensor, image_embeds: torch.Tensor) -> None:
        """ReferenceNet on the clean reference, once per video: one bank row that every guidance row, video, window
        and step reads (see `models.attention`)."""
        self.animator.encode_reference(ref_latents, image_embeds)

    @torch.no_grad()
    def encode_pose(self, poses: np.ndarray) -> torch.Tensor:
        """Pose Guider features of uint8 (F, H, W, 3) skeletons: (F, C, h, w), once per video."""
        pixels = torch.from_numpy(poses).permute(0, 3, 1, 2).to(self._execution_device, self.pose_guider.dtype)
        return self.animator.encode_pose(pixels / 255.0)

    def _step_cache_models(self) -> tuple:
        return (self.denoising_unet,)

    def predict_window(self, latents: torch.Tensor, t, cond: Conditioning, frames: list[int],
                       step: int = 0) -> torch.Tensor:
        """The guided model output for `frames` of B videos: latents (B, 4, f, h, w) -> (B, 4, f, h, w).

        All guidance rows of all videos run as one UNet batch, ordered [row 0: videos 0..B-1 ; row 1: ...], all
        reading the one bank row (`write_reference_bank`); with `cond.batch_rows` off, each guidance
        row is its own UNet call over the B videos (the same numbers, about 1/rows of the activation memory).
        `step` (the denoising step's index) tells step caching, when enabled, which calls are full ones.
        """
        rows, videos = cond.rows, latents.shape[0]
        features = cond.pose_features[frames].repeat(videos, 1, 1, 1)  # (B*f, C, h, w), batch-major
        groups = [rows] if cond.batch_rows else [(row,) for row in rows]
        preds = []
        for index, group in enumerate(groups):
            sample = latents.repeat(len(group), 1, 1, 1, 1)
            pose_rows = torch.cat([features if use_pose else torch.zeros_like(features) for _, use_pose in group])
            drop = tuple(dropped for dropped, _ in group for _ in range(videos))
            embeds = cond.image_embeds.expand(len(sample), -1, -1)
            with self.cached_call(step, (tuple(frames), index)):
                preds.append(self.animator.denoise(sample, t, embeds, pose_rows, drop if any(drop) else None).float())
        return combine_guidance(torch.cat(preds), rows, cond.guidance_scale, cond.pose_guidance_scale)

    # --------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(self, reference_image, pose, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = 3.5, pose_guidance_scale: float | None = None,
                 num_videos_per_prompt: int = 1, context_frames: int = 24, context_overlap: int = 4,
                 closed_loop: bool = False, decode_chunk_size: int = 8, batch_guidance_rows: bool = True,
                 generator=None,
                 latents: torch.Tensor | None = None, eta: float = 0.0, reroll_mask=None,
                 reroll_seed: int | None = None, output_type: str = "np", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",)):
        """Render the pose sequence with the reference's appearance; returns `PoseVideoPipelineOutput`.

        reference_image: path, PIL image or uint8 (H, W, 3). pose: video path, image path, folder of images,
        uint8 (F, H, W, 3) or a list of images (RGB skeletons on black). height/width default to the pose size
        (rounded down to multiples of 8). generator (a CPU generator, or one per video) makes the result exactly
        reproducible on any device. num_videos_per_prompt: videos from the same inputs, each with its own noise.
        context_frames/context_overlap: the sliding window for video models (capped by the motion modules' length);
        an image model ignores the overlap and renders `context_frames` frames per UNet batch.
        batch_guidance_rows=False runs the guidance rows one UNet call at a time: the same result with about half the
        activation memory (with `enable_model_cpu_offload()`, what fits 24 frames at 768x512 in 6 GB).
        latents: initial noise (B, 4, F, h, w) instead of drawing it. callback_on_step_end(pipe, step, t, kwargs)
        runs after every step with the tensors named in callback_on_step_end_tensor_inputs and may replace them.
        """
        # 1. Check inputs; bring the reference and the poses to the output size.
        self.check_common_inputs(num_inference_steps, decode_chunk_size, output_type, callback_on_step_end,
                                 callback_on_step_end_tensor_inputs)
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
        reference, poses, height, width = self.prepare_inputs(reference_image, pose, height, width)
        self._guidance_scale = guidance_scale
        self._interrupt = False

        # 2. Call parameters: guidance rows and context windows.
        device = self._execution_device
        num_frames = len(poses)
        rows = guidance_rows(guidance_scale, pose_guidance_scale)
        windows = frame_windows(num_frames, context_frames, context_overlap, closed_loop, self.is_video_model,
                                self.max_context_frames)

        # 3. Once per video: the CLIP token, the reference latent and its ReferenceNet bank, the Pose Guider features.
        # (From here on the bank is cleared whatever happens: it holds every banked layer's activations.)
        image_embeds = self.encode_image(reference)
        ref_latents = self.encode_reference_latents(reference, height, width)
        try:
            self.write_reference_bank(ref_latents, image_embeds)
            cond = Conditioning(image_embeds, self.encode_pose(poses), rows, guidance_scale, pose_guidance_scale,
                                batch_guidance_rows)

            # 4. Timesteps, on a fresh copy of the saved (training) schedule.
            scheduler = sampling_scheduler(self.scheduler)
            scheduler.set_timesteps(num_inference_steps, device=device)

            # 5. Initial noise.
            latents = self.prepare_latents(num_videos_per_prompt, num_frames, height, width, generator, latents,
                                           reroll_mask, reroll_seed) * scheduler.init_noise_sigma

            # 6. Extra scheduler-step arguments.
            step_kwargs = scheduler_step_kwargs(scheduler, generator, eta)

            # 7. Denoising loop over the context windows.
            latents = self.denoise(latents, scheduler.timesteps, scheduler, windows,
                                   lambda i, t, frames, sample: self.predict_window(sample, t, cond, frames, i),
                                   step_kwargs, callback_on_step_end, callback_on_step_end_tensor_inputs)
        finally:
            self.animator.reference_state.clear()

        # 8. Decode in chunks and convert; 9. offload hooks back to their resting state.
        frames = self.postprocess(latents, output_type, decode_chunk_size)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return PoseVideoPipelineOutput(frames=frames)


def render_video(model_dir_or_pipe, reference_image, pose_frames, num_inference_steps: int = 25,
                 guidance_scale: float = 3.5, seed: int = 0, device: str | None = None,
                 torch_dtype: torch.dtype | None = None, **kwargs) -> np.ndarray:
    """One call for other tools (the comparison, the app): uint8 (F, H, W, 3) frames of one video.

    model_dir_or_pipe: a model folder or a loaded `PoseToVideoPipeline`; other keyword arguments go to the pipeline
    call (height, width, context_frames, pose_guidance_scale, reroll_mask, ...).
    """
    pipe = model_dir_or_pipe
    if not isinstance(pipe, PoseToVideoPipeline):
        pipe = PoseToVideoPipeline.from_pretrained(pipe, **({"torch_dtype": torch_dtype} if torch_dtype else {}))
        pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    frames = pipe(reference_image, pose_frames, num_inference_steps=num_inference_steps,
                  guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(int(seed)),
                  output_type="np", **kwargs).frames
    return to_uint8(frames[0])
