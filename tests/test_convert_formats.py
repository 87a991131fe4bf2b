"""Independent re-implementations of foreign formats for the converter tests (no tests in this file).

Written from the formats' own semantics (original AnimateDiff motion modules, Moore-AnimateAnyone's Pose Guider
and reference attention), with explicit math and none of marionet's or diffusers' motion code, so that a
converter mistake (a swapped name, a missed buffer, a different normalisation) shows up as a numeric difference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sinusoid(length: int, dim: int) -> torch.Tensor:
    """(1, length, dim): AnimateDiff's PositionalEncoding table (sin at even, cos at odd channels)."""
    table = torch.zeros(1, length, dim)
    for pos in range(length):
        for i in range(0, dim, 2):
            angle = pos / (10000.0 ** (i / dim))
            table[0, pos, i] = math.sin(angle)
            table[0, pos, i + 1] = math.cos(angle)
    return table


def motion_module_locations(channels, layers: int, mid: bool = True):
    """(prefix, channels) of every motion module of an AnimateDiff UNet with these block widths."""
    out = [(f"down_blocks.{i}.motion_modules.{j}.", c) for i, c in enumerate(channels) for j in range(layers)]
    if mid:
        out.append(("mid_block.motion_modules.0.", channels[-1]))
    out += [(f"up_blocks.{i}.motion_modules.{j}.", c) for i, c in enumerate(reversed(channels))
            for j in range(layers + 1)]
    return out


def original_motion_state(channels=(32, 64), layers: int = 1, max_len: int = 24, seed: int = 0) -> dict:
    """Random weights in mm_sd_v15_v2.ckpt naming: VanillaTemporalModule(temporal_transformer=...)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1):
        return torch.randn(*shape, generator=gen) * scale

    state = {}
    for prefix, c in motion_module_locations(channels, layers):
        t = prefix + "temporal_transformer."
        state[t + "norm.weight"], state[t + "norm.bias"] = 1 + rand(c), rand(c)
        state[t + "proj_in.weight"], state[t + "proj_in.bias"] = rand(c, c), rand(c)
        b = t + "transformer_blocks.0."
        for a in range(2):
            ab = b + f"attention_blocks.{a}."
            for name in ("to_q", "to_k", "to_v"):
                state[ab + name + ".weight"] = rand(c, c, scale=0.3)
            state[ab + "to_out.0.weight"], state[ab + "to_out.0.bias"] = rand(c, c), rand(c)
            state[ab + "pos_encoder.pe"] = sinusoid(max_len, c)
            state[b + f"norms.{a}.weight"], state[b + f"norms.{a}.bias"] = 1 + rand(c), rand(c)
        state[b + "ff.net.0.proj.weight"], state[b + "ff.net.0.proj.bias"] = rand(8 * c, c), rand(8 * c)
        state[b + "ff.net.2.weight"], state[b + "ff.net.2.bias"] = rand(c, 4 * c), rand(c)
        state[b + "ff_norm.weight"], state[b + "ff_norm.bias"] = 1 + rand(c), rand(c)
        state[t + "proj_out.weight"], state[t + "proj_out.bias"] = rand(c, c), rand(c)
    return state


def _attention(x, w, prefix, heads):
    """Multi-head self-attention with explicit softmax; x (N, L, C)."""
    n, length, c = x.shape
    split = lambda t: t.reshape(n, length, heads, c // heads).transpose(1, 2)  # noqa: E731
    q = split(x @ w[prefix + "to_q.weight"].T)
    k = split(x @ w[prefix + "to_k.weight"].T)
    v = split(x @ w[prefix + "to_v.weight"].T)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(n, length, c)
    return out @ w[prefix + "to_out.0.weight"].T + w[prefix + "to_out.0.bias"]


def original_temporal_module(w: dict, prefix: str, x: torch.Tensor, frames: int, heads: int,
                             groups: int = 32) -> torch.Tensor:
    """AnimateDiff's VanillaTemporalModule forward on (B*F, C, H, W) frames, batch-major: per-frame GroupNorm,
    temporal self-attention over frames with the sinusoidal table added to each attention's input, GEGLU FF."""
    t = prefix + "temporal_transformer."
    bf, c, h, wd = x.shape
    residual = x
    y = F.group_norm(x, groups, w[t + "norm.weight"], w[t + "norm.bias"], eps=1e-6)  # each (frame) row alone
    y = y.permute(0, 2, 3, 1).reshape(bf, h * wd, c) @ w[t + "proj_in.weight"].T + w[t + "proj_in.bias"]
    b = t + "transformer_blocks.0."
    for a in range(2):
        norm = F.layer_norm(y, (c,), w[b + f"norms.{a}.weight"], w[b + f"norms.{a}.bias"])
        seq = norm.reshape(bf // frames, frames, h * wd, c).permute(0, 2, 1, 3).reshape(-1, frames, c)
        seq = seq + w[b + f"attention_blocks.{a}.pos_encoder.pe"][:, :frames]
        out = _attention(seq, w, b + f"attention_blocks.{a}.", heads)
        y = y + out.reshape(bf // frames, h * wd, frames, c).permute(0, 2, 1, 3).reshape(bf, h * wd, c)
    norm = F.layer_norm(y, (c,), w[b + "ff_norm.weight"], w[b + "ff_norm.bias"])
    hidden, gate = (norm @ w[b + "ff.net.0.proj.weight"].T + w[b + "ff.net.0.proj.bias"]).chunk(2, dim=-1)
    y = y + (hidden * F.gelu(gate)) @ w[b + "ff.net.2.weight"].T + w[b + "ff.net.2.bias"]
    y = y @ w[t + "proj_out.weight"].T + w[t + "proj_out.bias"]
    return y.reshape(bf, h, wd, c).permute(0, 3, 1, 2) + residual


def replace_motion_modules(motion_unet, w: dict, heads: int, groups: int) -> list:
    """Forward hooks making each motion module of a UNetMotionModel return `original_temporal_module`'s output
    (so its own adapter weights play no part). Returns the hook handles."""
    handles = []
    for name, module in motion_unet.named_modules():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] == "motion_modules":
            def hook(mod, args, kwargs, output, prefix=name + "."):
                frames = kwargs.get("num_frames", args[4] if len(args) > 4 else None)
                return original_temporal_module(w, prefix, args[0], frames, heads, groups)
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    return handles


def moore_pose_guider(w: dict, pose: torch.Tensor) -> torch.Tensor:
    """Their PoseGuider on (N, 3, H, W): conv_in, then blocks (even: 3x3, odd: 3x3 stride 2), SiLU after each
    conv but conv_out."""
    x = F.silu(F.conv2d(pose, w["conv_in.weight"], w["conv_in.bias"], padding=1))
    i = 0
    while f"blocks.{i}.weight" in w:
        x = F.silu(F.conv2d(x, w[f"blocks.{i}.weight"], w[f"blocks.{i}.bias"], padding=1, stride=1 + i % 2))
        i += 1
    return F.conv2d(x, w["conv_out.weight"], w["conv_out.bias"], padding=1)


# ------------------------------------------------------------------------------ Moore-AnimateAnyone's attention
def _their_block_order(name: str):
    """Their ReferenceAttentionControl pairs writer and reader blocks after `sorted(blocks, key=-channels)` over a
    depth-first walk; both of their UNets register down_blocks, then up_blocks, then mid_block."""
    stage = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}[name.split(".")[0]]
    return stage, [int(p) for p in name.split(".") if p.isdigit()]


