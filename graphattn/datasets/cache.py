"""The user cache directory for generated or converted data (never the repository)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """``$GRAPHATTN_CACHE``, else ``$XDG_CACHE_HOME/graphattn``, else ``~/.cache/graphattn``,
    joined with ``parts`` and created on demand."""
    root = os.environ.get("GRAPHATTN_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "graphattn"
    path = path.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
