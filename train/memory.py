"""Peak GPU memory and FLOPs at SD1.5 size, from the real code on fake tensors: what fits on which card.

No GPU, real weights or memory are needed. The components are the SD1.5 architecture (`models.sd15`) built on the
meta device; the tracked work is marionet's own code:

- training: `train.core.encode_batch` (frozen VAE + CLIP on the batch), `sample_noise`, `diffusion_loss` through the
  `Animator` (ReferenceNet + denoising UNet + Pose Guider [+ motion modules]), backward and an AdamW step, under
  autocast as `train_step` runs them;
- inference: `PoseToVideoPipeline`'s own stages (`encode_image`, `encode_reference_latents`,
  `write_reference_bank`, `predict_window` for one window of guidance rows, `decode_latents`).

Memory: `PeakTracker` (live storage bytes of every op's outputs, by what holds them) under `FakeTensorMode` on the
fake *CPU* device (its SDPA kernel, like a GPU's flash / memory-efficient one, stores no attention matrix), which
splits the peak into weights, gradients, optimizer states (with the foreach step's temporaries), activations (with
temporaries) and the frozen parts, at the peak of each phase (forward+backward, optimizer step). Options that
only change how the tracked tensors are stored are applied to each phase's split by arithmetic, stated in
`TrainingEstimate.peak`: 8-bit AdamW (bitsandbytes' state layout), DeepSpeed ZeRO-2 over N GPUs (2-byte weights,
sharded gradients, fp32 master weights and states) and its CPU optimizer offload; for inference, model CPU offload
(one model resident at a time, plus the VAE, as the offload order keeps it).

FLOPs: `torch.utils.flop_counter` on the meta device (the fake CPU SDPA kernel reports none), forward + backward for a
training sample, the UNet passes per generated frame for inference; `FLOP_FORMULAS` adds the CPU flash-attention
kernel that the reference attention calls directly for its log-sum-exps (torch counts only the CUDA kernels).

    marionet bench memory --quick                     # the cases the README's table quotes (~4 min on 2 cores)
    marionet bench memory --out docs/memory.json --update-docs   # all cases (~12 min); rewrites the tables
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
import weakref
from dataclasses import asdict, dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}


def flop_counter() -> FlopCounterMode:
    """`FlopCounterMode` that also counts the attention kernels marionet calls directly."""
    return FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)

GIB = 2 ** 30
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PeakTracker(TorchDispatchMode):
    """Live tensor storage bytes by what holds them, and their peak, from every op's outputs.

    Known storages (weights, inputs) are registered up front; every new storage an op creates counts as an
    activation (temporaries included) until it turns out to be a gradient (`note_gradients`) or is created inside
    the optimizer step (`optimizer_step`, states). Storages are released through weak references, as torch's
    MemTracker does; unlike it, nothing here walks all tensors per op, so an SD1.5 step is tracked in about a minute.
    """

    CATEGORIES = ("weights", "frozen", "gradients", "optimizer", "activations")

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple] = {}  # id(storage) -> (weakref, bytes, category)
        self.totals = dict.fromkeys(self.CATEGORIES, 0)
        self.peak, self.peak_split = 0, dict(self.totals)
        self.category = "activations"
        self.phase, self.phase_peaks = "", {}  # phase label -> the split at that phase's own peak
        self.max_activations = 0

    def _release(self, key):
        entry = self.live.pop(key, None)
        if entry is not None:
            self.totals[entry[2]] -= entry[1]

    def register(self, tensor, category: str) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        entry = self.live.get(key)
        if entry is not None:
            if entry[2] != category and category != "activations":  # e.g. an activation that is a gradient
                self.totals[entry[2]] -= entry[1]
                self.totals[category] += entry[1]
                self.live[key] = (entry[0], entry[1], category)
            return
        size = storage.nbytes()
        self.live[key] = (weakref.ref(storage, lambda _, key=key: self._release(key)), size, category)
        self.totals[category] += size
        self._update()

    def register_module(self, module, category: str) -> None:
        for tensor in list(module.parameters()) + list(module.buffers()):
            self.register(tensor, category)

    def note_gradients(self, params) -> None:
        for param in params:
            if param.grad is not None:
                self.register(param.grad, "gradients")

    @contextlib.contextmanager
    def optimizer_step(self):
        self.category = "optimizer"
        try:
            yield
        finally:
            self.category = "activations"

    def reset_peak(self) -> None:
        self.peak, self.peak_split = sum(self.totals.values()), dict(self.totals)
        self.phase_peaks, self.max_activations = {}, self.totals["activations"]

    @contextlib.contextmanager
    def in_phase(self, label: str):
        self.phase = label
        try:
            yield
        finally:
            self.phase = ""

    def _update(self) -> None:
        total = sum(self.totals.values())
        if total > self.peak:
            self.peak, self.peak_split = total, dict(self.totals)
        if self.phase and total > sum(self.phase_peaks.get(self.phase, {}).values()):
            self.phase_peaks[self.phase] = dict(self.totals)
        self.max_activations = max(self.max_activations, self.totals["activations"])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.register(tensor, self.category)
        return out


@dataclass
class TrainCase:
    stage: int = 1                    # 1: frames, all of ReferenceNet + UNet + Pose Guider train; 2: motion modules
    resolution: int = 512
    batch: int = 1
    frames: int = 24                  # stage 2
    precision: str = "bf16"           # autocast dtype (fp32: none); frozen VAE/CLIP stored in it, as training does
    checkpointing: bool = False
    frozen_half: bool = False         # optim.half_precision_frozen: the Animator's frozen weights stored in `precision`

    @property
    def label(self) -> str:
        text = f"stage {self.stage}, {self.resolution}², batch {self.batch}"
        if self.stage == 2:
            text += f", {self.frames} frames"
        return text + (", checkpointing" if self.checkpointing else "") + (
            ", frozen weights half" if self.frozen_half else "")


OPTIONS = {  # name -> (description, world size)
    "ddp": ("AdamW, DDP / one GPU (as tracked)", 1),
    "adamw8bit": ("8-bit AdamW (bitsandbytes)", 1),
    "zero2x4": ("DeepSpeed ZeRO-2 over 4 GPUs", 4),
    "zero2x8": ("DeepSpeed ZeRO-2 over 8 GPUs", 8),
    "zero2_offload": ("DeepSpeed ZeRO-2, optimizer offloaded to CPU (1 GPU)", 1),
}


@dataclass
class TrainingEstimate:
    case: TrainCase
    phases: dict                      # "forward+backward" / "optimizer step" -> {category: bytes} at that phase's peak
    max_activations: float            # the largest activation total at any moment (bytes)
    trainable: int                    # trainable parameters
    autocast_copies: float            # bytes of the half-precision weight copies autocast caches during forward
    flops_per_sample: float = 0.0
    seconds: float = 0.0

    def peak(self, option: str = "ddp") -> tuple[float, dict]:
        """(peak bytes, split at the worst phase) with an option applied to both phases' splits:

        - adamw8bit: two 8-bit states per parameter plus an fp32 absmax per 2048 values and state (bitsandbytes'
          layout; its fused kernels leave no foreach temporaries);
        - zero2xN: the trainable weights in 2 bytes (DeepSpeed's bf16/fp16 mode, so autocast caches no copies),
          2-byte gradients sharded 1/N plus one reduce bucket of min(5e8, params) values (DeepSpeed's default),
          fp32 master weights and AdamW states (12 bytes/param) sharded 1/N, +4 bytes/param/N of step temporaries;
        - zero2_offload: the same on one GPU with the master weights and states on the CPU.
        """
        worst = (0.0, {})
        for phase, split in self.phases.items():
            out = dict(split)
            psi = self.trainable
            if option == "adamw8bit":
                out["optimizer"] = psi * (2 + 2 * 4 / 2048)
            elif option.startswith("zero2"):
                world = OPTIONS[option][1]
                out["weights"] = split["weights"] - psi * 2
                out["activations"] = max(0.0, split["activations"] - self.autocast_copies)
                out["gradients"] = psi * 2 / world + min(5e8, psi) * 2
                if option == "zero2_offload":
                    out["optimizer"] = 0.0
                else:
                    out["optimizer"] = psi * 12 / world + (psi * 4 / world if phase == "optimizer step" else 0)
            elif option != "ddp":
                raise ValueError(f"unknown option {option!r}")
            total = sum(out.values())
            if total > worst[0]:
                worst = (total, dict(out, phase=phase))
        return worst


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


@contextlib.contextmanager
def _quiet():
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


# ------------------------------------------------------------------------------------------------ training
def build_training(case: TrainCase, sd15: bool = True, device: str = "meta"):
    """(Animator, frozen parts with the training scheduler): SD1.5 size, or tiny for the CPU check; on the meta
    device (to run on fake tensors or count FLOPs) or on the CPU (real tensors, for the check)."""
    from ..models import Animator, build_tiny_components
    from ..models.sd15 import build_sd15_components
    from .config import NoiseConfig
    from .core import Frozen, make_training_scheduler

    with torch.device(device), _quiet():
        if sd15:
            parts = build_sd15_components(video=case.stage == 2)
            animator = Animator(parts["reference_unet"], parts["denoising_unet"], parts["pose_guider"],
                                parts.get("motion_adapter"))
        else:
            parts = build_tiny_components(seed=0, with_motion=case.stage == 2)
            animator = Animator.from_base_unet(parts["unet"], parts["pose_guider"], parts.get("motion_adapter"))
    if case.stage == 2:
        animator.freeze_except_motion()
    scheduler = make_training_scheduler(parts["scheduler"].config, NoiseConfig())
    frozen = Frozen(parts["vae"].requires_grad_(False), parts["image_encoder"].requires_grad_(False), None, scheduler)
    half = DTYPES[case.precision]
    with _quiet():  # dtypes as train.core.setup sets them (on the meta device: fake tensors cannot be swapped)
        frozen.vae.to(half), frozen.image_encoder.to(half)
        if case.frozen_half:
            from .core import store_frozen_in

            store_frozen_in(animator, half)
    return animator, frozen


def training_batch(case: TrainCase, clip_size: int) -> dict:
    """Pixel batch as the datasets give it (uninitialised: only shapes and dtypes matter)."""
    r, b = case.resolution, case.batch
    frames = (b, case.frames) if case.stage == 2 else (b,)
    return {"target": torch.empty(*frames, 3, r, r).uniform_(-1, 1), "pose": torch.empty(*frames, 3, r, r).uniform_(),
            "reference": torch.empty(b, 3, r, r).uniform_(-1, 1),
            "clip_image": torch.empty(b, 3, clip_size, clip_size).normal_()}


class _Loss(torch.nn.Module):
    """What `train.core.train_step` computes before backward (without accelerate, which wraps the same calls)."""

    def __init__(self, animator, frozen, precision: str, device: str = "cpu"):
        super().__init__()
        self.animator, self.vae, self.image_encoder = animator, frozen.vae, frozen.image_encoder
        self.frozen, self.precision, self.device = frozen, precision, device

    def forward(self, batch):
        from .config import NoiseConfig
        from .core import diffusion_loss, encode_batch, sample_noise

        generator = torch.Generator().manual_seed(0)
        with torch.autocast("cpu", dtype=DTYPES[self.precision], enabled=self.precision != "fp32"):
            inputs = encode_batch(batch, self.frozen, self.device, generator)
            noise, timesteps, _ = sample_noise(inputs["latents"], self.frozen.scheduler, NoiseConfig(), generator)
            # No row dropped: which rows drop is data (fake tensors have none); a mixed batch adds index copies only
            loss, _ = diffusion_loss(self.animator, inputs, noise, timesteps, None, self.frozen.scheduler,
                                     NoiseConfig())
        return loss


def track_training(case: TrainCase, sd15: bool = True, fake: bool = True) -> TrainingEstimate:
    """Peaks of one training step (the second, when AdamW's states exist), by phase and by what holds them."""
    animator, frozen = build_training(case, sd15, "meta" if fake else "cpu")
    clip_size = frozen.image_encoder.config.image_size
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    with mode, _quiet():
        if fake:
            for module in (animator, frozen.vae, frozen.image_encoder):
                module.to_empty(device="cpu")
        if case.checkpointing:
            animator.enable_gradient_checkpointing()
        animator.train()
        params = [p for p in animator.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=True)  # foreach: what CUDA uses by default
        batch = training_batch(case, clip_size)
        step = _Loss(animator, frozen, case.precision)
        tracker = PeakTracker()
        tracker.register_module(animator, "weights")
        tracker.register_module(frozen.vae, "frozen")
        tracker.register_module(frozen.image_encoder, "frozen")
        for tensor in batch.values():
            tracker.register(tensor, "activations")
        for param in params:  # a gradient counts as one the moment it is accumulated
            param.register_post_accumulate_grad_hook(lambda p: tracker.register(p.grad, "gradients"))
        with tracker:
            for i in range(2):  # the first step creates the optimizer states; the second is the steady state
                if i == 1:
                    tracker.reset_peak()
                with tracker.in_phase("forward+backward"):
                    loss = step(batch)
                    loss.backward()
                tracker.note_gradients(params)
                with tracker.optimizer_step(), tracker.in_phase("optimizer step"):
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                del loss
    matmul_weights = [m.weight for m in animator.modules()
                      if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d)) and m.weight.requires_grad]
    copies = sum(w.numel() for w in matmul_weights) * 2 if case.precision != "fp32" else 0.0
    return TrainingEstimate(case, tracker.phase_peaks, tracker.max_activations, sum(p.numel() for p in params), copies)


def training_flops(case: TrainCase, sd15: bool = True) -> float:
    """FLOPs of one training sample: frozen encoders + forward + backward (meta device, no memory)."""
    # FLOPs do not depend on dtypes, and CPU autocast does not reach meta tensors: count in fp32
    case = TrainCase(case.stage, case.resolution, case.batch, case.frames, "fp32", case.checkpointing)
    animator, frozen = build_training(case, sd15)
    if case.checkpointing:
        animator.enable_gradient_checkpointing()  # recomputation counts: checkpointing costs FLOPs
    animator.train()
    with torch.device("meta"), _quiet():
        batch = training_batch(case, frozen.image_encoder.config.image_size)
        with flop_counter() as counter:
            _Loss(animator, frozen, case.precision, "meta")(batch).backward()
    return counter.get_total_flops() / case.batch


# ------------------------------------------------------------------------------------------------ inference
@dataclass
class InferenceCase:
    frames: int = 24
    height: int = 768
    width: int = 512
    guidance: float = 3.5
    context: int = 24
    overlap: int = 4
    precision: str = "fp16"
    batch_rows: bool = True           # guidance rows in one UNet call (False: one call per row)
    decode_chunk: int = 8

    @property
    def label(self) -> str:
        text = (f"{self.frames} frames {self.width}x{self.height}, guidance {self.guidance:g}, "
                f"context {self.context}/{self.overlap}")
        if not self.batch_rows or self.decode_chunk != 8:
            text += f", rows one at a time, decode chunk {self.decode_chunk}"
        return text


def build_pipeline(precision: str, sd15: bool = True):
    from ..inference.pipeline import PoseToVideoPipeline
    from ..models import build_tiny_components, clone_unet
    from ..models.sd15 import build_sd15_components

    with torch.device("meta"), _quiet():
        if sd15:
            parts = build_sd15_components(video=True)
        else:
            parts = build_tiny_components(seed=0, with_motion=True)
            unet = parts.pop("unet")
            parts.update(reference_unet=clone_unet(unet), denoising_unet=unet)
        pipe = PoseToVideoPipeline(**parts)
        for name in ("image_encoder", "vae", "reference_unet", "pose_guider", "denoising_unet"):
            getattr(pipe, name).to(DTYPES[precision])
    pipe.set_progress_bar_config(disable=True)
    return pipe


INFERENCE_MODELS = ("image_encoder", "vae", "reference_unet", "pose_guider", "denoising_unet")


def track_inference(case: InferenceCase, sd15: bool = True) -> dict:
    """Peak memory of a render: all weights resident, the largest phase's activations (the bank included while the
    denoising UNet runs), and the model-CPU-offload peak."""
    import numpy as np

    from ..inference.pipeline import Conditioning
    from ..inference.sampling import frame_windows, guidance_rows

    pipe = build_pipeline(case.precision, sd15)
    phases = {}
    with FakeTensorMode(allow_non_fake_inputs=True), _quiet(), torch.no_grad():
        for name in INFERENCE_MODELS:
            getattr(pipe, name).to_empty(device="cpu")
        sizes = {name: _bytes(getattr(pipe, name).parameters()) + sum(
            b.numel() * b.element_size() for b in getattr(pipe, name).buffers()) for name in INFERENCE_MODELS}
        reference = np.zeros((case.height, case.width, 3), np.uint8)
        poses = np.zeros((case.frames, case.height, case.width, 3), np.uint8)
        rows = guidance_rows(case.guidance)
        windows = frame_windows(case.frames, case.context, case.overlap, False, True, pipe.max_context_frames)
        kept = []

        def phase(label, work):
            tracker = PeakTracker()
            for name in INFERENCE_MODELS:
                tracker.register_module(getattr(pipe, name), "weights")
            for tensor in kept:
                tracker.register(tensor, "frozen")  # what earlier phases left for this one (the bank)
            with tracker:
                result = work()
            phases[label] = max(phases.get(label, 0), tracker.peak_split["activations"])
            return result

        embeds = phase("encode", lambda: pipe.encode_image(reference))
        ref_latents = phase("encode", lambda: pipe.encode_reference_latents(reference, case.height, case.width))
        phase("reference", lambda: pipe.write_reference_bank(ref_latents, embeds))
        kept = list(pipe.animator.reference_state.bank.values())
        bank = sum(t.numel() * t.element_size() for t in kept)
        cond = Conditioning(embeds, phase("pose", lambda: pipe.encode_pose(poses)), rows, case.guidance, None,
                            case.batch_rows)
        latents = torch.empty(1, 4, case.frames, case.height // 8, case.width // 8)
        phase("denoise", lambda: pipe.predict_window(latents[:, :, windows[0]], torch.tensor(500), cond, windows[0]))
        pipe.animator.reference_state.clear()
        kept = []
        phase("decode", lambda: pipe.decode_latents(latents[:, :, :case.decode_chunk], case.decode_chunk))
    denoise = phases["denoise"] + bank
    resident = sum(sizes.values())
    # Model CPU offload, order image_encoder->reference_unet->pose_guider->denoising_unet->vae: the VAE (called first
    # to encode the reference) stays resident; each other model is resident only while it runs.
    offload = max(sizes["vae"] + sizes["image_encoder"] + phases["encode"],
                  sizes["vae"] + sizes["reference_unet"] + phases["reference"],
                  sizes["vae"] + sizes["pose_guider"] + phases["pose"] + bank,
                  sizes["vae"] + sizes["denoising_unet"] + denoise, sizes["vae"] + phases["decode"])
    return {"weights": resident, "bank": bank, "phases": phases, "windows": len(windows),
            "peak": resident + max(denoise, *(v for k, v in phases.items() if k != "denoise")),
            "offload_peak": offload}


def inference_flops(case: InferenceCase, steps: int = 25, sd15: bool = True) -> dict:
    """UNet FLOPs per generated frame (denoising at `steps` steps, all windows) and the once-per-video parts (the
    ReferenceNet and the projection of its bank, counted as the first window's extra)."""
    import numpy as np

    from ..inference.pipeline import Conditioning
    from ..inference.sampling import frame_windows, guidance_rows

    pipe = build_pipeline(case.precision, sd15)
    reference = np.zeros((case.height, case.width, 3), np.uint8)
    window = min(case.context, case.frames)
    poses = np.zeros((window, case.height, case.width, 3), np.uint8)
    rows = guidance_rows(case.guidance)
    windows = frame_windows(case.frames, case.context, case.overlap, False, True, pipe.max_context_frames)
    with torch.device("meta"), torch.no_grad(), _quiet():
        embeds = pipe.encode_image(reference)
        ref_latents = pipe.encode_reference_latents(reference, case.height, case.width)
        with flop_counter() as once:
            pipe.write_reference_bank(ref_latents, embeds)
        cond = Conditioning(embeds, pipe.encode_pose(poses), rows, case.guidance, None)
        latents = torch.empty(1, 4, window, case.height // 8, case.width // 8)
        with flop_counter() as first_window:
            pipe.predict_window(latents, torch.tensor(500), cond, list(range(window)))
        with flop_counter() as per_window:
            pipe.predict_window(latents, torch.tensor(500), cond, list(range(window)))
        with flop_counter() as decode:  # decode_latents would copy to the CPU: its VAE call
            pipe.vae.decode(torch.empty(1, 4, case.height // 8, case.width // 8, dtype=pipe.vae.dtype))
        pipe.animator.reference_state.clear()
    projection = first_window.get_total_flops() - per_window.get_total_flops()
    return {"denoise_tflop_per_frame": per_window.get_total_flops() * len(windows) * steps / case.frames / 1e12,
            "reference_tflop_per_video": (once.get_total_flops() + projection) / 1e12,
            "decode_tflop_per_frame": decode.get_total_flops() / 1e12, "steps": steps}


# ------------------------------------------------------------------------------------------------ the report
TRAINING_CASES = [
    TrainCase(1, 512, 1), TrainCase(1, 512, 2), TrainCase(1, 512, 4),
    TrainCase(1, 768, 1), TrainCase(1, 768, 2), TrainCase(1, 768, 4),
    TrainCase(1, 512, 1, checkpointing=True), TrainCase(1, 512, 2, checkpointing=True),
    TrainCase(1, 512, 4, checkpointing=True), TrainCase(1, 768, 4, checkpointing=True),
    TrainCase(2, 512, 1, 24), TrainCase(2, 512, 1, 24, checkpointing=True),
    TrainCase(2, 512, 1, 24, checkpointing=True, frozen_half=True),
]
QUICK_TRAINING = (5, 8, 12)  # the "what fits where" rows
INFERENCE_CASES = [InferenceCase(24), InferenceCase(72), InferenceCase(24, batch_rows=False, decode_chunk=2)]


def run_report(quick: bool = False, progress=print) -> dict:
    report = {"training": [], "inference": [], "machine": _machine(),
              "command": "marionet bench memory" + (" --quick" if quick else "")}
    for index, case in enumerate(TRAINING_CASES):
        if quick and index not in QUICK_TRAINING:
            continue
        start = time.perf_counter()
        estimate = track_training(case)
        estimate.flops_per_sample = training_flops(case)
        estimate.seconds = time.perf_counter() - start
        entry = {"label": case.label, "case": asdict(case), "trainable_m": round(estimate.trainable / 1e6, 1),
                 "tflop_per_sample": round(estimate.flops_per_sample / 1e12, 2),
                 "max_activations_gib": round(estimate.max_activations / GIB, 2), "options": {}}
        for option in OPTIONS:
            total, split = estimate.peak(option)
            entry["options"][option] = {"peak_gib": round(total / GIB, 2), "phase": split.pop("phase"),
                                        **{k: round(v / GIB, 2) for k, v in split.items()}}
        entry["seconds"] = round(estimate.seconds, 1)
        report["training"].append(entry)
        progress(f"{case.label}: {entry['options']['ddp']['peak_gib']} GiB (AdamW), "
                 f"{entry['options']['adamw8bit']['peak_gib']} GiB (8-bit), {entry['seconds']} s")
    for case in INFERENCE_CASES:
        start = time.perf_counter()
        memory, flops = track_inference(case), inference_flops(case)
        entry = {"label": case.label, "case": asdict(case), "weights_gib": round(memory["weights"] / GIB, 2),
                 "bank_gib": round(memory["bank"] / GIB, 3), "windows": memory["windows"],
                 "activations_gib": {k: round(v / GIB, 2) for k, v in memory["phases"].items()},
                 "peak_gib": round(memory["peak"] / GIB, 2), "offload_peak_gib": round(memory["offload_peak"] / GIB, 2),
                 **{k: round(v, 3) if isinstance(v, float) else v for k, v in flops.items()},
                 "seconds": round(time.perf_counter() - start, 1)}
        report["inference"].append(entry)
        progress(f"{case.label}: {entry['peak_gib']} GiB, {entry['offload_peak_gib']} GiB with model CPU offload")
    return report


def _machine() -> dict:
    import os
    import platform

    return {"machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}


def markdown_tables(report: dict) -> dict[str, str]:
    """The report as markdown tables: "training" (every case and option) and "inference"."""
    lines = ["| case | trainable | TFLOP / sample | " + " | ".join(desc for desc, _ in OPTIONS.values()) + " |",
             "|---|---|---|" + "---|" * len(OPTIONS)]
    for entry in report["training"]:
        cells = []
        for option in OPTIONS:
            o = entry["options"][option]
            cells.append(f"**{o['peak_gib']}** (w {o['weights']} + fr {o['frozen']} + g {o['gradients']} + "
                         f"opt {o['optimizer']} + act {o['activations']}; {o['phase'].split()[0]})")
        lines.append(f"| {entry['label']} | {entry['trainable_m']} M | {entry['tflop_per_sample']} | "
                     + " | ".join(cells) + " |")
    training = "\n".join(lines)
    lines = ["| render | weights | bank | activations (encode / reference / denoise / decode) | peak | peak with "
             "model CPU offload | denoising TFLOP / frame (25 steps) | ReferenceNet TFLOP / video |",
             "|---|---|---|---|---|---|---|---|"]
    for e in report["inference"]:
        a = e["activations_gib"]
        lines.append(f"| {e['label']} (fp16) | {e['weights_gib']} | {e['bank_gib']} | {a['encode']} / "
                     f"{a['reference']} / {a['denoise']} / {a['decode']} | **{e['peak_gib']}** | "
                     f"**{e['offload_peak_gib']}** | {e['denoise_tflop_per_frame']} | "
                     f"{e['reference_tflop_per_video']} |")
    return {"training": training, "inference": "\n".join(lines)}


def update_docs(report: dict, files=("README.md", "docs/benchmarks.md")) -> list[str]:
    """Replace the text between `<!-- memory:NAME -->` and `<!-- /memory:NAME -->` in `files` by the tables
    (NAME: training, inference, fits); returns the files changed."""
    from ..markers import replace_marked

    return replace_marked(files, {**markdown_tables(report), "fits": fits_table(report)}, "memory")


FITS = [  # (target, case label, option, card GiB, shipped config)
    ("stage 1 at 512² on one 24 GB card", "stage 1, 512², batch 4, checkpointing", "adamw8bit", 24,
     "configs/fit/stage1_512_24gb.yaml"),
    ("stage 1 at 768², batch 4, on 40 GB cards", "stage 1, 768², batch 4", "zero2x4", 40,
     "configs/fit/stage1_768_40gb_zero2.yaml (+ accelerate/deepspeed_zero2.yaml)"),
    ("stage 2 at 512², 24 frames, on one 24 GB card", "stage 2, 512², batch 1, 24 frames, checkpointing, frozen "
     "weights half", "ddp", 24, "configs/fit/stage2_512_24gb.yaml"),
]


def fits_table(report: dict) -> str:
    by_label = {e["label"]: e for e in report["training"]}
    lines = ["| target | setting | estimated peak | fits? | config |", "|---|---|---|---|---|"]
    for target, label, option, card, config in FITS:
        entry = by_label.get(label)
        if entry is None:
            continue
        peak = entry["options"][option]["peak_gib"]
        lines.append(f"| {target} | {label}, {OPTIONS[option][0]}, bf16 | {peak} GiB | "
                     f"{'yes' if peak <= card * 0.93 else 'no'} ({card} GB = {card * 0.93:.1f} GiB) | `{config}` |")
    for entry in report["inference"]:
        low = not entry["case"]["batch_rows"]
        lines.append(f"| inference, {entry['label']}, fp16 | all models resident | {entry['peak_gib']} GiB | "
                     f"{'yes' if entry['peak_gib'] <= 12 * 0.93 else 'no'} (target 12 GB) | "
                     + ("`pipe(..., batch_guidance_rows=False, decode_chunk_size=2)`" if low else
                        "`marionet animate`") + " |")
        lines.append(f"| inference, {entry['label']}, fp16 | model CPU offload | {entry['offload_peak_gib']} GiB | "
                     f"{'yes' if entry['offload_peak_gib'] <= 6 * 0.93 else 'no'} (target 6 GB) | "
                     + ("`marionet animate --low-memory`" if low else "`pipe.enable_model_cpu_offload()`") + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """`python -m marionet.train.memory` = `marionet bench memory`."""
    from .bench_cli import register

    parser = argparse.ArgumentParser(prog="marionet")
    register(parser.add_subparsers())
    args = parser.parse_args(["bench", "memory", *(argv if argv is not None else sys.argv[1:])])
    return run(args)


def run(args) -> int:
    if args.from_report:  # re-render the tables of an earlier run
        import json

        report = json.loads(open(args.from_report).read())
    else:
        report = run_report(quick=args.quick)
    if args.out:
        from ..atomic import write_json

        write_json(args.out, report, indent=1)
        print(f"wrote {args.out}")
    tables = markdown_tables(report)
    print(tables["training"] + "\n\n" + tables["inference"] + "\n\n" + fits_table(report))
    if args.update_docs:
        print("updated " + (", ".join(update_docs(report)) or "nothing (no markers found)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