def spatial_blocks(unet):
    """(name, BasicTransformerBlock) of the spatial transformer blocks, in their walk order (motion modules out)."""
    from diffusers.models.attention import BasicTransformerBlock

    blocks = [(n, m) for n, m in unet.named_modules()
              if isinstance(m, BasicTransformerBlock) and "motion_modules" not in n]
    return sorted(blocks, key=lambda item: _their_block_order(item[0]))


class TheirWriter:
    """attn1 processor of their write mode: bank the block's norm1 output, then plain self-attention."""

    def __init__(self, bank: list):
        self.bank = bank

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        self.bank.append(hidden_states.clone())
        return explicit_attention(attn, hidden_states, hidden_states)


class TheirReader:
    """attn1 processor of their read mode: keys/values [own ; bank repeated per frame ('b t l c -> (b t) l c')];
    with guidance, the first half of the rows (unconditional) is recomputed as plain self-attention."""

    def __init__(self, bank: list, frames: int, guidance: bool):
        self.bank, self.frames, self.guidance = bank, frames, guidance

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        banked = [b.unsqueeze(1).repeat(1, self.frames, 1, 1).flatten(0, 1) for b in self.bank]
        out = explicit_attention(attn, hidden_states, torch.cat([hidden_states] + banked, dim=1))
        if self.guidance:
            half = hidden_states.shape[0] // 2
            out[:half] = explicit_attention(attn, hidden_states[:half], hidden_states[:half])
        return out


def explicit_attention(attn, x, context):
    n, lq, c = x.shape
    heads = attn.heads
    q = attn.to_q(x).reshape(n, lq, heads, -1).transpose(1, 2)
    k = attn.to_k(context).reshape(n, context.shape[1], heads, -1).transpose(1, 2)
    v = attn.to_v(context).reshape(n, context.shape[1], heads, -1).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(n, lq, -1)
    return attn.to_out[1](attn.to_out[0](out))


def wire_their_reference_attention(reference_unet, denoising_unet, frames: int, guidance: bool) -> None:
    """Install TheirWriter/TheirReader, pairing blocks the way their `update(writer)` does."""
    writers = sorted(spatial_blocks(reference_unet), key=lambda item: -item[1].norm1.normalized_shape[0])
    readers = sorted(spatial_blocks(denoising_unet), key=lambda item: -item[1].norm1.normalized_shape[0])
    assert len(writers) == len(readers)
    for (_, writer), (_, reader) in zip(writers, readers):
        bank = []
        writer.attn1.set_processor(TheirWriter(bank))
        reader.attn1.set_processor(TheirReader(bank, frames, guidance))


