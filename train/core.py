"""The one training loop behind stage 1 and stage 2: noise, loss, optimisation, checkpoints, logging, validation.

A stage is a module (train/stage1.py, train/stage2.py) with two functions:

    load_frozen(cfg)      -> Frozen: VAE, CLIP image encoder, its preprocessor, the training scheduler
    build_animator(cfg)   -> Animator with exactly the parameters that stage trains left trainable

Everything else is shared and lives here: `setup` (parts, data, optimiser, resume), `train_step` (one micro-batch),
`run` (the loop with logging, checkpoints, validation and the export). Randomness is a pure function
of (seed, process, step): noise comes from a generator reseeded every micro-step and the data order from
`EpochSampler`, so a resumed run repeats the uninterrupted one exactly without saving any RNG state.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..atomic import OutputWriteError, atomic_folder
from .checkpoints import CheckpointDamaged, list_checkpoints, resolve_resume, save_checkpoint
from .config import ConfigError, TrainConfig, as_flat_dict
from .lock import OutputLocked, lock_output_dir

class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row; the message names the last good checkpoint."""


class OutputExists(FileExistsError):
    """output_dir already holds a run and neither resume nor overwrite was asked for."""


@dataclass
class Frozen:
    """The parts training never updates, plus the noise schedule that is exported with the model."""
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    feature_extractor: object
    scheduler: object  # a DDIMScheduler configured for training (and saved with the model)


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path | None                 # None when the run stopped early (stop_at_step)
    losses: dict = field(default_factory=dict)  # global step -> loss (mean over processes and micro-batches)
    skipped_samples: int = 0
    nonfinite_steps: int = 0
    validation: list = field(default_factory=list)  # train.validation.ValidationResult per validation

    @property
    def validation_media(self) -> list[Path]:
        return [path for outcome in self.validation for path in outcome.files]


# ------------------------------------------------------------------------------------------------ noise and loss

def make_training_scheduler(base_config: dict, noise_cfg):
    """DDIM with the base model's betas, our prediction type and (optionally) zero-terminal-SNR + trailing spacing.

    This exact scheduler is exported with the trained model, so inference samples with the schedule it learned.
    """
    from diffusers import DDIMScheduler

    base = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    # Both keys set explicitly: a base config inherited from a zero-terminal-SNR stage-1 model must not keep it when
    # this config says otherwise.
    spacing = "trailing" if noise_cfg.zero_terminal_snr else (
        "leading" if base.get("timestep_spacing") == "trailing" else base.get("timestep_spacing", "leading"))
    base.update(prediction_type=noise_cfg.prediction_type, clip_sample=False,
                rescale_betas_zero_snr=bool(noise_cfg.zero_terminal_snr), timestep_spacing=spacing)
    return DDIMScheduler.from_config(base)


def step_generator(seed: int, process_index: int, step: int, micro_step: int) -> torch.Generator:
    """A CPU generator determined by where we are in training: resume-exact without saving RNG state."""
    mixed = (seed * 1_000_003 + process_index * 7_919 + step * 131 + micro_step) % (2 ** 63)
    return torch.Generator().manual_seed(mixed)


@torch.no_grad()
def encode_batch(batch: dict, frozen: Frozen, device, generator: torch.Generator) -> dict:
    """Pixels -> the Animator's inputs: target latents, reference latents, CLIP token, poses (videos channel-first)."""
    vae, dtype = frozen.vae, frozen.vae.dtype
    target = batch["target"].to(device, dtype)
    video = target.ndim == 5
    frames = target.shape[1] if video else 1
    latents = vae_encode(vae, target.flatten(0, 1) if video else target, generator, sample=True)
    pose = batch["pose"].to(device)
    if video:  # (B, F, ...) from the dataset -> (B, C, F, ...) as the motion UNet expects
        latents = latents.unflatten(0, (-1, frames)).permute(0, 2, 1, 3, 4)
        pose = pose.permute(0, 2, 1, 3, 4)
    reference = vae_encode(vae, batch["reference"].to(device, dtype), generator, sample=False)
    clip = batch["clip_image"].to(device, frozen.image_encoder.dtype)
    embeds = frozen.image_encoder(clip).image_embeds.unsqueeze(1)
    return {"latents": latents.float(), "ref_latents": reference.float(), "image_embeds": embeds.float(),
            "pose_images": pose.float()}


