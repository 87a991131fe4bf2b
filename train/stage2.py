"""Stage 2: add AnimateDiff motion modules to the stage-1 model and train only them, on clips.

    accelerate launch train/stage2.py --config configs/stage2.yaml [key=value ...]

Everything stage 1 learned (ReferenceNet, the denoising UNet's spatial weights, Pose Guider) stays frozen and is
exported unchanged. The motion module comes from a diffusers MotionAdapter folder or an original AnimateDiff
checkpoint (e.g. mm_sd_v15_v2.ckpt, converted by models/convert/motion_module.py). The loop is train/core.py.

This file is also run as a script, so it imports the package by its absolute name.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a clone: import marionet from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from marionet.train.core import Frozen, main  # noqa: E402
from marionet.train.stage1 import load_frozen_parts  # noqa: E402


def load_frozen(cfg) -> Frozen:
    """VAE, CLIP and preprocessor saved with the stage-1 model; its scheduler with this config's noise settings."""
    import json

    from marionet.models.loading import MissingWeightsError

    stage1 = Path(cfg.model.stage1_model)
    if not (stage1 / "model_index.json").is_file():
        raise MissingWeightsError(f"model.stage1_model: {stage1} is not an exported stage-1 model folder (no "
                                  "model_index.json); train stage 1 first")
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
    from marionet.models.convert.motion_module import load_motion_adapter as load
    from marionet.models.loading import MissingWeightsError

    if not Path(path).exists():
        raise MissingWeightsError(f"model.motion_module: not found: {path}")
    adapter, _ = load(path)
    return adapter


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