# ------------------------------------------------------------------------------ original SD (LDM) single files
_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _move(out: dict, source: dict, src_prefix: str, dst_prefix: str, renames: dict | None = None) -> None:
    for key, value in source.items():
        if key.startswith(src_prefix):
            rest = key[len(src_prefix):]
            head, _, tail = rest.partition(".")
            if renames and head in renames:
                rest = renames[head] + "." + tail
            out[dst_prefix + rest] = value.clone()


def ldm_unet_state(unet) -> dict:
    """A diffusers UNet2DConditionModel's weights under CompVis/LDM names (`model.diffusion_model.*`):
    input_blocks (conv_in, then per level [resnet, attention] x layers and a downsampler `op`), middle_block,
    output_blocks (per level [resnet, attention] x (layers + 1), the upsampler after the last), time_embed, out."""
    sd, cfg, out = unet.state_dict(), unet.config, {}
    layers, levels = cfg.layers_per_block, len(cfg.block_out_channels)
    p = "model.diffusion_model."
    _move(out, sd, "conv_in.", p + "input_blocks.0.0.")
    _move(out, sd, "time_embedding.linear_1.", p + "time_embed.0.")
    _move(out, sd, "time_embedding.linear_2.", p + "time_embed.2.")
    index = 1
    for level in range(levels):
        for j in range(layers):
            _move(out, sd, f"down_blocks.{level}.resnets.{j}.", p + f"input_blocks.{index}.0.", _LDM_RESNET)
            _move(out, sd, f"down_blocks.{level}.attentions.{j}.", p + f"input_blocks.{index}.1.")
            index += 1
        if level < levels - 1:
            _move(out, sd, f"down_blocks.{level}.downsamplers.0.conv.", p + f"input_blocks.{index}.0.op.")
            index += 1
    _move(out, sd, "mid_block.resnets.0.", p + "middle_block.0.", _LDM_RESNET)
    _move(out, sd, "mid_block.attentions.0.", p + "middle_block.1.")
    _move(out, sd, "mid_block.resnets.1.", p + "middle_block.2.", _LDM_RESNET)
    index = 0
    for level in range(levels):
        has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in sd)
        for j in range(layers + 1):
            _move(out, sd, f"up_blocks.{level}.resnets.{j}.", p + f"output_blocks.{index}.0.", _LDM_RESNET)
            _move(out, sd, f"up_blocks.{level}.attentions.{j}.", p + f"output_blocks.{index}.1.")
            if j == layers and level < levels - 1:
                slot = 2 if has_attention else 1
                _move(out, sd, f"up_blocks.{level}.upsamplers.0.conv.", p + f"output_blocks.{index}.{slot}.conv.")
            index += 1
    _move(out, sd, "conv_norm_out.", p + "out.0.")
    _move(out, sd, "conv_out.", p + "out.2.")
    return out


def ldm_vae_state(vae) -> dict:
    """An AutoencoderKL's weights under LDM names (`first_stage_model.*`): encoder.down.i.block.j /
    downsample, mid.block_1 / attn_1 (1x1 conv q, k, v, proj_out) / block_2, decoder.up numbered from the lowest
    resolution, nin_shortcut for conv_shortcut."""
    sd, out = vae.state_dict(), {}
    p = "first_stage_model."
    levels = len(vae.config.block_out_channels)
    resnet = {"conv_shortcut": "nin_shortcut"}
    for part in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            _move(out, sd, f"{part}.{name}.", p + f"{part}.{name}.")
        _move(out, sd, f"{part}.conv_norm_out.", p + f"{part}.norm_out.")
        _move(out, sd, f"{part}.mid_block.resnets.0.", p + f"{part}.mid.block_1.", resnet)
        _move(out, sd, f"{part}.mid_block.resnets.1.", p + f"{part}.mid.block_2.", resnet)
        attn = f"{part}.mid_block.attentions.0."
        for ours, theirs in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                             ("to_out.0", "proj_out")):
            for kind in ("weight", "bias"):
                value = sd[f"{attn}{ours}.{kind}"].clone()
                if kind == "weight" and ours != "group_norm":
                    value = value[:, :, None, None]  # LDM uses 1x1 convolutions
                out[p + f"{part}.mid.attn_1.{theirs}.{kind}"] = value
    for level in range(levels):
        _move(out, sd, f"encoder.down_blocks.{level}.resnets.", p + f"encoder.down.{level}.block.", None)
        _move(out, sd, f"encoder.down_blocks.{level}.downsamplers.0.conv.",
              p + f"encoder.down.{level}.downsample.conv.")
        up = levels - 1 - level
        _move(out, sd, f"decoder.up_blocks.{level}.resnets.", p + f"decoder.up.{up}.block.", None)
        _move(out, sd, f"decoder.up_blocks.{level}.upsamplers.0.conv.", p + f"decoder.up.{up}.upsample.conv.")
    out = {k.replace(".conv_shortcut.", ".nin_shortcut."): v for k, v in out.items()}
    for name in ("quant_conv", "post_quant_conv"):
        _move(out, sd, f"{name}.", p + f"{name}.")
    return out
