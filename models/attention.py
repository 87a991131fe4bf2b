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

The bank holds one row per reference (B_ref, L, C): one for a rendered video however many guidance rows and videos
it has, one per sample in training. The UNet call's rows split into `state.samples` samples of F frames each
(batch-major, as `UNetMotionModel` and frame-folded image batches lay them out); sample s reads bank row s % B_ref,
so guidance rows and videos share the bank without copies of it.

Reference work happens once per bank, not per frame or step. The reference tokens' keys/values are projected once
per layer and reused by every frame, window and step while the bank stays (`ReferenceState.projected`, no-grad
only). Inference attends over own tokens and reference tokens as two SDPA calls merged with their log-sum-exps
(exact; the reference call takes all F frames of a sample as one query sequence, so nothing is repeated F times).
Training (gradients need the concatenated form), masks and the xformers / sliced / dispatcher kernels concatenate
[own ; reference] keys/values per row instead, still from the once-projected reference keys/values.

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
    bank: layer name -> banked tokens (B_ref, L, C).
    samples: how many samples the reading UNet call's rows split into (rows = samples x frames); sample s reads
        bank row s % B_ref. None: one sample per bank row.
    dropped: optional tuple of `samples` Python bools — samples that see no reference tokens (classifier-free
        guidance, reference dropout). Python values, so the processors decide without a device sync per layer.
    temperature: softmax temperature for swap mode: logits are divided by it (T < 1 sharpens, T > 1 flattens).
    active_layers: layer names where read/swap applies; None means all. Other layers do plain self-attention.
    stop_after: layer name whose write ends the forward pass by raising `ReferenceComplete`.
    projected: layer name -> (banked tokens, keys, values): the bank's projections, reused while that bank stays.
    """

    mode: str = "off"
    bank: dict = field(default_factory=dict)
    samples: int | None = None
    dropped: tuple | None = None
    temperature: float = 1.0
    active_layers: set | None = None
    stop_after: str | None = None
    projected: dict = field(default_factory=dict)

    def clear(self) -> None:
        self.bank, self.projected = {}, {}
        self.samples = self.dropped = None


@dataclass(frozen=True)
class _Plan:
    """How one read/swap call's rows meet the bank: F frames per sample, which samples read which bank rows."""

    samples: int
    frames: int
    kept: tuple  # samples that read the reference
    bank_rows: tuple  # the bank row each kept sample reads

    @property
    def all_kept(self) -> bool:
        return len(self.kept) == self.samples

    def rows(self, kept: bool) -> list[int]:
        """Call rows (sample-major) of the kept samples, or of the dropped ones."""
        chosen = set(self.kept)
        return [s * self.frames + f for s in range(self.samples) if (s in chosen) == kept for f in range(self.frames)]


def _plan(name: str, state: ReferenceState, rows: int, bank_rows: int) -> _Plan:
    samples = state.samples or bank_rows
    if rows % samples or samples % bank_rows:
        raise ValueError(f"{name}: {rows} query rows do not split into {samples} samples reading {bank_rows} "
                         "bank rows")
    dropped = state.dropped
    if dropped is not None and len(dropped) != samples:
        raise ValueError(f"{name}: dropped mask has {len(dropped)} rows for {samples} samples")
    kept = tuple(s for s in range(samples) if dropped is None or not dropped[s])
    return _Plan(samples, rows // samples, kept, tuple(s % bank_rows for s in kept))


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


class LogSumExpUnavailable(RuntimeError):
    """No attention kernel on this device returns log-sum-exps; the caller concatenates instead."""


def _lse_attention(query, key, value, scale):
    """(B, H, N, D) attention that also returns the log-sum-exp of each query's logits: (out, lse (B, H, N) fp32).

    The fused kernels (CPU flash attention; CUDA flash or memory-efficient attention) return it at no extra cost
    and never store the attention matrix.
    """
    aten = torch.ops.aten
    device = query.device.type
    try:
        if device in ("cpu", "meta"):
            out, lse = aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, False,
                                                                         attn_mask=None, scale=scale)[:2]
        elif device == "cuda":
            out, lse = _cuda_lse_attention(query, key, value, scale)
        else:
            raise LogSumExpUnavailable(f"no log-sum-exp attention kernel on {device}")
    except RuntimeError as error:  # an unsupported shape, dtype or build
        raise LogSumExpUnavailable(str(error)) from error
    return out, lse[..., :query.shape[2]].float()


_FLASH_UNAVAILABLE: set = set()  # (device index, dtype) where the flash kernel refused (e.g. pre-Ampere GPUs)


