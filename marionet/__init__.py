"""marionet: trainable Animate Anyone-style character animation on Hugging Face diffusers.

The one import namespace of the distribution. Subpackages:

    marionet.models      ReferenceNet attention processors, Pose Guider, motion layers, the trainable `Animator`
    marionet.data        synthetic puppets, video IO, pose extraction, datasets and WebDataset shards
    marionet.train       the training core behind stage 1 and stage 2 (Accelerate)
    marionet.inference   the pipelines (pose-to-video, zero-shot), comparison and the demo
    marionet.configs     the shipped YAML configs (package data)

Importing `marionet` is cheap (no torch): the command line answers `--help` without loading any model library.
"""
from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.2.0"

# In a source checkout the subpackages are the repository's top-level folders (models/ data/ train/ inference/
# configs/, the product's layout) beside this one; an installed wheel places them inside it. Let the import system
# find them in either place, so `python train/stage1.py` and `PYTHONPATH=. python -m ...` work from a clone with or
# without an install.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).resolve().parent / "models").is_dir() and (_checkout / "models" / "__init__.py").is_file() \
        and (_checkout / "pyproject.toml").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - the package's own __path__
del _checkout, _Path