def vae_encode(vae, pixels: torch.Tensor, generator, sample: bool, chunk: int = 16) -> torch.Tensor:
    """VAE latents x scaling factor, in chunks (a 24-frame clip at 512 px is too much for one encoder call)."""
    parts = []
    for start in range(0, pixels.shape[0], chunk):
        dist = vae.encode(pixels[start:start + chunk]).latent_dist
        parts.append(dist.sample(generator) if sample else dist.mode())
    return torch.cat(parts) * vae.config.scaling_factor


def sample_noise(latents: torch.Tensor, scheduler, noise_cfg, generator: torch.Generator):
    """(noise with offset, uniform timesteps, per-sample reference-dropout mask), all from `generator`."""
    batch, channels = latents.shape[:2]
    noise = torch.randn(latents.shape, generator=generator)
    rho = noise_cfg.frame_noise_correlation
    if latents.ndim == 5 and rho > 0:
        # Correlated frame noise (Ge et al. 2023, "Preserve Your Own Correlation"): each frame's noise shares a part
        # common to the clip, so a video model starts from the shared-noise behaviour of the image model it came from.
        common = torch.randn((batch, channels, 1) + latents.shape[3:], generator=generator)
        noise = rho ** 0.5 * common + (1.0 - rho) ** 0.5 * noise
    if noise_cfg.noise_offset:
        # One offset per sample and channel (shared over frames), so the model learns to shift overall brightness.
        offset_shape = (batch, channels) + (1,) * (latents.ndim - 2)
        noise = noise + noise_cfg.noise_offset * torch.randn(offset_shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
    dropped = torch.rand(batch, generator=generator) < noise_cfg.reference_dropout
    device = latents.device
    return noise.to(device), timesteps.to(device), dropped.to(device)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023) for an epsilon or v-prediction MSE loss."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1.0 - alphas).clamp(min=1e-12)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    # epsilon: min(snr, gamma) / snr, which tends to 1 as snr -> 0 (zero-terminal-SNR's last step)
    return torch.where(snr > 0, clipped / snr.clamp(min=1e-12), torch.ones_like(snr))


def diffusion_loss(model, inputs: dict, noise, timesteps, dropped, scheduler, noise_cfg):
    """Noise the target, predict with the Animator (dropped rows take the unconditional path), weighted MSE.

    Returns (loss, prediction).
    """
    latents = inputs["latents"]
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = model(noisy, timesteps, inputs["ref_latents"], inputs["image_embeds"], inputs["pose_images"],
                       drop_reference=dropped)
    if noise_cfg.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=tuple(range(1, per_sample.ndim)))
    if noise_cfg.snr_gamma:
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, noise_cfg.snr_gamma,
                                                  noise_cfg.prediction_type)
    return per_sample.mean(), prediction


# ------------------------------------------------------------------------------------------------ data

