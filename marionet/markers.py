"""Generated sections of the docs: text between `<!-- PREFIX:NAME -->` and `<!-- /PREFIX:NAME -->` markers.

The benchmarks (`marionet bench memory`, `marionet bench speed`) and the demo write their tables into README.md and
docs/benchmarks.md through `replace_marked`, so that every figure the docs quote comes from a run's output.
"""
from __future__ import annotations

import re
from pathlib import Path

from .atomic import write_text


def replace_marked(files, sections: dict[str, str], prefix: str) -> list[str]:
    """In each existing file, replace every `<!-- prefix:NAME -->` ... `<!-- /prefix:NAME -->` section whose NAME
    is in `sections` by that text (written atomically); returns the files that changed."""
    changed = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            continue
        text = original = path.read_text()
        for key, body in sections.items():
            text = re.sub(rf"(<!-- {prefix}:{re.escape(key)} -->\n)(?:.*?\n)?(<!-- /{prefix}:{re.escape(key)} -->)",
                          lambda m, b=body: m.group(1) + b.rstrip("\n") + "\n" + m.group(2), text, flags=re.S)
        if text != original:
            write_text(path, text)
            changed.append(str(path))
    return changed
