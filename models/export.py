"""The model folder: what training exports and what inference, compare and the converters load.

    MODEL_DIR/
      model_index.json            # PoseToVideoPipeline component list (diffusers pipeline format)
      reference_unet/ denoising_unet/ pose_guider/ [motion_adapter/]    # the Animator (stock: no reference_unet/)
      vae/ image_encoder/ feature_extractor/ scheduler/                 # frozen parts + the training schedule
      README.md                   # the model card: what produced the folder (models/card.py)

The scheduler saved here is the one training used, so inference samples with the schedule the model learned; the same
holds for the frame-noise correlation recorded in model_index.json.
"""
from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_folder, write_json
from .animator import Animator
from .card import model_folder_card

PIPELINE_CLASS = "PoseToVideoPipeline"


def _library_and_class(obj) -> list:
    if obj is None:
        return [None, None]
    module = type(obj).__module__.split(".")[0]
    name = type(obj).__name__
    if name.endswith("Pil") and module == "transformers":  # saved config reads back as the generic processor
        name = name[: -len("Pil")]
    return [module, name]


def write_model_index(out_dir, components: dict, config: dict | None = None) -> Path:
    """model_index.json: each component's library and class, plus plain pipeline config values (as SD1.5's
    `requires_safety_checker`), such as the frame-noise correlation the model was trained with."""
    import diffusers

    index = {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__}
    index.update({name: _library_and_class(obj) for name, obj in components.items()})
    index.update(config or {})
    return write_json(Path(out_dir) / "model_index.json", index, indent=2)


def export_model_folder(out_dir, animator: Animator, vae, image_encoder, feature_extractor, scheduler,
                        frame_noise_correlation: float = 0.0, card: dict | None = None) -> Path:
    """Write a complete model folder (safetensors), each part moved into place only when fully written.

    frame_noise_correlation: the share of noise variance common to all frames of a clip that a video model was
    trained with (0 = independent noise per frame, AnimateDiff's default); inference draws its noise the same way.
    card: what the model card says about how the folder was produced (see `models.card.model_folder_card`).
    """
    out = Path(out_dir)
    animator.save_pretrained(out)
    frozen = {"vae": vae, "image_encoder": image_encoder, "feature_extractor": feature_extractor,
              "scheduler": scheduler}
    for name, part in frozen.items():
        with atomic_folder(out / name) as tmp:
            part.save_pretrained(tmp)
    motion = None
    if animator.is_video_model:
        from diffusers import MotionAdapter

        motion = MotionAdapter.from_config(animator.motion_adapter_config)
    components = {"reference_unet": animator.reference_unet,
                  "denoising_unet": animator.reference_unet,  # a UNet2DConditionModel on disk either way
                  "pose_guider": animator.pose_guider, "motion_adapter": motion, **frozen}
    config = {"frame_noise_correlation": float(frame_noise_correlation)}
    if not animator.has_reference_net:
        config["reference_net"] = False  # a stock model: no reference_unet/ (see models.animator)
    write_model_index(out, components, config)
    model_folder_card(out, animator, scheduler, float(frame_noise_correlation), card)
    return out
