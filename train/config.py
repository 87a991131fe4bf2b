"""Training configuration: typed defaults (dataclasses) merged with a YAML file and `key=value` overrides.

The dataclasses are the schema: OmegaConf rejects unknown keys and wrong types, so a typo in a YAML file or on the
command line fails at start-up with the key's name instead of hours into a run. Every key is documented in
configs/stage1.yaml and configs/stage2.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional


@dataclass
class ModelConfig:
    base_model: Optional[str] = None         # stage 1: SD1.5-family folder with unet/ (and usually vae/, scheduler/ ...)
    vae: Optional[str] = None                # VAE folder; default <base_model>/vae (stage 2: <stage1_model>/vae)
    image_encoder: Optional[str] = None      # CLIPVisionModelWithProjection folder; default <base_model>/image_encoder
    feature_extractor: Optional[str] = None  # CLIP preprocessor folder; default <base_model>/feature_extractor
    controlnet: Optional[str] = None         # stage 1: ControlNet folder whose cond. embedding initialises the Pose Guider
    pose_guider_channels: List[int] = field(default_factory=lambda: [16, 32, 96, 256])  # when no ControlNet
    reference_net: bool = True               # stage 1: false trains a stock model (no ReferenceNet: CLIP token only),
                                             # the pose-ControlNet + IP-Adapter analogue the zero-shot baseline runs on
    init_model: Optional[str] = None         # stage 1: an exported model folder (stock or stage 1) whose UNet(s) and
                                             # Pose Guider start training instead of base_model's unet/ and a new
                                             # guider (a stock folder's UNet becomes both UNets); base_model still
                                             # gives the VAE, image encoder and scheduler
    stage1_model: Optional[str] = None       # stage 2: the exported stage-1 model folder
    motion_module: Optional[str] = None      # stage 2: MotionAdapter folder or original-format .ckpt


@dataclass
class DataConfig:
    meta: Optional[str] = None               # meta.json of (video, pose video) pairs (see `marionet data index`)
    shards: Optional[str] = None             # WebDataset shard URLs/brace pattern instead of meta
    validation_meta: Optional[str] = None    # held-out pairs; default: the last validation.num_samples videos of meta
    image_size: int = 768                    # square training resolution (pixels, multiple of 8)
    n_frames: int = 24                       # stage 2: frames per clip
    frame_stride: int = 4                    # stage 2: take every n-th frame
    min_gap: int = 30                        # stage 1: reference frame at least this far from the target
    num_workers: int = 4                     # DataLoader worker processes per GPU
    decode_cache_mb: int = 0                 # keep decoded videos in memory up to this size per process (0: off);
                                             # for data sets that fit, e.g. the demo's synthetic puppets (~20 MB)
    synthetic_videos: int = 0                # > 0: generate this many synthetic videos at `meta`'s folder when missing
    synthetic_frames: int = 48
    synthetic_size: int = 64


@dataclass
class TinyConfig:
    enabled: bool = False                    # build tiny random components (models.tiny) into model.base_model if missing
    seed: int = 0
    unet_channels: List[int] = field(default_factory=lambda: [32, 64])
    vae_channels: List[int] = field(default_factory=lambda: [32, 32, 64, 64])
    layers_per_block: int = 1
    clip_image_size: int = 32


@dataclass
class OptimConfig:
    train_batch_size: int = 4                # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1.0e-5
    scale_lr: bool = False                   # multiply lr by batch x accumulation x processes
    lr_scheduler: str = "constant"           # any diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1.0e-2
    adam_epsilon: float = 1.0e-8
    use_8bit_adam: bool = False              # bitsandbytes AdamW8bit (CUDA only, must be installed)
    max_grad_norm: float = 1.0
    max_train_steps: int = 30000
    mixed_precision: str = "fp16"            # no | fp16 | bf16 (the launcher's --mixed_precision wins if given);
                                             # on a CPU, bf16 runs (autocast) and fp16 falls back to fp32
    gradient_checkpointing: bool = False
    half_precision_frozen: bool = False      # store the Animator's frozen weights (stage 2: both UNets' spatial
                                             # layers, Pose Guider) in the mixed-precision dtype: 2 bytes/param less
    allow_tf32: bool = True
    use_ema: bool = False                    # diffusers EMAModel over the trainable weights; export uses EMA weights
    ema_decay: float = 0.9999


@dataclass
class NoiseConfig:
    prediction_type: str = "epsilon"         # epsilon | v_prediction
    zero_terminal_snr: bool = False          # rescaled betas (zero SNR at t=T) with trailing timestep spacing
    noise_offset: float = 0.05               # offset noise strength (0 disables)
    snr_gamma: Optional[float] = 5.0         # min-SNR-gamma loss weighting; null disables
    reference_dropout: float = 0.1           # per-sample probability of the unconditional (no reference) path
    frame_noise_correlation: float = 0.0     # stage 2: share of the noise variance common to all frames of a clip
                                             # (0 = independent per frame; saved with the model, used by inference)


@dataclass
class CheckpointConfig:
    checkpointing_steps: int = 2000          # accelerator.save_state into output_dir/checkpoint-<step>
    checkpoints_total_limit: Optional[int] = 2  # keep the newest K checkpoints; null keeps all
    resume_from_checkpoint: Optional[str] = None  # null | latest | path to a checkpoint-<step> folder
    checksum: bool = True                    # manifest.json records SHA-256s (else sizes only) for resume checks
    max_consecutive_nonfinite: int = 5       # stop after this many NaN/inf losses in a row


@dataclass
class ValidationConfig:
    validation_steps: int = 2000             # render samples every N steps (0: only at the end)
    num_samples: int = 2                     # held-out reference/pose pairs
    num_inference_steps: int = 25            # DDIM steps of the validation sampler
    guidance_scale: float = 3.5              # classifier-free guidance over the reference (1.0 = off)
    frames: int = 8                          # stage 2: frames rendered per validation clip


@dataclass
class TrainConfig:
    stage: int = 1                           # 1: frames (2-D UNets); 2: clips (motion modules only)
    output_dir: str = "outputs/stage1"       # checkpoints/, logs/, validation/, model/ go here
    seed: int = 42
    overwrite: bool = False                  # allow replacing an existing output_dir's checkpoints/model
    report_to: str = "tensorboard"           # tensorboard | wandb | all | none
    tracker_project: str = "marionet"
    log_every: int = 10                      # print/append the loss to train_log.jsonl every N steps
    stop_at_step: Optional[int] = None       # end early at this step (after its checkpoint), without exporting
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tiny: TinyConfig = field(default_factory=TinyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (the message names the file or key)."""


