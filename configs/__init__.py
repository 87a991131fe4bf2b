"""The shipped configs (YAML package data): training stages, the tiny CPU configs and accelerate launch files.

They are read through `importlib.resources`, so every command finds them in a wheel installed anywhere. A config
argument is a file path first; if no such file exists, a shipped name such as `tiny/stage1.yaml` (or the same name
under `configs/`, as written in a clone) is looked up here. `marionet config list|show|copy` exposes them.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED = "marionet.configs:"  # the label `locate` gives a shipped config


def names() -> list[str]:
    """Every shipped config, as 'stage1.yaml', 'tiny/stage1.yaml', 'accelerate/single_gpu.yaml', ..."""
    found = []

    def walk(node, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir() and not child.name.startswith(("_", ".")):
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml"):
                found.append(prefix + child.name)

    walk(resources.files(__name__), "")
    return found


def shipped_name(name) -> str | None:
    """The shipped config `name` refers to ('configs/tiny/stage1.yaml', 'tiny/stage1.yaml', 'tiny/stage1'), or None."""
    text = str(name).replace("\\", "/")
    for prefix in ("./", "configs/"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    candidates = (text, f"{text}.yaml")
    known = names()
    return next((c for c in candidates if c in known), None)


def read_text(name) -> str:
    """The text of a shipped config (see `shipped_name`); FileNotFoundError lists what is shipped."""
    found = shipped_name(name)
    if found is None:
        raise FileNotFoundError(f"no shipped config {name!r}; shipped: {', '.join(names())}")
    return resources.files(__name__).joinpath(found).read_text()


def locate(name_or_path) -> tuple[str, str]:
    """(label, YAML text) of a config given as a path, or else as a shipped name (see the module docstring)."""
    path = Path(name_or_path)
    if path.is_file():
        return str(path), path.read_text()
    found = shipped_name(name_or_path)
    if found is None:
        raise FileNotFoundError(f"config file not found: {path} (and no shipped config of that name; shipped: "
                                f"{', '.join(names())})")
    return f"{SHIPPED}{found}", read_text(found)