class EpochSampler(torch.utils.data.Sampler):
    """This process's share of a (seed, epoch)-seeded permutation, cut to whole batches; can start mid-epoch.

    Every process gets the same number of batches (so DDP steps stay in lockstep) and skipping already-seen batches
    on resume costs nothing: they are simply not yielded.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = (size // world_size) // batch_size
        if self.batches_per_epoch < 1:
            raise ConfigError(f"the dataset has {size} items: too few for batch size {batch_size} "
                              f"on {world_size} process(es)")
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 9_973 + self.epoch))
        mine = order[self.rank::self.world_size][: self.batches_per_epoch * self.batch_size]
        return iter(mine[self.start_batch * self.batch_size:].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def make_dataset(cfg: TrainConfig, source, processor, n_frames: int | None = None, shards: bool = False,
                 rank: int = 0, world_size: int = 1):
    """Stage-1 frames or stage-2 clips, from a meta file/entry list or from WebDataset shards."""
    data = cfg.data
    frames = n_frames or data.n_frames
    if shards:
        from ..data.shards import ShardStage1Dataset, ShardStage2Dataset

        if cfg.stage == 1:
            return ShardStage1Dataset(source, data.image_size, processor, min_gap=data.min_gap, seed=cfg.seed,
                                      rank=rank, world_size=world_size)
        return ShardStage2Dataset(source, data.image_size, frames, data.frame_stride, processor, seed=cfg.seed,
                                  rank=rank, world_size=world_size)
    from ..data.datasets import Stage1Dataset, Stage2Dataset

    cache = data.decode_cache_mb
    if cfg.stage == 1:
        return Stage1Dataset(source, data.image_size, processor, min_gap=data.min_gap, seed=cfg.seed,
                             decode_cache_mb=cache)
    return Stage2Dataset(source, data.image_size, frames, data.frame_stride, processor, seed=cfg.seed,
                         decode_cache_mb=cache)


def split_data(cfg: TrainConfig) -> tuple[object, list]:
    """(training source, held-out validation entries): a meta file's last videos are held out unless
    data.validation_meta names the held-out pairs."""
    from ..data.index import load_index

    held_out = load_index(cfg.data.validation_meta) if cfg.data.validation_meta else []
    if cfg.data.shards:
        return cfg.data.shards, held_out[: cfg.validation.num_samples]
    entries = load_index(cfg.data.meta)
    if not cfg.data.validation_meta and cfg.validation.num_samples > 0:
        keep = max(1, len(entries) - cfg.validation.num_samples)
        entries, held_out = entries[:keep], entries[keep:]
    return entries, held_out[: cfg.validation.num_samples]


def batch_stream(cfg: TrainConfig, dataset, sampler, accelerator, epoch: int, batch_in_epoch: int):
    """Yield (epoch, batches done in that epoch, batch or None) forever, one epoch after another."""
    from ..data.datasets import collate_skipping

    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_position(epoch, batch_in_epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.optim.train_batch_size, sampler=sampler, drop_last=True,
            collate_fn=collate_skipping, num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available())
        if sampler is None and batch_in_epoch:  # streamed shards: no index to jump to, so read and drop
            loader = accelerator.skip_first_batches(loader, batch_in_epoch)
        for batch in loader:
            batch_in_epoch += 1
            yield epoch, batch_in_epoch, batch
        epoch, batch_in_epoch = epoch + 1, 0


# ------------------------------------------------------------------------------------------------ output folder

def prepare_output_dir(cfg: TrainConfig, output_dir: Path, resuming: bool, accelerator) -> None:
    """Refuse to mix a new run into an old one unless resuming; overwrite=true clears the old run first."""
    previous = list_checkpoints(output_dir) + [p for p in (output_dir / "model",) if p.exists()]
    if previous and not resuming:
        if not cfg.overwrite:
            raise OutputExists(f"{output_dir} already holds a run ({previous[-1].name}); pass "
                               "checkpoint.resume_from_checkpoint=latest to continue it or overwrite=true to replace it")
        if accelerator.is_main_process:
            for path in [*output_dir.glob("checkpoint-*"), *output_dir.glob(".checkpoint-*"),
                         output_dir / "model", output_dir / "validation", output_dir / "logs"]:
                shutil.rmtree(path, ignore_errors=True)
            (output_dir / "train_log.jsonl").unlink(missing_ok=True)
    accelerator.wait_for_everyone()


# ------------------------------------------------------------------------------------------------ set-up

def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    on_gpu = torch.cuda.is_available()
    # cpu=True keeps `--multi_gpu` launches working on CPU-only machines (gloo), but it would also turn DeepSpeed
    # off, and DeepSpeed finds the CPU by itself.
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    log_with = {"none": None, "all": "all"}.get(cfg.report_to, cfg.report_to)
    output_dir = Path(cfg.output_dir)
    precision = cfg.optim.mixed_precision
    if not on_gpu and precision == "fp16":  # CPU autocast has no fp16 loss scaling: bf16 runs, fp16 falls back
        precision = "no"
    return Accelerator(
        gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
        mixed_precision=precision,
        log_with=log_with, cpu=not on_gpu and not deepspeed,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")))


def forget_accelerator() -> None:
    """Let a later `run` in the same (single) process build an Accelerator with other settings."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if not PartialState().use_distributed:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def make_optimizer(cfg: TrainConfig, params: list, world_size: int):
    optim = cfg.optim
    lr = optim.learning_rate
    if optim.scale_lr:
        lr *= optim.train_batch_size * optim.gradient_accumulation_steps * world_size
    optimizer_class = torch.optim.AdamW
    if optim.use_8bit_adam:
        try:
            import bitsandbytes
        except ImportError:
            raise ConfigError("optim.use_8bit_adam needs bitsandbytes (pip install bitsandbytes, CUDA only)") from None
        optimizer_class = bitsandbytes.optim.AdamW8bit
    return optimizer_class(params, lr=lr, betas=(optim.adam_beta1, optim.adam_beta2),
                           weight_decay=optim.adam_weight_decay, eps=optim.adam_epsilon)


