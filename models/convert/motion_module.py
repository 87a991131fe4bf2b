"""AnimateDiff motion modules: the original checkpoint format (mm_sd_v15_v2.ckpt, Moore-AnimateAnyone's
motion_module.pth) -> a diffusers `MotionAdapter`, and loading either format from disk.

Original names, inside each `{down_blocks.i|mid_block|up_blocks.i}.motion_modules.j.`:
    temporal_transformer.{norm,proj_in,proj_out}.*
    temporal_transformer.transformer_blocks.k.attention_blocks.a.{to_q,to_k,to_v,to_out.0}.*   (a = 0, 1)
    temporal_transformer.transformer_blocks.k.attention_blocks.a.pos_encoder.pe               (buffer)
    temporal_transformer.transformer_blocks.k.{norms.a, ff.net.*, ff_norm}.*
diffusers drops `temporal_transformer.`, names the attentions attn1/attn2, their LayerNorms norm1/norm2 and the
feed-forward LayerNorm norm3. Each original attention carries its own sinusoidal `pe` table; diffusers keeps one per
transformer block (`pos_embed.pe`, added before both attentions), so the two tables of a block must be equal; their
length gives `motion_max_seq_length`. The head count and GroupNorm group count do not show in any shape: they
default to AnimateDiff's SD1.5 values (8 heads, 32 groups) and can be overridden.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..loading import offline_kwargs, require_dir
from .common import ConversionError, empty_model, load_exact, read_state_dict

PE_KEY = re.compile(r"\.temporal_transformer\.(transformer_blocks\.\d+)\.attention_blocks\.\d+\.pos_encoder\.pe$")
ADAPTER_PREFIX = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.motion_modules\.\d+\.")
_BLOCK_RENAMES = [
    (re.compile(r"\.attention_blocks\.(\d+)\."), lambda m: f".attn{int(m.group(1)) + 1}."),
    (re.compile(r"\.norms\.(\d+)\."), lambda m: f".norm{int(m.group(1)) + 1}."),
    (re.compile(r"\.ff_norm\."), lambda m: ".norm3."),
]
DEFAULT_HEADS = 8
DEFAULT_NORM_GROUPS = 32


def is_original_format(state: dict) -> bool:
    return any(".temporal_transformer." in k for k in state)


def convert_original_motion_state(state: dict, what: str = "motion module") -> tuple[dict, dict]:
    """Rename an original-format motion-module state dict to diffusers' names.

    Returns (converted, info) with info["max_seq_length"] (from the pe buffers, None if absent) and
    info["ignored"] (keys outside motion modules, e.g. when given a whole UNet). Raises on a key it cannot place.
    """
    converted, ignored, lengths = {}, [], set()
    for key, value in state.items():
        if "motion_modules." not in key:
            ignored.append(key)
            continue
        if not ADAPTER_PREFIX.match(key) or ".temporal_transformer." not in key:
            raise ConversionError(f"{what}: unrecognised motion-module key {key}")
        if key.endswith(".pos_encoder.pe"):
            if value.ndim != 3 or value.shape[0] != 1:
                raise ConversionError(f"{what}: {key} has shape {tuple(value.shape)}, expected (1, length, dim)")
            # diffusers keeps one table per transformer block and adds it before both attentions, as the
            # original does with its two (identical) tables: keep the first, insist the others equal it.
            target = PE_KEY.sub(r".\1.pos_embed.pe", key)
            if target in converted:
                if not value.is_meta and not torch.equal(converted[target], value):  # meta: shapes only
                    raise ConversionError(f"{what}: {key} differs from the other positional table of its block; "
                                          "diffusers shares one table per block")
            else:
                converted[target] = value
            lengths.add(value.shape[1])
            continue
        new = key.replace(".temporal_transformer.", ".")
        for pattern, replace in _BLOCK_RENAMES:
            new = pattern.sub(replace, new)
        converted[new] = value
    if not converted:
        raise ConversionError(f"{what}: no motion-module weights found ({len(state)} keys, none under motion_modules)")
    if len(lengths) > 1:
        raise ConversionError(f"{what}: positional tables of different lengths {sorted(lengths)}")
    return converted, {"max_seq_length": lengths.pop() if lengths else None, "ignored": ignored}


def adapter_config_from_state(converted: dict, heads: int = DEFAULT_HEADS, norm_groups: int = DEFAULT_NORM_GROUPS,
                              max_seq_length: int | None = None) -> dict:
    """`MotionAdapter` arguments read off the shapes of a diffusers-named motion state dict."""
    def indices(pattern):
        return sorted({int(m.group(1)) for k in converted if (m := re.match(pattern, k))})

    down = indices(r"down_blocks\.(\d+)\.motion_modules\.")
    if not down:
        raise ConversionError("motion module: no down_blocks motion modules")
    channels = tuple(converted[f"down_blocks.{i}.motion_modules.0.proj_in.weight"].shape[1] for i in down)
    layers = len(indices(r"down_blocks\.0\.motion_modules\.(\d+)\."))
    transformer_layers = len(indices(r"down_blocks\.0\.motion_modules\.0\.transformer_blocks\.(\d+)\."))
    mid = any(k.startswith("mid_block.") for k in converted)
    config = dict(block_out_channels=channels, motion_layers_per_block=layers,
                  motion_transformer_layers_per_block=transformer_layers, motion_num_attention_heads=heads,
                  motion_norm_num_groups=norm_groups, motion_max_seq_length=max_seq_length or 32,
                  use_motion_mid_block=mid)
    if mid:
        config["motion_transformer_layers_per_mid_block"] = len(
            indices(r"mid_block\.motion_modules\.0\.transformer_blocks\.(\d+)\."))
    return config


def adapter_from_original(state: dict, what: str = "motion module", heads: int = DEFAULT_HEADS,
                          norm_groups: int = DEFAULT_NORM_GROUPS, max_seq_length: int | None = None):
    """A `MotionAdapter` holding an original-format state dict's weights; returns (adapter, info)."""
    from diffusers import MotionAdapter

    converted, info = convert_original_motion_state(state, what)
    length = max_seq_length or info["max_seq_length"]
    config = adapter_config_from_state(converted, heads, norm_groups, length)
    for key in [k for k in converted if k.endswith("proj_in.weight")]:
        inner = converted[key].shape[0]
        if inner % heads:
            raise ConversionError(f"{what}: {key} width {inner} is not divisible by {heads} heads")
    adapter = empty_model(lambda: MotionAdapter(**config))
    if info["max_seq_length"] and length != info["max_seq_length"]:
        # A different frame limit: use diffusers' table of the new length, which is only the same model if the
        # checkpoint's table is its prefix (true for AnimateDiff's sinusoid).
        from diffusers.models.embeddings import SinusoidalPositionalEmbedding

        for key in [k for k in converted if k.endswith(".pos_embed.pe")]:
            fresh = SinusoidalPositionalEmbedding(converted[key].shape[2], length).pe
            shortest = min(converted[key].shape[1], length)
            if not torch.allclose(converted[key][:, :shortest].float(), fresh[:, :shortest], atol=1e-4):
                raise ConversionError(f"{what}: {key} is not the standard sinusoidal table, so it cannot be "
                                      f"resized to {length} frames")
            converted[key] = fresh
    load_exact(adapter, converted, what)
    info["config"] = config
    return adapter, info


def load_motion_adapter(path, heads: int | None = None, norm_groups: int | None = None,
                        max_seq_length: int | None = None, allow_pickle: bool = False):
    """A `MotionAdapter` from a diffusers MotionAdapter folder or an original-format checkpoint file.

    Returns (adapter, info). A folder's own config wins; the overrides only apply to checkpoint files.
    """
    from diffusers import MotionAdapter

    path = Path(path)
    if path.is_dir():
        require_dir(path, "motion adapter folder")
        return MotionAdapter.from_pretrained(path, **offline_kwargs()), {"ignored": [], "config": None}
    state = read_state_dict(path, "motion module checkpoint", allow_pickle)
    if not is_original_format(state):
        raise ConversionError(f"motion module checkpoint {path}: no `temporal_transformer` keys; expected the "
                              "original AnimateDiff format (or give a diffusers MotionAdapter folder)")
    return adapter_from_original(state, f"motion module {path}", heads or DEFAULT_HEADS,
                                 norm_groups or DEFAULT_NORM_GROUPS, max_seq_length)
