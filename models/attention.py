"""Reference attention as diffusers attention processors.

One processor class serves three jobs on the spatial self-attention (`attn1`) layers:

- **write** (ReferenceNet): bank the layer's input hidden states (the transformer block's norm1 output), then
  compute ordinary self-attention;
- **read** (denoising UNet): queries from the layer's own tokens, keys/values from `[own tokens ; banked tokens]`
  through this layer's own `to_k`/`to_v`;
- **swap** (zero-shot cross-image attention): keys/values from the banked tokens only, with an optional softmax
  temperature.

Processors of one model (or of the ReferenceNet/denoising pair) share a `ReferenceState`: the bank, which rows are
unconditional, the temperature and which layers take part. Sharing a state object instead of passing
`cross_attention_kwargs` keeps ControlNets and motion modules (which never receive those kwargs) out of the picture,
and avoids diffusers' per-call warnings about unknown kwargs.

The bank holds one row per sample (B, L, C); the layer sees B*F rows for video (batch-major, as
`UNetMotionModel` and frame-folded image batches lay them out), so the bank is repeated over frames.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

try:  # optional: only used on CUDA tensors
    import xformers.ops as _xops
except Exception:  # noqa: BLE001 - any import problem means "not available"
    _xops = None

MODES = ("off", "write", "read", "swap")


class ReferenceComplete(Exception):
    """Raised after the last banked layer when the rest of the ReferenceNet's forward is not needed."""


@dataclass
class ReferenceState:
    """State shared by the reference processors of one or two UNets.

    mode: used by processors installed without a fixed role ("off" | "write" | "read" | "swap").
    bank: layer name -> banked tokens (B, L, C).
    dropped: optional bool (B,) — rows that see no reference tokens (classifier-free guidance, reference dropout).
    temperature: softmax temperature for swap mode: logits are divided by it (T < 1 sharpens, T > 1 flattens).
    active_layers: layer names where read/swap applies; None means all. Other layers do plain self-attention.
    stop_after: layer name whose write ends the forward pass by raising `ReferenceComplete`.
    """

    mode: str = "off"
    bank: dict = field(default_factory=dict)
    dropped: torch.Tensor | None = None
    temperature: float = 1.0
    active_layers: set | None = None
    stop_after: str | None = None

    def clear(self) -> None:
        self.bank = {}
        self.dropped = None

    def repeat_bank(self, times: int) -> None:
        """Tile the bank along the batch, e.g. twice for a [unconditional ; conditional] guidance batch."""
        self.bank = {name: torch.cat([tokens] * times) for name, tokens in self.bank.items()}