def store_frozen_in(animator, dtype: torch.dtype) -> int:
    """Store the Animator's frozen weights (stage 2: all but the motion modules) in `dtype` (autocast computes in it
    anyway): 2 bytes/param less. Returns how many parameters changed."""
    count = 0
    for param in animator.parameters():
        if not param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
            count += param.numel()
    return count


def stage_module(stage: int):
    import importlib

    return importlib.import_module(f".stage{stage}", __package__)


# ------------------------------------------------------------------------------------------------ the run

@dataclass
class Session:
    """Everything `setup` builds for the loop: the prepared model, optimiser, data and the run's counters."""
    cfg: TrainConfig
    stage: object
    accelerator: object
    output_dir: Path
    frozen: Frozen
    model: torch.nn.Module          # what accelerate prepared (DDP / DeepSpeed wrapper)
    params: list                    # the trainable parameters
    optimizer: object
    lr_scheduler: object
    ema: object
    dataset: object
    sampler: object
    validation_items: list
    state: dict                     # global_step, epoch, batch_in_epoch, skipped_samples, nonfinite_steps
    log_path: Path


def choose_checkpoint(cfg: TrainConfig, output_dir: Path, accelerator) -> Path | None:
    """The main process verifies and picks the checkpoint to resume from (see train.checkpoints); all agree."""
    from accelerate.utils import broadcast_object_list

    choice = [None, None]
    if accelerator.is_main_process:
        try:
            choice[0] = resolve_resume(cfg.checkpoint.resume_from_checkpoint, output_dir, accelerator.print)
        except (ConfigError, CheckpointDamaged) as error:
            choice[1] = error
    if accelerator.num_processes > 1:
        choice = broadcast_object_list(choice)
    if choice[1] is not None:
        raise choice[1]
    return None if choice[0] is None else Path(choice[0])


