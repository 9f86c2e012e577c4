"""Registry of the examples that ``graphattn demo`` runs.

Each example registers a function ``run(full: bool, runs_dir: Path, progress: bool,
resume: bool = False) -> list[dict]`` returning rows of the summary table (one per model it
trained); ``resume=True`` continues interrupted runs from their checkpoints, exactly. Each demo
size runs in 1-4 minutes on 2 cores; ``full=True`` runs the full-size experiment.
"""

from __future__ import annotations

from collections.abc import Callable

Demo = Callable[..., list[dict]]
REGISTRY: dict[str, Demo] = {}


def register(name: str) -> Callable[[Demo], Demo]:
    """Decorator adding an example to ``graphattn demo``."""

    def wrap(fn: Demo) -> Demo:
        if name in REGISTRY:
            raise ValueError(f"demo {name!r} is already registered")
        REGISTRY[name] = fn
        return fn

    return wrap


def load_all() -> dict[str, Demo]:
    """Imports every built-in example so that it registers itself."""
    from . import (  # noqa: F401
        digits,
        intrusion,
        molecules,
        pockets,
        recall,
        recsys,
        retrieval,
        tkg,
        ugid,
    )

    return REGISTRY
