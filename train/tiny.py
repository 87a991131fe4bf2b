"""Assets the tiny CPU configs create on first use: a random-weight SD1.5-layout base folder and synthetic data.

Kept out of the training loop: the entry points (`python train/stageN.py`, `marionet train`) call
`prepare_tiny_assets(cfg)` before `train.core.run`; real configs (tiny.enabled false, data.synthetic_videos 0) make
it a no-op. From Python, call it yourself before `run` when you use a tiny config.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_folder
from .config import ConfigError, TrainConfig


def tiny_spec(cfg: TrainConfig) -> dict:
    return {"seed": cfg.tiny.seed, "unet_channels": list(cfg.tiny.unet_channels),
            "vae_channels": list(cfg.tiny.vae_channels), "layers_per_block": cfg.tiny.layers_per_block,
            "clip_image_size": cfg.tiny.clip_image_size}


def prepare_tiny_base(cfg: TrainConfig) -> Path | None:
    """Write the tiny base folder (UNet, VAE, CLIP, scheduler and a tiny MotionAdapter for stage 2) at
    model.base_model when it is missing or was built with other `tiny.*` sizes; never replaces a real folder."""
    if not cfg.tiny.enabled or not cfg.model.base_model:
        return None
    base = Path(cfg.model.base_model)
    spec = tiny_spec(cfg)
    marker = base / "tiny.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return base
    if base.exists() and not marker.is_file():
        raise FileExistsError(f"{base} exists but is not a tiny base folder (no tiny.json): refusing to replace it")
    from ..models.tiny import build_tiny_components, save_base_folder

    parts = build_tiny_components(seed=spec["seed"], with_motion=True, unet_channels=tuple(spec["unet_channels"]),
                                  vae_channels=tuple(spec["vae_channels"]),
                                  layers_per_block=spec["layers_per_block"], clip_image_size=spec["clip_image_size"])
    parts.pop("pose_guider")  # a base folder holds what SD1.5-family folders hold; stage 1 builds the guider
    with atomic_folder(base) as tmp:  # replaces an older tiny folder of ours with other sizes
        save_base_folder(parts, tmp)
        (tmp / "tiny.json").write_text(json.dumps(spec))
    return base


def prepare_synthetic_data(cfg: TrainConfig) -> Path | None:
    """Generate the synthetic data set at data.meta's folder when data.synthetic_videos > 0 and it is missing."""
    if cfg.data.synthetic_videos <= 0 or not cfg.data.meta or Path(cfg.data.meta).exists():
        return None
    from ..data.synth import ensure_synthetic_dataset

    meta = Path(cfg.data.meta)
    if meta.name != "meta.json":
        raise ConfigError(f"data.meta must end in meta.json to generate synthetic data there, got {meta}")
    ensure_synthetic_dataset(meta.parent, videos=cfg.data.synthetic_videos, frames=cfg.data.synthetic_frames,
                             size=cfg.data.synthetic_size, seed=cfg.seed)
    return meta


def prepare_tiny_assets(cfg: TrainConfig) -> None:
    """Everything a tiny config needs that does not exist yet (see the module docstring)."""
    prepare_tiny_base(cfg)
    prepare_synthetic_data(cfg)
