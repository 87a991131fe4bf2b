"""Base components from disk for training and conversion: the SD1.5-family UNet (diffusers folder or single
file), the VAE (e.g. sd-vae-ft-mse), the CLIP image encoder (sd-image-variations' image_encoder/) with its
feature_extractor/, and the Pose Guider's initial weights from a ControlNet-openpose folder. Offline only; every
missing folder is named in one error."""
from __future__ import annotations

from pathlib import Path

from ..loading import MissingWeightsError, offline_kwargs
from .common import ConversionError, read_state_dict

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".bin")
CONTROLNET_EMBEDDING = "controlnet_cond_embedding."


def _first_existing(candidates):
    return next((c for c in candidates if c is not None and Path(c).is_dir()), None)


def load_base_components(base, vae=None, image_encoder=None, feature_extractor=None, config_dir=None,
                         torch_dtype=None, allow_pickle: bool = False, need_image_encoder: bool = True,
                         need_unet: bool = True) -> dict:
    """{"unet", "unet_config", "vae", "image_encoder", "feature_extractor", "scheduler"} from local folders/files.

    base: a diffusers SD folder (unet/ [vae/ scheduler/ image_encoder/ feature_extractor/]) or an original
    single-file checkpoint. vae / image_encoder / feature_extractor: folders that override base's subfolders.
    The feature extractor defaults to the folder beside the image encoder (sd-image-variations' layout).
    need_unet=False reads only the UNet's config (converters that bring their own UNet weights).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    from ..loading import clip_image_processor_class
    from ..tiny import training_scheduler

    kwargs = dict(offline_kwargs(), **({"torch_dtype": torch_dtype} if torch_dtype else {}))
    base = Path(base)
    parts, missing = {}, []
    if base.is_file() and base.suffix in SINGLE_FILE_SUFFIXES:
        from .single_file import convert_single_file

        converted = convert_single_file(base, config_dir=config_dir, allow_pickle=allow_pickle)
        parts.update(unet=converted["unet"], vae=converted["vae"], scheduler=converted["scheduler"],
                     unet_config=dict(converted["unet"].config))
        base_dir = None
    elif base.is_dir():
        base_dir = base
        if (base / "unet" / "config.json").is_file():
            parts["unet_config"] = dict(UNet2DConditionModel.load_config(base / "unet"))
            if need_unet:
                parts["unet"] = UNet2DConditionModel.from_pretrained(base / "unet", **kwargs)
        else:
            missing.append(f"base UNet: {base / 'unet'} (no config.json)")
    else:
        raise MissingWeightsError(f"base model: {base} is neither a folder nor a .safetensors/.ckpt file")

    if "vae" not in parts or vae is not None:
        folder = Path(vae) if vae is not None else base_dir / "vae"
        if (folder / "config.json").is_file():
            parts["vae"] = AutoencoderKL.from_pretrained(folder, **kwargs)
        else:
            missing.append(f"VAE: {folder} (no config.json)")
    if "scheduler" not in parts:
        folder = base_dir / "scheduler"
        parts["scheduler"] = (DDIMScheduler.from_pretrained(folder) if (folder / "scheduler_config.json").is_file()
                              else training_scheduler())

    encoder_dir = Path(image_encoder) if image_encoder is not None else None
    if encoder_dir is None and base_dir is not None:
        encoder_dir = base_dir / "image_encoder"
    if encoder_dir is not None and (encoder_dir / "config.json").is_file():
        parts["image_encoder"] = CLIPVisionModelWithProjection.from_pretrained(encoder_dir, **kwargs)
    elif need_image_encoder:
        missing.append(f"image encoder: {encoder_dir or '(none given: pass --image-encoder)'} (no config.json)")
    extractor_dir = _first_existing([
        feature_extractor, encoder_dir.parent / "feature_extractor" if encoder_dir else None,
        base_dir / "feature_extractor" if base_dir else None])
    if feature_extractor is not None and extractor_dir != Path(feature_extractor):
        missing.append(f"feature extractor: {feature_extractor} (not a folder)")
    elif extractor_dir is not None:
        parts["feature_extractor"] = clip_image_processor_class().from_pretrained(extractor_dir, **offline_kwargs())
    elif need_image_encoder:
        # CLIP's standard preprocessing (224 px, CLIP mean/std): what Moore-AnimateAnyone's pipeline uses too.
        parts["feature_extractor"] = clip_image_processor_class()()
    if missing:
        raise MissingWeightsError("missing base weights: " + "; ".join(missing))
    return parts


def load_pose_guider_init(controlnet, conditioning_embedding_channels: int | None = None, allow_pickle=False):
    """A Pose Guider initialised from a ControlNet-openpose folder or weights file; its output conv stays zero."""
    from ..pose_guider import PoseGuider
    from .common import load_exact

    path = Path(controlnet)
    if path.is_dir():
        files = [path / f"diffusion_pytorch_model{s}" for s in (".safetensors", ".bin")]
        found = next((f for f in files if f.is_file()), None)
        if found is None:
            raise MissingWeightsError(f"ControlNet folder {path}: no diffusion_pytorch_model.safetensors/.bin")
        path = found
    state = read_state_dict(path, "ControlNet weights", allow_pickle)
    embedding = {k[len(CONTROLNET_EMBEDDING):]: v for k, v in state.items() if k.startswith(CONTROLNET_EMBEDDING)}
    if "conv_in.weight" not in embedding or "conv_out.weight" not in embedding:
        raise ConversionError(f"ControlNet weights {path}: no {CONTROLNET_EMBEDDING}conv_in/conv_out keys")
    blocks = sorted({int(k.split(".")[1]) for k in embedding if k.startswith("blocks.")})
    channels = [embedding["conv_in.weight"].shape[0]] + [embedding[f"blocks.{i}.weight"].shape[0]
                                                          for i in blocks if i % 2 == 1]
    guider = PoseGuider(conditioning_channels=embedding["conv_in.weight"].shape[1],
                        block_out_channels=tuple(channels),
                        conditioning_embedding_channels=conditioning_embedding_channels
                        or embedding["conv_out.weight"].shape[0])
    state = {k: v for k, v in embedding.items() if not k.startswith("conv_out.")}
    state.update({k: v for k, v in guider.state_dict().items() if k.startswith("conv_out.")})  # zero output
    load_exact(guider, state, f"ControlNet weights {path}")
    return guider
