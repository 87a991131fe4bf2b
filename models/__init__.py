"""Models: ReferenceNet attention processors, Pose Guider, motion layers and the trainable `Animator`.

The names below are loaded on first use (PEP 562), so importing `marionet.models` for its command-line
registration (`marionet.models.cli`) costs nothing; `from marionet.models import Animator` works as usual.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "animator": ("Animator", "reference_tail_parameter_names", "clone_unet"),
    "attention": ("ReferenceAttnProcessor", "ReferenceComplete", "ReferenceState", "install_reference_processors",
                  "spatial_self_attention_names"),
    "export": ("export_model_folder", "write_model_index"),
    "loading": ("MissingWeightsError",),
    "motion": ("PerFrameGroupNorm", "split_motion_unet", "to_motion_unet", "use_per_frame_norm"),
    "pose_guider": ("PoseGuider",),
    "tiny": ("build_tiny_components", "save_base_folder", "training_scheduler", "write_tiny_model"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
