"""`marionet train stage1|stage2 --config FILE [key=value ...]`: the training scripts, in this one process.

For several GPUs or DeepSpeed use `accelerate launch train/stage1.py ...` (see README "Training"); this command is
the same code path for one device, handy for the tiny CPU configs.
"""
from __future__ import annotations

import argparse


def _train(args) -> int:
    from ..errors import UserError
    from ..models.loading import MissingWeightsError
    from .config import ConfigError, load_config
    from .core import OutputExists, TrainingDiverged, run

    stage = int(args.stage[-1])
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.stage != stage:
            raise ConfigError(f"{args.config} is a stage-{cfg.stage} config, not stage {stage}")
        run(cfg)
    except (ConfigError, MissingWeightsError, OutputExists, FileNotFoundError, TrainingDiverged) as error:
        raise UserError(str(error)) from None
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train stage 1 or 2 in this process (multi-GPU: accelerate launch train/stageN.py)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, what in (("stage1", "frames: ReferenceNet, denoising UNet, Pose Guider"),
                        ("stage2", "clips: motion modules only")):
        sub = stages.add_parser(stage, help=what, description=f"Train {stage} ({what}).")
        sub.add_argument("--config", required=True, help=f"YAML config, e.g. configs/tiny/{stage}.yaml")
        sub.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.max_train_steps=20")
        sub.set_defaults(func=_train)
