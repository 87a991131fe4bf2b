"""Sampling schedulers on the schedule a model was trained with: `--scheduler ddim|dpm++|unipc|euler`.

A marionet model folder saves its training scheduler (a DDIM carrying the betas, the prediction type and, when
trained with zero terminal SNR, the rescaled betas and trailing spacing). Every solver here is built from that
config, so it samples the schedule the model learned; only solver settings are added:

- dpm++: DPM-Solver++ (2nd order multistep), `final_sigmas_type="zero"` (the last step lands on the clean sample);
- unipc: UniPC (bh2, predictor-corrector), the same final sigma;
- euler: Euler (the sigma-space ODE), the same final sigma;
- ddim: deterministic DDIM (eta 0), the default and the reference every speed table compares against.

With zero terminal SNR the first timestep has infinite sigma; diffusers' solvers then clamp the last alpha to a tiny
positive value (2**-24), which is what we want.

Step placement: on a schedule without zero terminal SNR the solvers place their steps on Karras sigmas (denser at
low noise, where a few-step render loses most; measured in docs/benchmarks.md, "Speed"). With zero terminal SNR the
largest sigma is huge (4096) and Karras spacing would spend most steps near it, so they keep the trained (trailing)
timesteps there. Swapping the scheduler the diffusers way works as well:
`pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)`.
"""
from __future__ import annotations

from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       UniPCMultistepScheduler)

from .speed import SCHEDULER_NAMES

SCHEDULERS = {
    "ddim": (DDIMScheduler, {"clip_sample": False}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                            "final_sigmas_type": "zero"}),
    "unipc": (UniPCMultistepScheduler, {"solver_order": 2, "solver_type": "bh2", "final_sigmas_type": "zero"}),
    "euler": (EulerDiscreteScheduler, {"final_sigmas_type": "zero"}),
}

assert tuple(SCHEDULERS) == SCHEDULER_NAMES  # the CLI offers these names without importing diffusers

# What a solver must carry over from the training schedule (checked key by key in tests/test_speed.py).
TRAINED_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                "rescale_betas_zero_snr", "timestep_spacing", "steps_offset")


def make_scheduler(name: str, trained_config):
    """A `name` solver on the trained schedule `trained_config` (a scheduler's `.config` or its dict)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    cls, settings = SCHEDULERS[name]
    config = {key: value for key, value in dict(trained_config).items() if not key.startswith("_")}
    config.update(settings)
    if cls is not DDIMScheduler:
        config["use_karras_sigmas"] = not config.get("rescale_betas_zero_snr", False)
    return cls.from_config(config)


def scheduler_name(scheduler) -> str:
    """The `--scheduler` name of a scheduler instance (DDPM, the training scheduler, samples as DDIM)."""
    for name, (cls, _) in SCHEDULERS.items():
        if type(scheduler) is cls:
            return name
    return "ddim" if type(scheduler).__name__ == "DDPMScheduler" else type(scheduler).__name__
