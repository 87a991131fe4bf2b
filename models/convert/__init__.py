"""Converters for weights people already have: SD1.5 single files, AnimateDiff motion modules, ControlNet-openpose
(Pose Guider init) and the released Moore-AnimateAnyone checkpoints. Everything loads from local files only."""
from .base import load_base_components, load_pose_guider_init
from .common import ConversionError, read_state_dict
from .moore_aa import convert_moore_release
from .motion_module import convert_original_motion_state, load_motion_adapter
from .single_file import convert_single_file

__all__ = ["ConversionError", "read_state_dict", "load_base_components", "load_pose_guider_init",
           "convert_moore_release", "convert_original_motion_state", "load_motion_adapter", "convert_single_file"]
