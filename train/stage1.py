"""Stage 1: train ReferenceNet, denoising UNet and Pose Guider on single frames.

    accelerate launch train/stage1.py --config configs/stage1.yaml [key=value ...]

Both UNets start from the base (SD1.5-family) UNet; the Pose Guider from a ControlNet-openpose folder when
model.controlnet is set, else from its own initialisation (zero output conv either way, so training starts from the
base UNet's behaviour). With model.init_model, an exported model folder starts training instead: a stock model's
UNet becomes both UNets and its Pose Guider is kept (as the method starts from a pose-conditioned SD1.5), a stage-1
folder continues as it is. The loop itself is train/core.py, shared with stage 2.

This file is also run as a script, so it imports the package by its absolute name.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a clone: import marionet from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from marionet.train.core import Frozen, main, make_training_scheduler  # noqa: E402


def load_frozen(cfg) -> Frozen:
    """VAE, CLIP image encoder and preprocessor from the base folder (or the folders that override it)."""
    base = Path(cfg.model.base_model)
    if not base.exists():
        from marionet.models.loading import MissingWeightsError

        raise MissingWeightsError(f"model.base_model: not found: {base} (an SD1.5-family diffusers folder)")
    return load_frozen_parts(cfg, default_dir=base, scheduler_dir=base / "scheduler", what="model.base_model")


def load_frozen_parts(cfg, default_dir: Path, scheduler_dir: Path, what: str) -> Frozen:
    from diffusers import AutoencoderKL

    from marionet.models.loading import clip_image_processor_class, load_image_encoder, offline_kwargs, require_dir
    from marionet.models.tiny import training_scheduler

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
        image_encoder=load_image_encoder(encoder_dir),
        feature_extractor=clip_image_processor_class().from_pretrained(extractor_dir, **offline_kwargs()),
        scheduler=make_training_scheduler(base_schedule, cfg.noise),
    )


def build_animator(cfg):
    """ReferenceNet and denoising UNet as two copies of the base UNet, plus the Pose Guider; all trainable
    (`model.reference_net: false`: no ReferenceNet, a stock model)."""
    from diffusers import UNet2DConditionModel

    from marionet.models import Animator, PoseGuider
    from marionet.models.loading import offline_kwargs, require_dir

    base = Path(cfg.model.base_model)
    if cfg.model.init_model:
        return _animator_from_model_folder(cfg)
    if base.is_file():  # an original single-file checkpoint
        from marionet.models.convert.base import load_base_components

        unet = load_base_components(base, need_image_encoder=False)["unet"]
    else:
        unet = UNet2DConditionModel.from_pretrained(require_dir(base / "unet", "base UNet (model.base_model)"),
                                                    **offline_kwargs())
    check_image_encoder_fits(cfg, unet)
    width = unet.config.block_out_channels[0]
    if cfg.model.controlnet:
        from marionet.models.convert.base import load_pose_guider_init

        guider = load_pose_guider_init(cfg.model.controlnet, conditioning_embedding_channels=width)
    else:
        guider = PoseGuider(block_out_channels=tuple(cfg.model.pose_guider_channels),
                            conditioning_embedding_channels=width)
    if not cfg.model.reference_net:  # a stock model: the base UNet + Pose Guider, appearance from the CLIP token
        return Animator(None, unet, guider)
    return Animator.from_base_unet(unet, guider)


def check_image_encoder_fits(cfg, unet) -> None:
    """The CLIP image embedding must be as wide as the UNet's cross-attention; else name both folders."""
    from marionet.models.loading import MissingWeightsError

    encoder_dir = Path(cfg.model.image_encoder or Path(cfg.model.base_model) / "image_encoder")
    projection = json.loads((encoder_dir / "config.json").read_text()).get("projection_dim")
    if projection is not None and projection != unet.config.cross_attention_dim:
        raise MissingWeightsError(f"image encoder {encoder_dir} gives {projection}-d embeddings but the starting "
                                  f"UNet's cross-attention takes {unet.config.cross_attention_dim}-d: use a matching "
                                  "pair (e.g. sd-image-variations' unet/ and image_encoder/)")


def _animator_from_model_folder(cfg):
    """`model.init_model`: the parts of an exported stage-1 or stock folder, trainable; a stock folder's UNet is
    cloned into the ReferenceNet, as `from_base_unet` does with a base UNet."""
    from diffusers import UNet2DConditionModel

    from marionet.models import Animator, PoseGuider
    from marionet.models.animator import has_reference_net
    from marionet.models.loading import MissingWeightsError, offline_kwargs, require_dir

    folder = require_dir(cfg.model.init_model, "model.init_model (an exported stage-1 or stock model)", must_contain=())
    if (folder / "motion_adapter").exists():
        raise MissingWeightsError(f"model.init_model: {folder} has motion modules (a stage-2 model); give a stage-1 "
                                  "or stock model folder")
    what = f"model.init_model {folder}"
    unet = UNet2DConditionModel.from_pretrained(require_dir(folder / "denoising_unet", what), **offline_kwargs())
    guider = PoseGuider.from_pretrained(require_dir(folder / "pose_guider", what), **offline_kwargs())
    check_image_encoder_fits(cfg, unet)
    if not cfg.model.reference_net:
        return Animator(None, unet, guider)
    if has_reference_net(folder):
        reference = UNet2DConditionModel.from_pretrained(require_dir(folder / "reference_unet", what),
                                                         **offline_kwargs())
        return Animator(reference, unet, guider)
    return Animator.from_base_unet(unet, guider)


if __name__ == "__main__":
    sys.exit(main(stage=1))
