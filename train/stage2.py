"""Stage 2: add AnimateDiff motion modules to the stage-1 model and train only them, on clips.

    accelerate launch train/stage2.py --config configs/stage2.yaml [key=value ...]

Everything stage 1 learned (ReferenceNet, the denoising UNet's spatial weights, Pose Guider) stays frozen and is
exported unchanged. The motion module comes from a diffusers MotionAdapter folder or an original AnimateDiff
checkpoint (e.g. mm_sd_v15_v2.ckpt, converted by models/convert/motion_module.py). The loop is train/core.py.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a clone: import marionet from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from marionet.train.core import Frozen, main  # noqa: E402
from marionet.train.stage1 import load_frozen_parts  # noqa: E402


def prepare_assets(cfg) -> None:
    """Tiny configs: the tiny base folder (it holds the tiny MotionAdapter); the stage-1 model must exist."""
    from marionet.models.loading import MissingWeightsError
    from marionet.train.stage1 import prepare_assets as prepare_stage1_assets

    if cfg.tiny.enabled and cfg.model.base_model:
        prepare_stage1_assets(cfg)
    if not (Path(cfg.model.stage1_model) / "model_index.json").is_file():
        raise MissingWeightsError(f"model.stage1_model: {cfg.model.stage1_model} is not an exported stage-1 model "
                                  "folder (no model_index.json); train stage 1 first")


def load_frozen(cfg) -> Frozen:
    """VAE, CLIP and preprocessor saved with the stage-1 model; its scheduler with this config's noise settings."""
    import json

    stage1 = Path(cfg.model.stage1_model)
    frozen = load_frozen_parts(cfg, default_dir=stage1, scheduler_dir=stage1 / "scheduler", what="model.stage1_model")
    saved = json.loads((stage1 / "scheduler" / "scheduler_config.json").read_text())
    if saved.get("prediction_type") != frozen.scheduler.config.prediction_type or \
            bool(saved.get("rescale_betas_zero_snr")) != bool(frozen.scheduler.config.rescale_betas_zero_snr):
        warnings.warn(f"stage 2 trains with prediction_type={frozen.scheduler.config.prediction_type}, "
                      f"zero_terminal_snr={frozen.scheduler.config.rescale_betas_zero_snr}, but stage 1 "
                      f"({stage1}) used {saved.get('prediction_type')}, {saved.get('rescale_betas_zero_snr')}")
    return frozen


def load_motion_adapter(path):
    """A MotionAdapter from a diffusers folder, or from an original-format checkpoint through the converter."""
    from diffusers import MotionAdapter

    from marionet.models.loading import MissingWeightsError, offline_kwargs, require_dir

    path = Path(path)
    try:
        from marionet.models.convert.motion_module import load_motion_adapter as convert_and_load
    except ImportError:
        convert_and_load = None
    if convert_and_load is not None:
        if not path.exists():
            raise MissingWeightsError(f"model.motion_module: not found: {path}")
        adapter, _ = convert_and_load(path)
        return adapter
    if not path.is_dir():
        raise MissingWeightsError(f"model.motion_module: {path} is not a MotionAdapter folder (this install has no "
                                  "models.convert.motion_module to convert original .ckpt files)")
    return MotionAdapter.from_pretrained(require_dir(path, "model.motion_module"), **offline_kwargs())


def build_animator(cfg):
    """The stage-1 Animator + motion modules; only motion-module parameters stay trainable."""
    from marionet.models import Animator
    from marionet.models.loading import MissingWeightsError

    animator = Animator.from_pretrained(cfg.model.stage1_model)
    if animator.is_video_model:
        raise MissingWeightsError(f"{cfg.model.stage1_model} already has motion modules: give a stage-1 model folder")
    adapter = load_motion_adapter(cfg.model.motion_module)
    longest = max(cfg.data.n_frames, cfg.validation.frames)
    if adapter.config.motion_max_seq_length < longest:
        raise MissingWeightsError(f"motion module {cfg.model.motion_module} handles at most "
                                  f"{adapter.config.motion_max_seq_length} frames, but clips have {longest}")
    animator.add_motion_adapter(adapter)
    animator.freeze_except_motion()
    return animator


if __name__ == "__main__":
    sys.exit(main(stage=2))