def _cuda_lse_attention(query, key, value, scale):
    """CUDA: flash attention for half precision where it runs, else memory-efficient attention (any dtype)."""
    aten = torch.ops.aten
    where = (query.device.index, query.dtype)
    if query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256 and where not in _FLASH_UNAVAILABLE:
        try:
            return aten._scaled_dot_product_flash_attention(query, key, value, 0.0, False, False, scale=scale)[:2]
        except RuntimeError:
            _FLASH_UNAVAILABLE.add(where)
    return aten._scaled_dot_product_efficient_attention(query, key, value, None, True, 0.0, False, scale=scale)[:2]


def merge_attention(out_a, lse_a, out_b, lse_b) -> torch.Tensor:
    """Attention over keys A and B together, from attention over each: weights exp(lse) normalised (exact)."""
    weight_a = torch.sigmoid(lse_a - lse_b).unsqueeze(-1)
    return (out_b.float() + weight_a * (out_a.float() - out_b.float())).to(out_a.dtype)


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """(B, N, heads*D) -> (B, heads, N, D)."""
    return x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)


def _project(attn: Attention, queries_from: torch.Tensor | None, keys_from: torch.Tensor | None):
    """Query and key/value projections in heads layout (with the layer's q/k norms); None where not asked."""
    query = key = value = None
    if queries_from is not None:
        query = _heads(attn, attn.to_q(queries_from))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
    if keys_from is not None:
        key, value = _heads(attn, attn.to_k(keys_from)), _heads(attn, attn.to_v(keys_from))
        if attn.norm_k is not None:
            key = attn.norm_k(key)
    return query, key, value


def _output(attn: Attention, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) attention output -> the layer's output (B, N, C): output projection, residual, rescale."""
    out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    out = attn.to_out[1](attn.to_out[0](out.to(residual.dtype)))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def attend(attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor,
           attention_mask: torch.Tensor | None = None, scale: float | None = None, kernel: str = "sdpa",
           slice_size=None, backend=None) -> torch.Tensor:
    """Multi-head attention of `attn` with queries from `hidden_states` and keys/values from `context`.

    Mirrors diffusers' `AttnProcessor2_0` for 3-D inputs (the only kind transformer blocks pass), with an optional
    softmax scale and a choice of kernel (see the module docstring).
    """
    query, key, value = _project(attn, hidden_states, context)
    mask = _heads_mask(attn, attention_mask, context.shape[1], hidden_states.shape[0])
    return _output(attn, _sdpa(query, key, value, mask, scale, kernel, slice_size, backend), hidden_states)


