"""Stage 1: train ReferenceNet, denoising UNet and Pose Guider on single frames.

    accelerate launch train/stage1.py --config configs/stage1.yaml [key=value ...]

Both UNets start from the base (SD1.5-family) UNet; the Pose Guider from a ControlNet-openpose folder when
model.controlnet is set, else from its own initialisation (zero output conv either way, so training starts from the
base UNet's behaviour). The loop itself is train/core.py, shared with stage 2.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a clone: import marionet from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from marionet.train.core import Frozen, main, make_training_scheduler  # noqa: E402


def prepare_assets(cfg) -> None:
    """Tiny configs: write a tiny SD1.5-layout base folder (with a tiny MotionAdapter for stage 2) when missing."""
    if not cfg.tiny.enabled:
        return
    base = Path(cfg.model.base_model)
    spec = {"seed": cfg.tiny.seed, "unet_channels": list(cfg.tiny.unet_channels),
            "vae_channels": list(cfg.tiny.vae_channels), "layers_per_block": cfg.tiny.layers_per_block,
            "clip_image_size": cfg.tiny.clip_image_size}
    marker = base / "tiny.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return
    if base.exists() and not marker.is_file():
        raise FileExistsError(f"{base} exists but is not a tiny base folder (no tiny.json): refusing to replace it")
    from marionet.models.tiny import build_tiny_components, save_base_folder

    parts = build_tiny_components(seed=spec["seed"], with_motion=True, unet_channels=tuple(spec["unet_channels"]),
                                  vae_channels=tuple(spec["vae_channels"]),
                                  layers_per_block=spec["layers_per_block"], clip_image_size=spec["clip_image_size"])
    parts.pop("pose_guider")  # a base folder holds what SD1.5-family folders hold; stage 1 builds the guider
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{base.name}.tmp-", dir=base.parent))
    save_base_folder(parts, tmp)
    (tmp / "tiny.json").write_text(json.dumps(spec))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders
    if base.exists():
        shutil.rmtree(base)  # an older tiny folder of ours with other sizes
    tmp.rename(base)


def load_frozen(cfg) -> Frozen:
    """VAE, CLIP image encoder and preprocessor from the base folder (or the folders that override it)."""
    base = Path(cfg.model.base_model)
    if not base.exists():
        from marionet.models.loading import MissingWeightsError

        raise MissingWeightsError(f"model.base_model: not found: {base} (an SD1.5-family diffusers folder)")
    return load_frozen_parts(cfg, default_dir=base, scheduler_dir=base / "scheduler", what="model.base_model")


def load_frozen_parts(cfg, default_dir: Path, scheduler_dir: Path, what: str) -> Frozen:
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionModelWithProjection

    from marionet.models.loading import offline_kwargs, require_dir
    from marionet.models.tiny import CLIPImageProcessor, training_scheduler

    vae_dir = require_dir(cfg.model.vae or default_dir / "vae", f"VAE ({'model.vae' if cfg.model.vae else what})")
    encoder_dir = require_dir(cfg.model.image_encoder or default_dir / "image_encoder",
                              f"image encoder ({'model.image_encoder' if cfg.model.image_encoder else what})")
    extractor_dir = require_dir(cfg.model.feature_extractor or default_dir / "feature_extractor",
                                "CLIP feature extractor (model.feature_extractor)",
                                must_contain=("preprocessor_config.json",))
    config_file = scheduler_dir / "scheduler_config.json"
    base_schedule = json.loads(config_file.read_text()) if config_file.is_file() else training_scheduler().config
    return Frozen(
        vae=AutoencoderKL.from_pretrained(vae_dir, **offline_kwargs()),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(encoder_dir, **offline_kwargs()),
        feature_extractor=CLIPImageProcessor.from_pretrained(extractor_dir, **offline_kwargs()),
        scheduler=make_training_scheduler(base_schedule, cfg.noise),
    )


def build_animator(cfg):
    """ReferenceNet and denoising UNet as two copies of the base UNet, plus the Pose Guider; all trainable."""
    from diffusers import UNet2DConditionModel

    from marionet.models import Animator, PoseGuider
    from marionet.models.loading import MissingWeightsError, offline_kwargs, require_dir

    base = Path(cfg.model.base_model)
    if base.is_file():  # an original single-file checkpoint
        from marionet.models.convert.base import load_base_components

        unet = load_base_components(base, need_image_encoder=False)["unet"]
    else:
        unet = UNet2DConditionModel.from_pretrained(require_dir(base / "unet", "base UNet (model.base_model)"),
                                                    **offline_kwargs())
    encoder_dir = Path(cfg.model.image_encoder or base / "image_encoder")
    projection = json.loads((encoder_dir / "config.json").read_text()).get("projection_dim")
    if projection is not None and projection != unet.config.cross_attention_dim:
        raise MissingWeightsError(f"image encoder {encoder_dir} gives {projection}-d embeddings but the base UNet's "
                                  f"cross-attention takes {unet.config.cross_attention_dim}-d: use a matching pair "
                                  "(e.g. sd-image-variations' unet/ and image_encoder/)")
    reference = UNet2DConditionModel.from_config(unet.config)
    reference.load_state_dict(unet.state_dict())
    width = unet.config.block_out_channels[0]
    if cfg.model.controlnet:
        from marionet.models.convert.base import load_pose_guider_init

        guider = load_pose_guider_init(cfg.model.controlnet, conditioning_embedding_channels=width)
    else:
        guider = PoseGuider(block_out_channels=tuple(cfg.model.pose_guider_channels),
                            conditioning_embedding_channels=width)
    return Animator(reference, unet, guider)


if __name__ == "__main__":
    sys.exit(main(stage=1))
