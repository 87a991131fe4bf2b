"""Step caching for marionet's UNets: reuse the deep features between adjacent denoising steps (DeepCache-style).

Adjacent denoising steps change a UNet's deep, low-resolution features little; its shallow, full-resolution path
carries the detail that does change. On a *full* step every layer runs and the cache keeps the input of the shallow
up-path (the output of the last deep layer); on the *cached* steps in between only the shallow path runs — conv_in
(with the Pose Guider's features), the down-path layers that feed the first `skips` skip connections, and the up-path
layers that consume them — on top of the kept features. Training-free, exact when `interval` is 1 (every step full).

`skips` picks the branch: the skip connections are numbered from the outside in (0: conv_in's output, 1: the first
down layer's, ...). With `skips=k` the layers producing and consuming skips 0..k-1 run on cached steps; SD1.5's
layout gives these shares of a denoising pass (counted, `marionet bench speed`): k=1 only the last up layer, k=2 the
first down layer and the last two up layers, k=3 the whole outermost down and up blocks.

Everything that happens in those shallow layers happens as on a full step: the reference attention reads the bank
(the ReferenceNet itself runs once per video anyway), motion modules mix frames, the zero-shot pipeline's source
pass writes and its target pass swaps. A ControlNet gets the same treatment (its deep residuals feed only deep
layers, which cached steps skip). Layers that cached steps skip return zero-cost placeholders (broadcast zeros of
the recorded shapes) to the UNet's own forward, whose code is unchanged: the caching is diffusers `ModelHook`s on the
layers, and `disable` removes them.

The kept features are per UNet call: the caller names each call with `step_cache.call(step, key)` (the context
window and guidance group, the zero-shot pass), so windows, guidance rows and passes never mix.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch.utils import _pytree as pytree

HOOK_NAME = "marionet_step_cache"


@dataclass(frozen=True)
class _Spec:
    shape: tuple
    dtype: torch.dtype
    device: torch.device

    def placeholder(self) -> torch.Tensor:
        return torch.zeros((), dtype=self.dtype, device=self.device).expand(self.shape)


def _layers(block) -> list[list[torch.nn.Module]]:
    """A diffusers down/up block's layers in execution order: [resnet, attention?, motion module?] each."""
    parts = [getattr(block, name, None) for name in ("resnets", "attentions", "motion_modules")]
    return [[part[i] for part in parts if part is not None and len(part) > i] for i in range(len(block.resnets))]


def _down_path(model) -> list[tuple[list[torch.nn.Module], bool]]:
    """(modules, produces a skip connection) in execution order along the down path."""
    path = []
    for block in model.down_blocks:
        path += [(layer, True) for layer in _layers(block)]
        path += [([sampler], True) for sampler in (block.downsamplers or [])]
    return path


def _up_path(model) -> list[tuple[list[torch.nn.Module], bool]]:
    """(modules, consumes a skip connection) in execution order along the up path."""
    path = []
    for block in model.up_blocks:
        path += [(layer, True) for layer in _layers(block)]
        path += [([sampler], False) for sampler in (block.upsamplers or [])]
    return path


def partition(model, skips: int) -> tuple[list[torch.nn.Module], torch.nn.Module | None]:
    """-> (modules that cached steps skip, the module whose output the cache keeps (None for a ControlNet)).

    Skip connection 0 is conv_in's output; with `skips` = k, the down-path layers producing skips 1..k-1 and the
    up-path layers consuming skips k-1..0 (and everything after them) stay live.
    """
    down = _down_path(model)
    total = 1 + sum(produces for _, produces in down)
    if not 1 <= skips <= total:
        raise ValueError(f"skips must be between 1 and {total} for this {type(model).__name__}, got {skips}")
    deep, produced = [], 1
    for modules, produces in down:
        if produced >= skips:
            deep += modules
        produced += produces
    deep.append(model.mid_block)
    if not hasattr(model, "up_blocks"):  # a ControlNet: no up path
        return deep, None
    up = _up_path(model)
    consumers = [i for i, (_, consumes) in enumerate(up) if consumes]
    first_live = consumers[len(consumers) - skips]  # the layer consuming skip k-1
    chain = deep + [module for modules, _ in up[:first_live] for module in modules]
    return chain[:-1], chain[-1]


class _LayerHook(ModelHook):
    """Runs the layer on full steps (keeping its output or output shapes); on cached steps returns them instead."""

    def __init__(self, cache: "StepCache", index: int, keeps_output: bool):
        super().__init__()
        self.cache, self.index, self.keeps_output = cache, index, keeps_output

    def new_forward(self, module, *args, **kwargs):
        cache = self.cache
        slot = (cache.key, self.index)
        if cache.phase == "reuse":
            kept = cache.kept[slot]
            return kept if self.keeps_output else pytree.tree_map(
                lambda x: x.placeholder() if isinstance(x, _Spec) else x, kept)
        out = self.fn_ref.original_forward(*args, **kwargs)
        if cache.phase == "record":
            cache.kept[slot] = pytree.tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, out) \
                if self.keeps_output else pytree.tree_map(
                    lambda x: _Spec(tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else x, out)
        return out


class StepCache:
    """Deep-feature reuse on UNets (and ControlNets) between full steps; see the module docstring.

    interval: a full step every `interval` steps (step 0 always); 1 = every step full (no caching).
    skips: how many skip connections (from the outside in) the cached steps recompute.
    """

    def __init__(self, interval: int = 3, skips: int = 2):
        if int(interval) != interval or interval < 1:
            raise ValueError(f"step cache interval must be a whole number >= 1, got {interval}")
        if int(skips) != skips or skips < 1:
            raise ValueError(f"step cache skips must be a whole number >= 1, got {skips}")
        self.interval, self.skips = int(interval), int(skips)
        self.models: list[torch.nn.Module] = []
        self.kept: dict = {}
        self.recorded: set = set()  # call keys with kept features
        self.phase, self.key = "off", None
        self.full_calls = self.cached_calls = 0
        self._layers = 0

    def attach(self, *models) -> "StepCache":
        models = [m for m in models if m is not None and m not in self.models]
        parts = [partition(model, self.skips) for model in models]  # all checked before any hook is registered
        for model, (deep, boundary) in zip(models, parts):
            for module in deep + ([boundary] if boundary is not None else []):
                registry = HookRegistry.check_if_exists_or_initialize(module)
                registry.register_hook(_LayerHook(self, self._layers, module is boundary), HOOK_NAME)
                self._layers += 1
            self.models.append(model)
        return self

    def detach(self) -> None:
        for model in self.models:
            for module in model.modules():
                registry = getattr(module, "_diffusers_hook", None)
                if registry is not None and registry.get_hook(HOOK_NAME) is not None:
                    registry.remove_hook(HOOK_NAME, recurse=False)
        self.models = []
        self.reset()

    def reset(self) -> None:
        """Forget the kept features (at the start and end of each video)."""
        self.kept, self.recorded = {}, set()
        self.phase, self.key = "off", None

    def is_full(self, step: int) -> bool:
        return step % self.interval == 0

    @contextlib.contextmanager
    def call(self, step: int, key):
        """Around one UNet (and ControlNet) call of denoising step `step`; `key` names the call within the step."""
        full = self.is_full(step) or key not in self.recorded
        self.phase, self.key = ("record" if full else "reuse"), key
        try:
            yield full
        finally:
            self.phase, self.key = "off", None
        if full:
            self.recorded.add(key)
            self.full_calls += 1
        else:
            self.cached_calls += 1