def setup(cfg: TrainConfig, stage, accelerator, output_dir: Path) -> Session:
    """Frozen parts, the trainable Animator, data, optimiser, LR schedule and EMA, prepared and resumed."""
    from diffusers.optimization import get_scheduler

    main_process = accelerator.is_main_process
    device = accelerator.device
    resume_from = choose_checkpoint(cfg, output_dir, accelerator)
    prepare_output_dir(cfg, output_dir, resume_from is not None, accelerator)
    if torch.cuda.is_available() and cfg.optim.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True

    # 1. Frozen parts (half precision on GPU, never trained) and the Animator with what this stage trains.
    torch.manual_seed(cfg.seed)  # any freshly initialised weights (Pose Guider) are the same in every process
    frozen = stage.load_frozen(cfg)
    animator = stage.build_animator(cfg)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for part in (frozen.vae, frozen.image_encoder):
        part.requires_grad_(False).to(device, dtype=half).eval()
    if cfg.optim.half_precision_frozen and half != torch.float32:
        store_frozen_in(animator, half)  # the export reloads these weights in full precision
    if cfg.optim.gradient_checkpointing:
        animator.enable_gradient_checkpointing()
    params = [p for p in animator.parameters() if p.requires_grad]

    # 2. Data: a per-process sampler over the training videos; a few held-out pairs for validation.
    train_source, held_out = split_data(cfg)
    shards = bool(cfg.data.shards)
    dataset = make_dataset(cfg, train_source, frozen.feature_extractor, shards=shards,
                           rank=accelerator.process_index, world_size=accelerator.num_processes)
    sampler = None if shards else EpochSampler(len(dataset), cfg.optim.train_batch_size, cfg.seed,
                                               accelerator.process_index, accelerator.num_processes)
    validation_items = []
    if main_process and held_out and cfg.validation.num_samples > 0:
        frames = cfg.validation.frames if cfg.stage == 2 else None
        validation_set = make_dataset(cfg, held_out, frozen.feature_extractor, n_frames=frames)
        validation_items = [item for item in (validation_set[i] for i in range(len(validation_set)))
                            if item is not None]

    # 3. Optimiser, LR schedule, EMA; accelerate wraps the one trainable module (DDP / DeepSpeed).
    optimizer = make_optimizer(cfg, params, accelerator.num_processes)
    lr_scheduler = get_scheduler(cfg.optim.lr_scheduler, optimizer,
                                 num_warmup_steps=cfg.optim.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=cfg.optim.max_train_steps * accelerator.num_processes)
    deepspeed = getattr(accelerator.state, "deepspeed_plugin", None)
    if deepspeed is not None:  # no dataloader goes through prepare(), so tell DeepSpeed the micro-batch size
        deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.optim.train_batch_size
    model, optimizer, lr_scheduler = accelerator.prepare(animator, optimizer, lr_scheduler)
    ema = None
    if cfg.optim.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=cfg.optim.ema_decay)
        ema.to(device)
        accelerator.register_for_checkpointing(ema)

    # 4. Resume: weights, optimiser, LR schedule (accelerate) + step and data position (our state file).
    state = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "skipped_samples": 0, "nonfinite_steps": 0}
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        if ema is not None:  # accelerate restores custom state on the CPU
            ema.to(device)
        own = resume_from / f"training_state_{accelerator.process_index}.json"
        state.update(json.loads((own if own.is_file() else resume_from / "training_state_0.json").read_text()))
        accelerator.print(f"resumed from {resume_from} at step {state['global_step']}")
    elif cfg.checkpoint.resume_from_checkpoint == "latest":
        accelerator.print(f"no checkpoint in {output_dir}: starting a new run")

    output_dir.mkdir(parents=True, exist_ok=True)
    if main_process and cfg.report_to != "none":
        accelerator.init_trackers(cfg.tracker_project, config=as_flat_dict(cfg))
    accelerator.print(f"stage {cfg.stage}: {sum(p.numel() for p in params) / 1e6:.2f} M trainable parameters, "
                      f"{accelerator.num_processes} process(es), batch {cfg.optim.train_batch_size} x "
                      f"{cfg.optim.gradient_accumulation_steps} accumulation, {cfg.optim.max_train_steps} steps")
    return Session(cfg, stage, accelerator, output_dir, frozen, model, params, optimizer, lr_scheduler, ema, dataset,
                   sampler, validation_items, state, output_dir / "train_log.jsonl")


def train_step(s: Session, batch: dict, micro_step: int, window_clean: bool) -> float | None:
    """One micro-batch: encode -> noise -> loss -> backward -> (at the accumulation boundary) clip and step.

    Returns the loss, or None if it was not finite on some process. All processes then agree to skip it (DDP would
    otherwise wait forever for the skipper's gradients), and the accumulation window it belongs to makes no update
    and does not advance the LR schedule (`window_clean` says whether the window's earlier micro-batches were fine).
    """
    cfg, accelerator = s.cfg, s.accelerator
    with accelerator.accumulate(s.model):
        generator = step_generator(cfg.seed, accelerator.process_index, s.state["global_step"], micro_step)
        inputs = encode_batch(batch, s.frozen, accelerator.device, generator)
        noise, timesteps, dropped = sample_noise(inputs["latents"], s.frozen.scheduler, cfg.noise, generator)
        loss, _ = diffusion_loss(s.model, inputs, noise, timesteps, dropped, s.frozen.scheduler, cfg.noise)
        finite = bool(accelerator.reduce(torch.isfinite(loss.detach()).float(), "sum") == accelerator.num_processes)
        if finite:
            accelerator.backward(loss)
        if finite and window_clean:
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(s.params, cfg.optim.max_grad_norm)
                s.optimizer.step()
            s.lr_scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
    return loss.detach().item() if finite else None


