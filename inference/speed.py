"""Speed settings shared by every command that renders: the solver, step caching, and the `--fast` preset.

`animate`, `zero-shot`, `compare` (and the app) take the same switches:

    --scheduler ddim|dpm++|unipc|euler   the solver, on the model's trained schedule (`inference.schedulers`)
    --step-cache N [--step-cache-skips K] a full UNet pass every N steps, the shallow path only in between
    --fast                               the measured preset (FAST below; docs/benchmarks.md, "Speed")

This module stays import-light (the CLIs register their arguments from it); `apply` imports the solvers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

SCHEDULER_NAMES = ("ddim", "dpm++", "unipc", "euler")


@dataclass(frozen=True)
class Speed:
    """How a render trades work for fidelity. cache_interval 1 = no step caching; steps None = the command's."""
    scheduler: str = "ddim"
    cache_interval: int = 1
    cache_skips: int = 2
    steps: int | None = None

    def validate(self) -> "Speed":
        if self.scheduler not in SCHEDULER_NAMES:
            raise ValueError(f"unknown scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULER_NAMES)}")
        for name, value in (("step cache interval", self.cache_interval), ("step cache skips", self.cache_skips)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        return self

    def describe(self) -> str:
        cache = "off" if self.cache_interval == 1 else f"every {self.cache_interval} steps, {self.cache_skips} skips"
        return f"scheduler {self.scheduler}, step cache {cache}"

    def as_dict(self) -> dict:
        return asdict(self)


# The preset `--fast` selects (chosen from the measured table in docs/benchmarks.md, "Speed").
FAST = Speed(scheduler="dpm++", cache_interval=2, cache_skips=2, steps=9)


def apply(pipe, speed: Speed) -> None:
    """Set a marionet pipeline's solver (on its trained schedule) and step cache for the next renders."""
    from .schedulers import make_scheduler

    speed.validate()
    pipe.scheduler = make_scheduler(speed.scheduler, pipe.scheduler.config)
    if speed.cache_interval > 1:
        pipe.enable_step_cache(interval=speed.cache_interval, skips=speed.cache_skips)
    else:
        pipe.disable_step_cache()


def add_arguments(parser, default_steps: int) -> None:
    """The speed switches on a command's parser (`--steps` included, so that `--fast` can set its default)."""
    group = parser.add_argument_group("speed (see docs/benchmarks.md, \"Speed\")")
    group.add_argument("--steps", type=int, default=None,
                       help=f"denoising steps (default {default_steps}; {FAST.steps} with --fast)")
    group.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=None,
                       help=f"solver on the model's trained schedule (default ddim; {FAST.scheduler} with --fast)")
    group.add_argument("--step-cache", type=int, default=None, metavar="N",
                       help="reuse the UNet's deep features: a full pass every N steps (default 1 = off; "
                            f"{FAST.cache_interval} with --fast)")
    group.add_argument("--step-cache-skips", type=int, default=None, metavar="K",
                       help=f"skip connections recomputed on cached steps (default {FAST.cache_skips})")
    group.add_argument("--fast", action="store_true",
                       help=f"the measured fast preset: {FAST.describe()}, {FAST.steps} steps "
                            "(each can still be overridden)")
    parser.set_defaults(_default_steps=default_steps)


def from_arguments(args) -> Speed:
    """The Speed the parsed switches ask for (explicit switches override the preset); steps always set."""
    base = FAST if args.fast else Speed(steps=args._default_steps)
    speed = Speed(scheduler=args.scheduler or base.scheduler,
                  cache_interval=args.step_cache if args.step_cache is not None else base.cache_interval,
                  cache_skips=args.step_cache_skips if args.step_cache_skips is not None else base.cache_skips,
                  steps=args.steps if args.steps is not None else base.steps)
    return speed.validate()


def from_options(options: dict, base: Speed) -> Speed:
    """A compare SPEC's speed options (scheduler=, step_cache=, step_cache_skips=, steps=, fast=1) over `base`."""
    if str(options.get("fast", "0")).lower() in ("1", "true", "yes", "on"):
        base = FAST
    speed = Speed(scheduler=options.get("scheduler", base.scheduler),
                  cache_interval=int(options.get("step_cache", base.cache_interval)),
                  cache_skips=int(options.get("step_cache_skips", base.cache_skips)),
                  steps=int(options["steps"]) if "steps" in options else base.steps)
    return speed.validate()


SPEC_OPTIONS = ("scheduler", "step_cache", "step_cache_skips", "steps", "fast")
