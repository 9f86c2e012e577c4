"""Named sections of BENCHMARKS.md, each written by its own benchmark script.

A section is the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; a script
replaces its own section (or appends it) and leaves the others as they are.
"""

from __future__ import annotations

import re
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(path: Path, name: str, text: str) -> None:
    """Writes ``text`` (which starts and ends with the markers of ``name``) into ``path``."""
    begin, end = markers(name)
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + text + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + text + "\n"
    path.write_text(new)


def sections(text: str) -> list[str]:
    """Every marked section of ``text``, markers included, in order."""
    pattern = r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->"
    return [m.group(0) for m in re.finditer(pattern, text, flags=re.S)]