def load_config(path=None, overrides=None) -> TrainConfig:
    """TrainConfig defaults <- YAML file <- overrides (a list of "a.b=value" strings or a nested dict).

    path: a YAML file, or the name of a shipped config (`configs/tiny/stage1.yaml`, `tiny/stage1.yaml`), which is
    read from the installed package, so the same command works in a clone and from a wheel. A file may start from
    another with `extends: NAME` (a path relative to it, or a shipped name); its keys then override that one's.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .. import configs

    schema = OmegaConf.structured(TrainConfig)
    layers = [schema]
    try:
        if path is not None:
            layers += _file_layers(path, configs, OmegaConf)
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)) if isinstance(overrides, (list, tuple))
                          else OmegaConf.create(overrides))
        merged = OmegaConf.merge(*layers)
    except OmegaConfBaseException as error:
        where = f" ({path})" if path is not None else ""
        raise ConfigError(f"bad training config{where}: {str(error).splitlines()[0]}") from None
    config: TrainConfig = OmegaConf.to_object(merged)
    check_config(config)
    return config


def _file_layers(path, configs, OmegaConf, seen=()) -> list:
    """The YAML layers of `path`, the files it `extends` first."""
    import posixpath
    from pathlib import Path

    try:  # a file, else a shipped config such as "tiny/stage1.yaml"
        label, text = configs.locate(path)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    if label in seen:
        raise ConfigError(f"{label}: `extends` loops back to it ({' -> '.join(seen)})")
    layer = OmegaConf.create(text)
    parent = layer.pop("extends", None) if hasattr(layer, "pop") else None
    if parent is None:
        return [layer]
    if label.startswith(configs.SHIPPED):  # relative to the shipped config's folder, among the shipped ones
        target = posixpath.normpath(posixpath.join(posixpath.dirname(label[len(configs.SHIPPED):]), str(parent)))
    else:  # relative to the file, else a shipped name
        beside = Path(label).parent / str(parent)
        target = beside if beside.is_file() else parent
    return _file_layers(target, configs, OmegaConf, (*seen, label)) + [layer]


def check_config(cfg: TrainConfig) -> None:
    problems = []
    if cfg.stage not in (1, 2):
        problems.append(f"stage must be 1 or 2, got {cfg.stage}")
    if cfg.data.image_size % 8:
        problems.append(f"data.image_size must be a multiple of 8, got {cfg.data.image_size}")
    if cfg.noise.prediction_type not in ("epsilon", "v_prediction"):
        problems.append(f"noise.prediction_type must be epsilon or v_prediction, got {cfg.noise.prediction_type!r}")
    if cfg.optim.mixed_precision not in ("no", "fp16", "bf16"):
        problems.append(f"optim.mixed_precision must be no, fp16 or bf16, got {cfg.optim.mixed_precision!r}")
    if not 0.0 <= cfg.noise.reference_dropout <= 1.0:
        problems.append("noise.reference_dropout must be in [0, 1]")
    if not 0.0 <= cfg.noise.frame_noise_correlation <= 1.0:
        problems.append("noise.frame_noise_correlation must be in [0, 1]")
    if cfg.report_to not in ("tensorboard", "wandb", "all", "none"):
        problems.append(f"report_to must be tensorboard, wandb, all or none, got {cfg.report_to!r}")
    if not cfg.data.meta and not cfg.data.shards:
        problems.append("set data.meta (a meta.json) or data.shards (WebDataset URLs)")
    if cfg.stage == 1 and not cfg.model.base_model:
        problems.append("stage 1 needs model.base_model (an SD1.5-family folder with unet/)")
    if cfg.model.init_model and cfg.stage != 1:
        problems.append("model.init_model is for stage 1 (stage 2 starts from model.stage1_model)")
    if cfg.model.init_model and cfg.model.controlnet:
        problems.append("model.init_model already gives the Pose Guider: drop model.controlnet")
    if cfg.stage == 2 and (not cfg.model.stage1_model or not cfg.model.motion_module):
        problems.append("stage 2 needs model.stage1_model and model.motion_module")
    for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps"):
        if getattr(cfg.optim, name) < 1:
            problems.append(f"optim.{name} must be >= 1")
    if cfg.checkpoint.checkpointing_steps < 1:
        problems.append("checkpoint.checkpointing_steps must be >= 1")
    if problems:
        raise ConfigError("; ".join(problems))


def as_flat_dict(cfg: TrainConfig) -> dict:
    """{"optim.learning_rate": 1e-05, ...} with only scalar values (what TensorBoard's hparams accept)."""
    from omegaconf import OmegaConf

    flat = {}

    def walk(prefix, node):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(name + ".", value)
            else:
                flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", OmegaConf.to_container(OmegaConf.structured(cfg)))
    return flat
