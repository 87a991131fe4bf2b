"""Original Stable Diffusion single-file checkpoints (.safetensors / .ckpt, CompVis/LDM key names) -> diffusers
UNet + VAE, fully offline.

diffusers' `from_single_file` looks its configs up on the Hub; here the configs come from a local diffusers folder
(`config_dir`, e.g. any SD1.5 folder) or from the built-in SD1.5 values, and diffusers' own LDM->diffusers key
conversion functions do the renaming. Each part must convert key for key (the LDM->diffusers mapping is one to
one), so a count mismatch means keys were skipped and is an error. The CLIP text encoder in such files is not
converted: marionet conditions on CLIP image embeddings and never uses it (its keys are reported as ignored).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..sd15 import UNET_CONFIG as SD15_UNET_CONFIG
from ..sd15 import VAE_CONFIG as SD15_VAE_CONFIG
from .common import ConversionError, empty_model, load_exact, read_state_dict

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.")

def _local_config(config_dir, sub: str, default: dict) -> dict:
    if config_dir is None:
        return dict(default)
    path = Path(config_dir) / sub / "config.json"
    if not path.is_file():
        raise ConversionError(f"config folder {config_dir} has no {sub}/config.json")
    return json.loads(path.read_text())


def convert_single_file(ckpt, config_dir=None, allow_pickle: bool = False) -> dict:
    """{"unet", "vae", "scheduler", "ignored"} from an original SD checkpoint file."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from ..tiny import training_scheduler

    path = Path(ckpt)
    state = read_state_dict(path, "single-file checkpoint", allow_pickle)
    unet_keys = [k for k in state if k.startswith(UNET_PREFIX)]
    vae_prefix = next((p for p in VAE_PREFIXES if any(k.startswith(p) for k in state)), None)
    if not unet_keys or vae_prefix is None:
        raise ConversionError(f"single-file checkpoint {path}: expected `{UNET_PREFIX}*` and `first_stage_model.*` "
                              f"keys (original SD format); found {len(unet_keys)} UNet keys, "
                              f"{'a' if vae_prefix else 'no'} VAE")
    vae_keys = [k for k in state if k.startswith(vae_prefix)]

    unet_config = _local_config(config_dir, "unet", SD15_UNET_CONFIG)
    vae_config = _local_config(config_dir, "vae", SD15_VAE_CONFIG)
    parts = {}
    for name, cls, config, keys, convert in (
            ("unet", UNet2DConditionModel, unet_config, unet_keys, convert_ldm_unet_checkpoint),
            ("vae", AutoencoderKL, vae_config, vae_keys, convert_ldm_vae_checkpoint)):
        model = empty_model(lambda: cls.from_config(config))
        try:
            converted = convert({k: state[k] for k in keys}, dict(model.config))
        except (KeyError, IndexError, ValueError) as error:
            raise ConversionError(f"single-file checkpoint {path}: {name} does not match its config "
                                  f"({type(error).__name__}: {error})") from error
        if len(converted) != len(keys):
            raise ConversionError(f"single-file checkpoint {path}: {name} has {len(keys)} weights but only "
                                  f"{len(converted)} converted (unknown keys for this config)")
        load_exact(model, converted, f"single-file checkpoint {path}: {name}")
        parts[name] = model

    scheduler_config = Path(config_dir) / "scheduler" / "scheduler_config.json" if config_dir else None
    if scheduler_config is not None and scheduler_config.is_file():
        parts["scheduler"] = DDIMScheduler.from_pretrained(scheduler_config.parent)
    else:
        parts["scheduler"] = training_scheduler()
    used = set(unet_keys) | set(vae_keys)
    parts["ignored"] = sorted(k for k in state if k not in used)
    return parts


def write_diffusers_folder(parts: dict, out_dir) -> Path:
    """unet/ vae/ scheduler/ in the diffusers SD layout (safetensors)."""
    out = Path(out_dir)
    for name in ("unet", "vae", "scheduler"):
        if name == "scheduler":
            parts[name].save_pretrained(out / name)
        else:
            parts[name].save_pretrained(out / name, safe_serialization=True)
    return out