def run(cfg: TrainConfig, stage=None, accelerator=None) -> TrainResult:
    """Train one stage as `cfg` says; returns where the outputs went and the loss of every step.

    Works the same under `accelerate launch` (any number of processes, DeepSpeed) and from plain Python.
    Data and weights must exist: for the tiny configs, `train.tiny.prepare_tiny_assets(cfg)` creates them
    (the training scripts and `marionet train` call it first).
    """
    stage = stage or stage_module(cfg.stage)
    output_dir = Path(cfg.output_dir)
    accelerator = accelerator or make_accelerator(cfg)
    lock = None
    try:
        lock = lock_output_dir(accelerator, output_dir)  # one run per output_dir
        return _loop(setup(cfg, stage, accelerator, output_dir))
    finally:
        if lock is not None:
            lock.release()
        accelerator.end_training()
        forget_accelerator()


def _loop(s: Session) -> TrainResult:
    """Micro-batches until max_train_steps (or stop_at_step): steps, logging, checkpoints, validation, export."""
    from tqdm.auto import tqdm

    cfg, accelerator, state = s.cfg, s.accelerator, s.state
    main_process, device = accelerator.is_main_process, accelerator.device
    result = TrainResult(output_dir=s.output_dir, model_dir=None)
    stop_at = min(cfg.optim.max_train_steps, cfg.stop_at_step or cfg.optim.max_train_steps)
    # The bar is closed (ending its line) on errors too, so an error message starts on a line of its own.
    with tqdm(total=cfg.optim.max_train_steps, initial=state["global_step"], disable=not main_process,
              desc=f"stage {cfg.stage}", unit="step", dynamic_ncols=True) as progress:
        stream = batch_stream(cfg, s.dataset, s.sampler, accelerator, state["epoch"], state["batch_in_epoch"])
        window_loss, micro_step, bad_window, consecutive_bad = 0.0, 0, False, 0
        s.model.train()
        while state["global_step"] < stop_at:
            epoch, batch_in_epoch, batch = next(stream)
            state["epoch"], state["batch_in_epoch"] = epoch, batch_in_epoch
            # Bad files: the dataset returned None for them; a batch is used only if every process has one.
            skipped = cfg.optim.train_batch_size if batch is None else int(batch["num_skipped"])
            counts = accelerator.reduce(torch.tensor([skipped, float(batch is None)], device=device), "sum")
            state["skipped_samples"] += int(counts[0])
            if counts[1] > 0:
                continue
            loss = train_step(s, batch, micro_step, window_clean=not bad_window)
            micro_step += 1
            if loss is None:
                bad_window = True
            else:
                window_loss += loss
            if not accelerator.sync_gradients:
                continue

            # One optimiser step done (or skipped for a non-finite loss): count, log, checkpoint, validate.
            state["global_step"] += 1
            step = state["global_step"]
            progress.update(1)
            if bad_window:
                state["nonfinite_steps"] += 1
                consecutive_bad += 1
                accelerator.log({"nonfinite_steps": state["nonfinite_steps"]}, step=step)
                if consecutive_bad >= cfg.checkpoint.max_consecutive_nonfinite:
                    last = list_checkpoints(s.output_dir)
                    raise TrainingDiverged(
                        f"{consecutive_bad} non-finite losses in a row at step {step}: stopping. Last good checkpoint: "
                        f"{last[-1] if last else 'none'} (lower optim.learning_rate, or use bf16 instead of fp16)")
            else:
                consecutive_bad = 0
                if s.ema is not None:
                    s.ema.step(s.params)
                mean_loss = accelerator.reduce(torch.tensor(window_loss / micro_step, device=device), "mean").item()
                result.losses[step] = mean_loss
                logs = {"loss": mean_loss, "lr": s.lr_scheduler.get_last_lr()[0],
                        "skipped_samples": state["skipped_samples"], "nonfinite_steps": state["nonfinite_steps"]}
                accelerator.log(logs, step=step)
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{logs['lr']:.1e}")
                if main_process and (step % cfg.log_every == 0 or step == stop_at):
                    with open(s.log_path, "a") as log_file:
                        log_file.write(json.dumps({"step": step, **logs, "time": time.time()}) + "\n")
            window_loss, micro_step, bad_window = 0.0, 0, False

            if step % cfg.checkpoint.checkpointing_steps == 0 and consecutive_bad == 0:  # never mid-divergence
                saved = save_checkpoint(accelerator, s.output_dir, state, cfg.checkpoint.checkpoints_total_limit,
                                        cfg.checkpoint.checksum)
                accelerator.print(f"\nsaved {saved}")
            if cfg.validation.validation_steps and step % cfg.validation.validation_steps == 0 and step < stop_at:
                if main_process and s.validation_items:
                    result.validation.append(validate(s, accelerator.unwrap_model(s.model), step))
                accelerator.wait_for_everyone()
    result.skipped_samples, result.nonfinite_steps = state["skipped_samples"], state["nonfinite_steps"]

    # The end: final validation and the exported model folder (with the training scheduler), or an early stop.
    accelerator.wait_for_everyone()
    if state["global_step"] < cfg.optim.max_train_steps:
        accelerator.print(f"stopped at step {state['global_step']} (stop_at_step); checkpoints in {s.output_dir}")
        return result
    trained = accelerator.unwrap_model(s.model)
    if s.ema is not None:
        s.ema.copy_to(s.params)
    result.model_dir = s.output_dir / "model"
    if main_process:
        if s.validation_items:
            result.validation.append(validate(s, trained, state["global_step"]))
        try:
            export(s, trained, result.model_dir, result.validation[-1] if result.validation else None)
        except OutputWriteError as error:
            raise OutputWriteError(f"{error} while exporting the model folder; nothing half-written was kept; "
                                   f"the run's last checkpoint: {_last_checkpoint(s)}") from error
    accelerator.wait_for_everyone()
    if main_process:
        print(f"checkpoints: {s.output_dir}/checkpoint-*   logs: {s.output_dir / 'logs'}   log: {s.log_path}")
        if result.validation:
            print(f"validation samples: {s.output_dir / 'validation'}")
        print(f"trained model folder: {result.model_dir}")
    return result