def attend(attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor,
           attention_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Multi-head attention of `attn` with queries from `hidden_states` and keys/values from `context`.

    Mirrors diffusers' `AttnProcessor2_0` for 3-D inputs (the only kind transformer blocks pass), with an optional
    softmax scale. SDPA keeps the flash / memory-efficient kernels on GPU; xformers is used on CUDA when present.
    """
    residual = hidden_states
    batch, _, _ = hidden_states.shape
    query = attn.to_q(hidden_states)
    key = attn.to_k(context)
    value = attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads

    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

    if _xops is not None and query.is_cuda and attention_mask is None and attn.norm_q is None:
        shape = (batch, -1, attn.heads, head_dim)
        out = _xops.memory_efficient_attention(
            query.view(shape), key.view(shape), value.view(shape), scale=scale if scale is not None else attn.scale
        )
        out = out.reshape(batch, -1, attn.heads * head_dim)
    else:
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
    out = attn.to_out[1](attn.to_out[0](out.to(query.dtype)))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class ReferenceAttnProcessor:
    """Self-attention processor that writes to, reads from or swaps with a shared reference bank.

    `role` fixes the behaviour ("write" on a ReferenceNet, "read" on a denoising UNet) so that gradient
    checkpointing's recomputation during backward behaves exactly as the forward did; `role=None` follows
    `state.mode`, which the zero-shot pipeline switches between its source and target passes.
    """

    def __init__(self, state: ReferenceState, name: str, role: str | None = None):
        if role is not None and role not in MODES:
            raise ValueError(f"role must be one of {MODES}, got {role!r}")
        self.state = state
        self.name = name
        self.role = role

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        state = self.state
        mode = self.role or state.mode
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError(f"{self.name}: reference attention expects (B, N, C) tokens from a transformer block")
        if encoder_hidden_states is not None:  # only_cross_attention blocks: not a self-attention layer
            return attend(attn, hidden_states, encoder_hidden_states, attention_mask)

        if mode == "write":
            state.bank[self.name] = hidden_states
            if state.stop_after == self.name:
                raise ReferenceComplete
            return attend(attn, hidden_states, hidden_states, attention_mask)

        bank = state.bank.get(self.name)
        active = state.active_layers is None or self.name in state.active_layers
        if mode not in ("read", "swap") or bank is None or not active:
            return attend(attn, hidden_states, hidden_states, attention_mask)

        rows = hidden_states.shape[0]
        if rows % bank.shape[0]:
            raise ValueError(f"{self.name}: {rows} query rows do not split into frames of {bank.shape[0]} bank rows")
        frames = rows // bank.shape[0]
        reference = bank.to(hidden_states.dtype)
        if frames > 1:
            reference = reference.repeat_interleave(frames, dim=0)
        if mode == "read":
            context_of = lambda h, r: torch.cat([h, r], dim=1)  # noqa: E731
            scale = None
        else:
            context_of = lambda h, r: r  # noqa: E731
            scale = attn.scale / state.temperature

        dropped = state.dropped
        if dropped is not None:
            dropped = dropped.to(hidden_states.device).bool()
            if dropped.shape[0] != bank.shape[0]:
                raise ValueError(f"{self.name}: dropped mask has {dropped.shape[0]} rows, bank {bank.shape[0]}")
            dropped = dropped.repeat_interleave(frames)
        if dropped is None or not bool(dropped.any()):
            return attend(attn, hidden_states, context_of(hidden_states, reference), attention_mask, scale)
        if bool(dropped.all()):
            return attend(attn, hidden_states, hidden_states, attention_mask)
        # Mixed batch: two dense attention calls (one per group) keep the fused kernels, unlike a padding mask.
        kept = ~dropped
        out = torch.empty_like(hidden_states)
        mask_kept = attention_mask[kept] if attention_mask is not None else None
        mask_dropped = attention_mask[dropped] if attention_mask is not None else None
        h_kept = hidden_states[kept]
        out[kept] = attend(attn, h_kept, context_of(h_kept, reference[kept]), mask_kept, scale).to(out.dtype)
        h_dropped = hidden_states[dropped]
        out[dropped] = attend(attn, h_dropped, h_dropped, mask_dropped).to(out.dtype)
        return out


def spatial_self_attention_names(unet: torch.nn.Module) -> list[str]:
    """Processor names of the spatial self-attention layers (`attn1`, outside motion modules), in forward order."""
    names = [n for n in unet.attn_processors if n.endswith("attn1.processor") and "motion_modules" not in n]
    return sorted(names, key=_forward_order_key)


def _forward_order_key(name: str):
    # down_blocks run before mid_block, which runs before up_blocks; indices order within each.
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[name.split(".")[0]]
    return (stage, [int(x) for x in re.findall(r"\.(\d+)(?=\.|$)", name)])


def install_reference_processors(unet: torch.nn.Module, state: ReferenceState, role: str | None = None,
                                 layers: Iterable[str] | None = None) -> list[str]:
    """Put reference processors on the spatial self-attention layers of `unet`; keep every other processor.

    Temporal (motion-module) attention and cross-attention keep what they have (e.g. IP-Adapter processors).
    Returns the names of the layers that got a reference processor.
    """
    chosen = set(layers) if layers is not None else set(spatial_self_attention_names(unet))
    processors = {}
    for name, processor in unet.attn_processors.items():
        if name in chosen:
            processors[name] = ReferenceAttnProcessor(state, name, role)
        else:
            processors[name] = processor
    unet.set_attn_processor(processors)
    return sorted(chosen, key=_forward_order_key)
