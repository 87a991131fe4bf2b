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

Attention kernels. The processors compute attention with PyTorch SDPA by default; the pipeline switches that
would otherwise replace them choose their kernel instead (`set_reference_kernel`): xformers
(`enable_xformers_memory_efficient_attention`), sliced SDPA (`enable_attention_slicing`) or any backend of
diffusers' attention dispatcher (`ModelMixin.set_attention_backend`, which sets `_attention_backend` on every
processor that has one). A UNet with reference processors refuses `set_attn_processor` calls that would remove
them (`ReferenceProcessorGuard`): without them the ReferenceNet's features never reach the denoising UNet.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

MODES = ("off", "write", "read", "swap")
KERNELS = ("sdpa", "xformers", "sliced")


class ReferenceComplete(Exception):
    """Raised after the last banked layer when the rest of the ReferenceNet's forward is not needed."""


class ReferenceAttentionRemoved(RuntimeError):
    """A UNet that should read or write the reference bank has lost its reference processors."""


@dataclass
class ReferenceState:
    """State shared by the reference processors of one or two UNets.

    mode: used by processors installed without a fixed role ("off" | "write" | "read" | "swap").
    bank: layer name -> banked tokens (B, L, C).
    dropped: optional tuple of B Python bools — rows that see no reference tokens (classifier-free guidance,
        reference dropout). Python values, so the processors decide without a device sync per layer.
    temperature: softmax temperature for swap mode: logits are divided by it (T < 1 sharpens, T > 1 flattens).
    active_layers: layer names where read/swap applies; None means all. Other layers do plain self-attention.
    stop_after: layer name whose write ends the forward pass by raising `ReferenceComplete`.
    """

    mode: str = "off"
    bank: dict = field(default_factory=dict)
    dropped: tuple | None = None
    temperature: float = 1.0
    active_layers: set | None = None
    stop_after: str | None = None

    def clear(self) -> None:
        self.bank = {}
        self.dropped = None

    def repeat_bank(self, times: int) -> None:
        """Tile the bank along the batch, e.g. twice for a [unconditional ; conditional] guidance batch."""
        self.bank = {name: torch.cat([tokens] * times) for name, tokens in self.bank.items()}


# ------------------------------------------------------------------------------------------------- kernels
def _xformers():
    try:
        import xformers.ops as xops
    except Exception as error:  # noqa: BLE001 - any import problem means "not available"
        raise ModuleNotFoundError(f"the xformers attention kernel needs the xformers package ({error})") from None
    return xops


