"""The `marionet` command line: one entry point whose subcommands live next to the code they drive.

Each module listed in COMMAND_MODULES exposes `register(subparsers)`, which adds its subcommands and sets
`func` on them. Registration must stay cheap (no torch/diffusers imports at module level) so that
`marionet --help` answers instantly; the handlers import what they need.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "models.cli",          # info, tiny-model
    "models.convert_cli",  # convert ...
    "data.cli",            # synth, pose ..., data ...
    "data.pose_cli",       # pose extract, pose align
    "train.cli",           # train helpers (the training entry points are train/stage1.py and stage2.py)
    "inference.cli",       # animate
    "inference.zero_shot_cli",  # zero-shot
    "inference.compare_cli",    # compare, demo
)


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marionet",
        description="Pose-driven character animation: train, run and compare Animate Anyone-style models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # that part is not built yet; anything else is a real error
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        result = args.func(args)
    except UserError as error:
        print(f"marionet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    # Re-import by name so subcommand modules and this entry point share one `UserError` class.
    from marionet import main as _main

    sys.exit(_main())
