"""Moore-AnimateAnyone's released weights (denoising_unet.pth, reference_unet.pth, pose_guider.pth and optional
motion_module.pth; plain `torch.save` state dicts) -> our `Animator`.

What their code computes, and how it maps onto ours (read from their public source; same numbers out):
- denoising_unet.pth: their 3-D UNet without motion modules. Its spatial layers keep SD1.5's diffusers names and
  shapes (inflated convs are Conv2d subclasses; group norms are per frame, as a 2-D UNet over B*F rows), so it
  loads one to one into a `UNet2DConditionModel` built with the base UNet's config.
- reference_unet.pth: their 2-D UNet with `conv_norm_out`/`conv_out` deleted. Those layers come after the last
  banked input and are never computed (ours stops there too); they are filled from the denoising UNet only so the
  folder loads as a complete diffusers UNet.
- Reference attention: they bank each transformer block's norm1 output in the ReferenceNet (timestep 0, CLIP
  token as context) and, in the denoising UNet, attend with keys/values from [own tokens ; bank repeated over
  frames]. Writers and readers are paired after a stable sort by channel count; both UNets register their blocks
  in the same order, so every layer reads the bank of the same-named layer, as ours does. With guidance, the
  unconditional half does plain self-attention and gets a zero CLIP token: our `drop_reference` rows.
- pose_guider.pth: conv_in + (3x3, 3x3 stride 2) pairs + conv_out with SiLU after every conv but the last, the
  same layer names as our `PoseGuider`; its output is added to conv_in's output (our conv_in hook).
- motion_module.pth: AnimateDiff's original names and semantics (per-frame GroupNorm, sinusoidal table added
  before each temporal attention); see `motion_module.py`. Heads are not in any shape: 8 by default.
- Scheduler: they trained (and validated during training) with scaled_linear betas rescaled to zero terminal SNR,
  trailing spacing, v-prediction and DDIM's default set_alpha_to_one=True; their inference config says `linear`
  betas (a known mismatch). The exported folder carries the training schedule unless asked for the demo's.
"""
from __future__ import annotations

from pathlib import Path

from ..loading import MissingWeightsError, require_dir
from .common import ConversionError, empty_model, load_exact, read_state_dict
from .motion_module import DEFAULT_HEADS, DEFAULT_NORM_GROUPS, adapter_from_original

RELEASE_FILES = ("denoising_unet.pth", "reference_unet.pth", "pose_guider.pth")
MOTION_FILE = "motion_module.pth"
REFERENCE_TAIL = ("conv_norm_out.", "conv_out.")


def _pose_guider_from_state(state: dict, what: str):
    from ..pose_guider import PoseGuider

    try:
        blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
        channels = [state["conv_in.weight"].shape[0]] + [state[f"blocks.{i}.weight"].shape[0]
                                                          for i in blocks if i % 2 == 1]
        guider = PoseGuider(conditioning_channels=state["conv_in.weight"].shape[1],
                            block_out_channels=tuple(channels),
                            conditioning_embedding_channels=state["conv_out.weight"].shape[0])
    except KeyError as error:
        raise ConversionError(f"{what}: no {error.args[0]} (not a Pose Guider state dict)") from error
    load_exact(guider, state, what)
    return guider


# Their scheduler arguments, key for key, as their code builds them (Moore-AnimateAnyone at a914ef3). Every key they
# leave out takes DDIMScheduler's default, notably set_alpha_to_one=True (the last DDIM step goes to alpha 1).
# - training and the validation renders during training (train_stage_1.py / train_stage_2.py):
#   configs/train/stage*.yaml `noise_scheduler_kwargs` + the `enable_zero_snr` update;
RELEASE_TRAINING_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
                                  rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                  prediction_type="v_prediction")
# - their demo (scripts/pose2vid.py: `DDIMScheduler(**infer_config.noise_scheduler_kwargs)`,
#   configs/inference/inference_v2.yaml): `linear` betas, the known mismatch with training.
RELEASE_INFERENCE_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                                   steps_offset=1, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                   timestep_spacing="trailing")
SCHEDULES = {"trained": RELEASE_TRAINING_SCHEDULER, "released-inference": RELEASE_INFERENCE_SCHEDULER}