def _sdpa(query, key, value, mask, scale, kernel: str, slice_size, backend):
    """Attention of (B, H, N, D) queries over (B, H, M, D) keys/values with the chosen kernel -> (B, H, N, D)."""
    if backend is not None:  # diffusers' attention dispatcher takes (B, N, H, D)
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        out = dispatch_attention_fn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                    attn_mask=mask, scale=scale, backend=backend)
        return out.transpose(1, 2)
    if kernel == "xformers" and mask is None:
        out = _xformers().memory_efficient_attention(query.transpose(1, 2), key.transpose(1, 2),
                                                     value.transpose(1, 2), scale=scale)
        return out.transpose(1, 2)
    if kernel == "sliced":
        heads = query.shape[1]
        step = max(1, heads // 2 if slice_size in (None, "auto") else 1 if slice_size == "max" else int(slice_size))
        parts = [F.scaled_dot_product_attention(query[:, h:h + step], key[:, h:h + step], value[:, h:h + step],
                                                attn_mask=None if mask is None else mask[:, h:h + step]
                                                if mask.shape[1] > 1 else mask, scale=scale)
                 for h in range(0, heads, step)]
        return torch.cat(parts, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


def attend(attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor,
           attention_mask: torch.Tensor | None = None, scale: float | None = None, kernel: str = "sdpa",
           slice_size=None, backend=None) -> torch.Tensor:
    """Multi-head attention of `attn` with queries from `hidden_states` and keys/values from `context`.

    Mirrors diffusers' `AttnProcessor2_0` for 3-D inputs (the only kind transformer blocks pass), with an optional
    softmax scale and a choice of kernel (see the module docstring).
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

    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = _sdpa(query, key, value, attention_mask, scale, kernel, slice_size, backend)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
    out = attn.to_out[1](attn.to_out[0](out.to(query.dtype)))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


# ------------------------------------------------------------------------------------------------- processor
class ReferenceAttnProcessor:
    """Self-attention processor that writes to, reads from or swaps with a shared reference bank.

    `role` fixes the behaviour ("write" on a ReferenceNet, "read" on a denoising UNet) so that gradient
    checkpointing's recomputation during backward behaves exactly as the forward did; `role=None` follows
    `state.mode`, which the zero-shot pipeline switches between its source and target passes.
    `kernel` / `slice_size` pick the attention kernel; `_attention_backend` (set by diffusers'
    `set_attention_backend`) routes it through diffusers' attention dispatcher instead.
    """

    def __init__(self, state: ReferenceState, name: str, role: str | None = None, kernel: str = "sdpa",
                 slice_size=None):
        if role is not None and role not in MODES:
            raise ValueError(f"role must be one of {MODES}, got {role!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.state = state
        self.name = name
        self.role = role
        self.kernel = kernel
        self.slice_size = slice_size
        self._attention_backend = None
        self._parallel_config = None

    def _attend(self, attn, hidden_states, context, mask, scale=None):
        return attend(attn, hidden_states, context, mask, scale, self.kernel, self.slice_size,
                      self._attention_backend)

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        state = self.state
        mode = self.role or state.mode
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError(f"{self.name}: reference attention expects (B, N, C) tokens from a transformer block")
        if encoder_hidden_states is not None:  # only_cross_attention blocks: not a self-attention layer
            return self._attend(attn, hidden_states, encoder_hidden_states, attention_mask)

        if mode == "write":
            state.bank[self.name] = hidden_states
            if state.stop_after == self.name:
                raise ReferenceComplete
            return self._attend(attn, hidden_states, hidden_states, attention_mask)

        bank = state.bank.get(self.name)
        active = state.active_layers is None or self.name in state.active_layers
        if mode not in ("read", "swap") or bank is None or not active:
            return self._attend(attn, hidden_states, hidden_states, attention_mask)

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
        if dropped is not None and len(dropped) != bank.shape[0]:
            raise ValueError(f"{self.name}: dropped mask has {len(dropped)} rows, bank {bank.shape[0]}")
        if dropped is None or not any(dropped):
            return self._attend(attn, hidden_states, context_of(hidden_states, reference), attention_mask, scale)
        if all(dropped):
            return self._attend(attn, hidden_states, hidden_states, attention_mask)
        # Mixed batch: two dense attention calls (one per group) keep the fused kernels, unlike a padding mask.
        rows = [flag for flag in dropped for _ in range(frames)]
        kept = torch.tensor([i for i, flag in enumerate(rows) if not flag], device=hidden_states.device)
        gone = torch.tensor([i for i, flag in enumerate(rows) if flag], device=hidden_states.device)
        out = torch.empty_like(hidden_states)
        mask_kept = attention_mask.index_select(0, kept) if attention_mask is not None else None
        mask_gone = attention_mask.index_select(0, gone) if attention_mask is not None else None
        h_kept = hidden_states.index_select(0, kept)
        out.index_copy_(0, kept, self._attend(attn, h_kept, context_of(h_kept, reference.index_select(0, kept)),
                                              mask_kept, scale).to(out.dtype))
        h_gone = hidden_states.index_select(0, gone)
        out.index_copy_(0, gone, self._attend(attn, h_gone, h_gone, mask_gone).to(out.dtype))
        return out


# ------------------------------------------------------------------------------------------------- installing
def spatial_self_attention_names(unet: torch.nn.Module) -> list[str]:
    """Processor names of the spatial self-attention layers (`attn1`, outside motion modules), in forward order."""
    names = [n for n in unet.attn_processors if n.endswith("attn1.processor") and "motion_modules" not in n]
    return sorted(names, key=_forward_order_key)


def _forward_order_key(name: str):
    # down_blocks run before mid_block, which runs before up_blocks; indices order within each.
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[name.split(".")[0]]
    return (stage, [int(x) for x in re.findall(r"\.(\d+)(?=\.|$)", name)])


def reference_layers(unet: torch.nn.Module) -> dict[str, ReferenceAttnProcessor]:
    """The layers of `unet` that hold a reference processor, name -> processor."""
    return {name: proc for name, proc in unet.attn_processors.items() if isinstance(proc, ReferenceAttnProcessor)}


REMOVAL_HELP = ("marionet's reference attention processors carry the ReferenceNet's features into the denoising "
                "UNet (and the source's into zero-shot renders); without them the model renders without its "
                "reference. For another attention kernel use the pipeline's "
                "enable_xformers_memory_efficient_attention() or enable_attention_slicing(), or "
                "unet.set_attention_backend(...): those keep them. To replace other layers, pass a dict that keeps "
                "the ReferenceAttnProcessor entries; to remove them on purpose call "
                "marionet.models.attention.remove_reference_processors(unet) first.")


class ReferenceProcessorGuard:
    """Stands in for `unet.set_attn_processor` on a UNet with reference processors: refuses replacements of them.

    diffusers' own calls that go through `set_attn_processor` (`set_default_attn_processor`, adapter loaders,
    user code) would otherwise silently drop the reference attention, and the next render would fail far from the
    cause. Calls that keep every reference processor (a dict with the same ones) go through unchanged.
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet

    def __call__(self, processor, *args, **kwargs):
        kept = reference_layers(self.unet)
        if isinstance(processor, dict):
            lost = [name for name in kept if not isinstance(processor.get(name), ReferenceAttnProcessor)]
        else:
            lost = [] if isinstance(processor, ReferenceAttnProcessor) else list(kept)
        if lost:
            what = type(processor.get(lost[0]) if isinstance(processor, dict) else processor).__name__
            raise ValueError(f"set_attn_processor refused: {what} would replace the reference attention on "
                             f"{len(lost)} layer(s) of this {type(self.unet).__name__} (e.g. {lost[0]}). "
                             + REMOVAL_HELP)
        return type(self.unet).set_attn_processor(self.unet, processor, *args, **kwargs)


def _set_processors(unet: torch.nn.Module, processors: dict) -> None:
    """`set_attn_processor` of the UNet's class, past any guard (the guard's own caller)."""
    type(unet).set_attn_processor(unet, processors)


def install_reference_processors(unet: torch.nn.Module, state: ReferenceState, role: str | None = None,
                                 layers: Iterable[str] | None = None, kernel: str = "sdpa",
                                 slice_size=None) -> list[str]:
    """Put reference processors on the spatial self-attention layers of `unet`; keep every other processor.

    Temporal (motion-module) attention and cross-attention keep what they have (e.g. IP-Adapter processors).
    Installs a `ReferenceProcessorGuard` as the UNet's `set_attn_processor`. Returns the names of the layers that
    got a reference processor.
    """
    chosen = set(layers) if layers is not None else set(spatial_self_attention_names(unet))
    processors = {}
    for name, processor in unet.attn_processors.items():
        processors[name] = ReferenceAttnProcessor(state, name, role, kernel, slice_size) if name in chosen \
            else processor
    _set_processors(unet, processors)
    unet.set_attn_processor = ReferenceProcessorGuard(unet)  # an instance attribute shadowing the class's method
    return sorted(chosen, key=_forward_order_key)


def remove_reference_processors(unet: torch.nn.Module) -> list[str]:
    """Give the reference layers diffusers' default SDPA processor again and lift the guard; returns their names."""
    removed = list(reference_layers(unet))
    _set_processors(unet, {name: AttnProcessor2_0() if name in removed else processor
                           for name, processor in unet.attn_processors.items()})
    unet.__dict__.pop("set_attn_processor", None)
    return removed


def set_reference_kernel(unet: torch.nn.Module, kernel: str = "sdpa", slice_size=None) -> int:
    """Choose the attention kernel of every reference processor of `unet`; returns how many there are."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "xformers":
        _xformers()
    found = reference_layers(unet)
    for processor in found.values():
        processor.kernel, processor.slice_size = kernel, slice_size
    return len(found)


def check_reference_processors(unet: torch.nn.Module, expected: Iterable[str], what: str) -> None:
    """Raise `ReferenceAttentionRemoved` naming the cause when any of the `expected` layers lost its processor."""
    current = reference_layers(unet)
    lost = [name for name in expected if name not in current]
    if lost:
        found = type(unet.attn_processors[lost[0]]).__name__
        raise ReferenceAttentionRemoved(
            f"the {what}'s reference attention was replaced by {found} on {len(lost)} layer(s) (e.g. {lost[0]}), "
            "probably by enable_xformers_memory_efficient_attention(), enable_attention_slicing(), "
            "fuse_qkv_projections() or set_attn_processor() called on the UNet itself rather than on the pipeline. "
            + REMOVAL_HELP)