def _last_checkpoint(s: Session) -> str:
    found = list_checkpoints(s.output_dir)
    return str(found[-1]) if found else "none"


def validate(s: Session, animator, step: int):
    """Render, score, write and log the held-out pairs; a failed write stops the run with one clear line."""
    from .validation import render_validation

    try:
        return render_validation(animator, s.frozen, s.validation_items, s.cfg, step, s.accelerator)
    except OutputWriteError as error:
        raise OutputWriteError(f"{error} while writing validation media at step {step}; last good checkpoint: "
                               f"{_last_checkpoint(s)}") from error


def export(s: Session, animator, model_dir: Path, validation=None) -> Path:
    """The model folder inference loads: Animator + VAE, image encoder, preprocessor, the training scheduler, and a
    model card saying what produced it (with the last validation's figures and image)."""
    from omegaconf import OmegaConf

    from ..models.export import export_model_folder

    cfg = s.cfg
    fresh = s.stage.load_frozen(cfg)  # full-precision copies from disk (the training copies may be fp16)
    animator = animator.to("cpu") if animator.device.type != "cpu" else animator
    if cfg.optim.half_precision_frozen:  # frozen weights were held in half precision: export the originals
        trained = {name: p for name, p in animator.named_parameters() if p.requires_grad}
        animator = s.stage.build_animator(cfg)
        missing = set(trained) - {name for name, _ in animator.named_parameters()}
        if missing:
            raise RuntimeError(f"cannot restore the trained weights {sorted(missing)[:3]} into a fresh model")
        animator.load_state_dict({k: v.detach().float() for k, v in trained.items()}, strict=False)
    card = {"produced_by": f"marionet training, stage {cfg.stage} (train/stage{cfg.stage}.py)",
            "stage": cfg.stage, "base_model": cfg.model.base_model if cfg.stage == 1 else cfg.model.stage1_model,
            "data": f"{len(s.dataset)} training samples ({cfg.data.shards or cfg.data.meta})"
            if hasattr(s.dataset, "__len__") else str(cfg.data.shards or cfg.data.meta),
            "steps": f"{cfg.optim.max_train_steps} x batch {cfg.optim.train_batch_size} x "
                     f"{cfg.optim.gradient_accumulation_steps} accumulation x {s.accelerator.num_processes} "
                     "process(es)",
            "config": OmegaConf.to_yaml(OmegaConf.structured(cfg))}
    if validation is not None:
        card["validation"] = {f"{name} (mean over {len(s.validation_items)} pairs, step {validation.step})":
                              f"{value:.4g}" for name, value in validation.figures.items()}
        image = next((f for f in validation.files if f.suffix == ".png"), None)
        if image is not None:
            card["validation_image"] = "validation.png"
    with atomic_folder(model_dir) as staging:  # published whole or not at all
        export_model_folder(staging, animator, fresh.vae, fresh.image_encoder, fresh.feature_extractor,
                            fresh.scheduler, frame_noise_correlation=cfg.noise.frame_noise_correlation, card=card)
        if validation is not None and card.get("validation_image"):
            shutil.copyfile(image, staging / "validation.png")
    return model_dir