def release_scheduler(which: str = "trained"):
    """DDIM exactly as their code builds it: the schedule the release was trained and validated with ("trained",
    the default export) or the one their demo script samples with ("released-inference", to reproduce its outputs).

    Both keep DDIM's default `set_alpha_to_one=True`, as their code does: the final step lands on alpha 1 (the clean
    prediction). With `False` (SD1.5's own scheduler config, what conversions before marionet 0.2 wrote) only the
    last step changes: 2.0e-2 / 1.5e-2 relative L2 of the final latents at 4 / 8 steps against their pipeline,
    against 3.8e-5 / 3.7e-5 with `True` (README, "Using existing weights").
    """
    from diffusers import DDIMScheduler

    if which not in SCHEDULES:
        raise ValueError(f"unknown schedule {which!r} (choose from {', '.join(SCHEDULES)})")
    return DDIMScheduler(**SCHEDULES[which])


def check_release_folder(weights_dir) -> Path:
    """The release folder, if it holds the three required files; else an error naming the missing ones."""
    root = require_dir(weights_dir, "Moore-AnimateAnyone weights folder", must_contain=())
    missing = [name for name in RELEASE_FILES if not (root / name).is_file()]
    if missing:
        raise MissingWeightsError(f"Moore-AnimateAnyone weights folder {root} lacks {', '.join(missing)}")
    return root


def convert_moore_release(weights_dir, unet_config: dict, heads: int = DEFAULT_HEADS,
                          norm_groups: int = DEFAULT_NORM_GROUPS, max_seq_length: int | None = None,
                          use_motion: bool = True, allow_pickle: bool = False):
    """An `Animator` holding the released weights, and a report dict (files read, keys filled or ignored)."""
    from diffusers import UNet2DConditionModel

    from ..animator import Animator

    root = check_release_folder(weights_dir)
    report = {"files": [], "filled": [], "ignored": []}

    def read(name):
        report["files"].append(str(root / name))
        return read_state_dict(root / name, f"{name}", allow_pickle)

    denoising_state = read("denoising_unet.pth")
    motion_in_unet = {k: v for k, v in denoising_state.items() if "motion_modules." in k}
    denoising_state = {k: v for k, v in denoising_state.items() if "motion_modules." not in k}
    denoising = empty_model(lambda: UNet2DConditionModel.from_config(unet_config))
    load_exact(denoising, denoising_state, f"{root / 'denoising_unet.pth'}")
    del denoising_state  # load_exact copied it; keep the peak at one UNet's state dict plus the models

    reference_state = read("reference_unet.pth")
    reference = empty_model(lambda: UNet2DConditionModel.from_config(unet_config))
    for key, value in denoising.state_dict().items():
        if key.startswith(REFERENCE_TAIL) and key not in reference_state:
            reference_state[key] = value.clone()
            report["filled"].append(f"reference_unet.{key} (never computed; copied from the denoising UNet)")
    load_exact(reference, reference_state, f"{root / 'reference_unet.pth'}")
    del reference_state

    guider = _pose_guider_from_state(read("pose_guider.pth"), f"{root / 'pose_guider.pth'}")
    if guider.config.conditioning_embedding_channels != unet_config["block_out_channels"][0]:
        width = guider.config.conditioning_embedding_channels
        raise ConversionError(f"{root / 'pose_guider.pth'}: output width {width} != the UNet's conv_in width "
                              f"{unet_config['block_out_channels'][0]}")

    adapter = None
    motion_path = root / MOTION_FILE
    if use_motion and (motion_path.is_file() or motion_in_unet):
        if motion_path.is_file():
            motion_state, label = read(MOTION_FILE), str(motion_path)
        else:
            motion_state, label = motion_in_unet, f"{root / 'denoising_unet.pth'} (its motion modules)"
        adapter, info = adapter_from_original(motion_state, label, heads, norm_groups, max_seq_length)
        report["ignored"] += [f"{MOTION_FILE}: {k}" for k in info["ignored"]]
        report["motion_config"] = info["config"]
    elif motion_in_unet:
        report["ignored"].append(f"denoising_unet.pth: {len(motion_in_unet)} motion-module keys (--no-motion)")
    return Animator(reference, denoising, guider, adapter), report
