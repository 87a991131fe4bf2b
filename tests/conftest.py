"""Shared fixtures: tiny components built from config (never downloaded), one CPU thread per test worker."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# pytest-xdist runs two workers on the 2-core machines: one thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_parts():
    from marionet.models import build_tiny_components

    return build_tiny_components(seed=0, with_motion=True)


def make_animator(parts, with_motion: bool = False, seed: int = 0):
    """A fresh Animator from the tiny set (both UNets start from the same base weights, as in stage 1)."""
    import copy

    from marionet.models import Animator

    guider = copy.deepcopy(parts["pose_guider"])
    adapter = copy.deepcopy(parts["motion_adapter"]) if with_motion else None
    torch.manual_seed(seed)
    return Animator.from_base_unet(copy.deepcopy(parts["unet"]), guider, adapter)


@pytest.fixture
def animator(tiny_parts):
    return make_animator(tiny_parts)


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give zero-initialised layers (Pose Guider output, motion-module outputs) random weights for tests."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.abs().sum() == 0:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