# ------------------------------------------------------------------------------------------------ scripts

def train(cfg: TrainConfig) -> TrainResult:
    """What the training scripts and `marionet train` run: the tiny configs' assets (tiny base folder, synthetic
    data; created once, by the main process, when missing), then `run`."""
    from .tiny import prepare_tiny_assets

    accelerator = make_accelerator(cfg)
    try:
        with accelerator.main_process_first():
            if accelerator.is_main_process:
                prepare_tiny_assets(cfg)
    except BaseException:
        accelerator.end_training()
        forget_accelerator()
        raise
    return run(cfg, accelerator=accelerator)


def main(stage: int, argv=None) -> int:
    """`python train/stageN.py --config FILE [key=value ...]`, also under `accelerate launch`."""
    import argparse
    import sys

    from ..models.loading import MissingWeightsError

    parser = argparse.ArgumentParser(
        prog=f"train/stage{stage}.py",
        description=f"Marionet stage-{stage} training. Overrides use dotted keys, e.g. optim.learning_rate=2e-5 "
                    "data.image_size=512 checkpoint.resume_from_checkpoint=latest")
    parser.add_argument("--config", required=True, help=f"YAML config, e.g. configs/stage{stage}.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    args = parser.parse_args(argv)
    from .config import load_config

    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.stage != stage:
            raise ConfigError(f"{args.config} is a stage-{cfg.stage} config; run train/stage{cfg.stage}.py")
        train(cfg)
    except (ConfigError, MissingWeightsError, OutputExists, OutputLocked, CheckpointDamaged,
            FileNotFoundError) as error:
        print(f"stage{stage}: error: {error}", file=sys.stderr)
        return 2
    except (TrainingDiverged, OutputWriteError) as error:
        print(f"stage{stage}: {error}", file=sys.stderr)
        return 1
    return 0


__all__ = ["Frozen", "TrainResult", "TrainingDiverged", "OutputExists", "OutputLocked", "CheckpointDamaged",
           "OutputWriteError", "run", "train", "main", "setup", "train_step",
           "make_training_scheduler",
           "encode_batch", "sample_noise", "diffusion_loss", "min_snr_weights", "EpochSampler", "list_checkpoints"]
