"""`marionet train stage1|stage2 --config FILE [key=value ...]` and `marionet config list|show|copy`.

`marionet train` runs the training scripts' code in this one process; for several GPUs or DeepSpeed use
`accelerate launch train/stage1.py ...` from a clone, or `accelerate launch -m marionet.train.stage1 ...` from an
installed package (see README "Training"). A --config is a YAML file or the name of a shipped config
(`marionet config list`).
"""
from __future__ import annotations

import argparse


def _train(args) -> int:
    from ..errors import UserError
    from ..models.loading import MissingWeightsError
    from .config import ConfigError, load_config
    from ..atomic import OutputWriteError
    from .checkpoints import CheckpointDamaged
    from .core import OutputExists, TrainingDiverged, train
    from .lock import OutputLocked

    stage = int(args.stage[-1])
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.stage != stage:
            raise ConfigError(f"{args.config} is a stage-{cfg.stage} config, not stage {stage}")
        train(cfg)
    except (ConfigError, MissingWeightsError, OutputExists, OutputLocked, CheckpointDamaged, FileNotFoundError,
            TrainingDiverged, OutputWriteError) as error:
        raise UserError(str(error)) from None
    return 0


def _config(args) -> int:
    from pathlib import Path

    from .. import configs
    from ..atomic import write_text
    from ..errors import UserError

    if args.action == "list":
        for name in configs.names():
            print(name)
        return 0
    if not args.name:
        raise UserError(f"config {args.action} needs a NAME (one of: {', '.join(configs.names())})")
    try:
        text = configs.read_text(args.name)
    except FileNotFoundError as error:
        raise UserError(str(error)) from None
    if args.action == "show":
        print(text, end="")
        return 0
    dest = Path(args.dest or Path(configs.shipped_name(args.name)).name)
    if dest.is_dir():
        dest = dest / Path(configs.shipped_name(args.name)).name
    try:
        write_text(dest, text, overwrite=args.overwrite)
    except FileExistsError:
        raise UserError(f"{dest} already exists (use --overwrite to replace it)") from None
    print(f"wrote {dest}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train stage 1 or 2 in this process (multi-GPU: accelerate launch train/stageN.py)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, what in (("stage1", "frames: ReferenceNet, denoising UNet, Pose Guider"),
                        ("stage2", "clips: motion modules only")):
        sub = stages.add_parser(stage, help=what, description=f"Train {stage} ({what}).")
        sub.add_argument("--config", required=True,
                         help=f"YAML config file or shipped name, e.g. configs/tiny/{stage}.yaml")
        sub.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.max_train_steps=20")
        sub.set_defaults(func=_train)

    config = subparsers.add_parser(
        "config", help="list, print or copy the shipped training / accelerate configs",
        description="The configs shipped inside the package (readable from any install): `list` names them, "
                    "`show NAME` prints one, `copy NAME [DEST]` writes it to a file to edit.")
    config.add_argument("action", choices=("list", "show", "copy"))
    config.add_argument("name", nargs="?", help="e.g. stage1.yaml, tiny/stage1.yaml, accelerate/multi_gpu.yaml")
    config.add_argument("dest", nargs="?", help="copy: file or folder to write (default: the name's file name here)")
    config.add_argument("--overwrite", action="store_true", help="copy: replace an existing file")
    config.set_defaults(func=_config)