def _heads_mask(attn: Attention, attention_mask, keys: int, batch: int):
    if attention_mask is None:
        return None
    return attn.prepare_attention_mask(attention_mask, keys, batch).view(batch, attn.heads, -1, keys)


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
            state.projected.pop(self.name, None)
            if state.stop_after == self.name:
                raise ReferenceComplete
            return self._attend(attn, hidden_states, hidden_states, attention_mask)

        bank = state.bank.get(self.name)
        active = state.active_layers is None or self.name in state.active_layers
        if mode not in ("read", "swap") or bank is None or not active:
            return self._attend(attn, hidden_states, hidden_states, attention_mask)
        plan = _plan(self.name, state, hidden_states.shape[0], bank.shape[0])
        if not plan.kept:
            return self._attend(attn, hidden_states, hidden_states, attention_mask)
        ref_key, ref_value = self._reference_projection(attn, bank, hidden_states.dtype)
        scale = attn.scale / state.temperature if mode == "swap" else None
        grad = torch.is_grad_enabled() and (hidden_states.requires_grad or attn.to_q.weight.requires_grad)
        if attention_mask is None and self.kernel == "sdpa" and self._attention_backend is None and not grad:
            try:
                return self._shared(attn, hidden_states, plan, ref_key, ref_value, mode == "read", scale)
            except LogSumExpUnavailable:
                pass  # the concatenated form below is as exact, with per-frame copies of the reference keys
        return self._concatenated(attn, hidden_states, attention_mask, plan, ref_key, ref_value,
                                  mode == "read", scale)

    def _reference_projection(self, attn, bank, dtype):
        """The bank's keys/values at this layer (B_ref, H, L, D): projected once per bank, reused without grad."""
        cached = self.state.projected.get(self.name)
        if cached is not None and cached[0] is bank and cached[1].dtype == dtype:
            return cached[1], cached[2]
        _, key, value = _project(attn, None, bank.to(dtype))
        if not torch.is_grad_enabled():
            self.state.projected[self.name] = (bank, key, value)
        return key, value

    @staticmethod
    def _reference_rows(tensor: torch.Tensor, bank_rows: tuple) -> torch.Tensor:
        """Bank-row tensors for each reading sample: a broadcast view when they all read one row."""
        if len(set(bank_rows)) == 1:
            return tensor[bank_rows[0]:bank_rows[0] + 1].expand(len(bank_rows), *tensor.shape[1:])
        return tensor[list(bank_rows)]

    def _shared(self, attn, hidden_states, plan: _Plan, ref_key, ref_value, read: bool, scale):
        """Two attention calls, no copies of the reference: own tokens per frame, and the reference tokens once per
        sample with all its frames' queries as one sequence; merged by their log-sum-exps (read) or alone (swap)."""
        query, key, value = _project(attn, hidden_states, hidden_states if read else None)
        rows, heads, tokens, dim = query.shape
        s, f = plan.samples, plan.frames
        kept = list(plan.kept)
        # (S*F, H, N, D) -> the kept samples' queries as (S_kept, H, F*N, D)
        grouped = query.view(s, f, heads, tokens, dim)
        grouped = (grouped if plan.all_kept else grouped[kept]).transpose(1, 2).reshape(len(kept), heads,
                                                                                      f * tokens, dim)
        ref_key = self._reference_rows(ref_key, plan.bank_rows)
        ref_value = self._reference_rows(ref_value, plan.bank_rows)
        if read:
            own, own_lse = _lse_attention(query, key, value, None)
            ref, ref_lse = _lse_attention(grouped, ref_key, ref_value, None)
            ref = ref.view(len(kept), heads, f, tokens, dim).transpose(1, 2).reshape(-1, heads, tokens, dim)
            ref_lse = ref_lse.view(len(kept), heads, f, tokens).transpose(1, 2).reshape(-1, heads, tokens)
            if plan.all_kept:
                out = merge_attention(own, own_lse, ref, ref_lse)
            else:
                index = torch.tensor(plan.rows(kept=True), device=query.device)
                out = own.index_copy(0, index, merge_attention(own.index_select(0, index),
                                                               own_lse.index_select(0, index), ref, ref_lse))
            return _output(attn, out, hidden_states)
        ref = F.scaled_dot_product_attention(grouped, ref_key, ref_value, scale=scale)
        ref = ref.view(len(kept), heads, f, tokens, dim).transpose(1, 2).reshape(-1, heads, tokens, dim)
        if plan.all_kept:
            return _output(attn, ref, hidden_states)
        out = torch.empty_like(query)
        out[torch.tensor(plan.rows(kept=True), device=query.device)] = ref.to(out.dtype)
        gone = torch.tensor(plan.rows(kept=False), device=query.device)
        _, own_key, own_value = _project(attn, None, hidden_states[gone])
        out[gone] = F.scaled_dot_product_attention(query[gone], own_key, own_value).to(out.dtype)
        return _output(attn, out, hidden_states)

    def _concatenated(self, attn, hidden_states, attention_mask, plan: _Plan, ref_key, ref_value, read: bool,
                      scale):
        """Per row, keys/values [own ; reference] (read) or the reference's (swap), with any kernel, mask or grad.
        Reading and dropped samples go in two dense calls (one per group), which keeps the fused kernels."""
        rows = hidden_states.shape[0]
        query, key, value = _project(attn, hidden_states, hidden_states)
        per_row = tuple(b for b in plan.bank_rows for _ in range(plan.frames))
        ref_key, ref_value = self._reference_rows(ref_key, per_row), self._reference_rows(ref_value, per_row)
        kept = slice(None) if plan.all_kept else torch.tensor(plan.rows(kept=True), device=query.device)
        if read:
            ref_key, ref_value = torch.cat([key[kept], ref_key], dim=2), torch.cat([value[kept], ref_value], dim=2)
        mask = _heads_mask(attn, attention_mask, ref_key.shape[2], rows)
        out_kept = self._kernel(query[kept], ref_key, ref_value, None if mask is None else mask[kept], scale)
        if plan.all_kept:
            return _output(attn, out_kept, hidden_states)
        gone = torch.tensor(plan.rows(kept=False), device=query.device)
        mask = _heads_mask(attn, attention_mask, key.shape[2], rows)
        out = torch.empty_like(query)
        out[kept] = out_kept.to(out.dtype)
        out[gone] = self._kernel(query[gone], key[gone], value[gone], None if mask is None else mask[gone],
                                 None).to(out.dtype)
        return _output(attn, out, hidden_states)

    def _kernel(self, query, key, value, mask, scale):
        return _sdpa(query, key, value, mask, scale, self.kernel, self.slice_size, self._attention_backend)


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
