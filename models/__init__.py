"""Models: ReferenceNet attention processors, Pose Guider, motion layers and the trainable `Animator`."""
from .animator import Animator, reference_tail_parameter_names
from .attention import (ReferenceAttnProcessor, ReferenceComplete, ReferenceState, install_reference_processors,
                        spatial_self_attention_names)
from .export import export_model_folder, write_model_index
from .loading import MissingWeightsError
from .motion import PerFrameGroupNorm, split_motion_unet, to_motion_unet, use_per_frame_norm
from .pose_guider import PoseGuider
from .tiny import build_tiny_components, save_base_folder, training_scheduler, write_tiny_model

__all__ = [
    "Animator", "PoseGuider", "ReferenceAttnProcessor", "ReferenceComplete", "ReferenceState",
    "install_reference_processors", "spatial_self_attention_names", "reference_tail_parameter_names",
    "MissingWeightsError", "export_model_folder", "write_model_index", "PerFrameGroupNorm", "split_motion_unet", "to_motion_unet", "use_per_frame_norm",
    "build_tiny_components", "save_base_folder", "training_scheduler", "write_tiny_model",
]
