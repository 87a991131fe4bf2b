"""The `marionet` command line: one entry point whose subcommands live next to the code they drive.

Each module listed in COMMAND_MODULES exposes `register(subparsers)`, which adds its subcommands and sets `func` on
them. Registration stays cheap (no torch, diffusers or transformers at module level, and the subpackages'
`__init__` files import nothing heavy) so that `marionet --help` and `marionet COMMAND --help` answer at once;
the handlers import what they need.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import UserError

COMMAND_MODULES = (
    "marionet.models.cli",               # info, tiny-model
    "marionet.models.convert_cli",       # convert ...
    "marionet.data.cli",                 # synth, data ...
    "marionet.data.pose_cli",            # pose extract, pose align
    "marionet.train.cli",                # train stage1|stage2, config list|show|copy
    "marionet.train.bench_cli",          # bench memory
    "marionet.inference.cli",            # animate
    "marionet.inference.zero_shot_cli",  # zero-shot
    "marionet.inference.compare_cli",    # compare, demo
    "marionet.inference.app_cli",        # app
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marionet",
        description="Pose-driven character animation: train, run and compare Animate Anyone-style models.",
    )
    parser.add_argument("--version", action="version", version=f"marionet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
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
    sys.exit(main())
