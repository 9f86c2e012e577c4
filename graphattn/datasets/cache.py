"""The user cache directory for generated or converted data (never the repository)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from torch_geometric.data import Data, InMemoryDataset

__all__ = ["CachedDataset", "cache_dir"]


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


class CachedDataset(InMemoryDataset):
    """A PyG ``InMemoryDataset`` generated from installed packages (no raw files to download)
    and cached under :func:`cache_dir` ``(*cache_subdir)`` unless ``root`` is given.
    Subclasses set ``cache_subdir``, validate their arguments before calling
    ``super().__init__`` and implement ``processed_file_names`` and ``process``."""

    cache_subdir: tuple[str, ...] = ()

    def __init__(self, root: str | None, transform: Callable | None,
                 pre_transform: Callable | None, pre_filter: Callable | None,
                 force_reload: bool) -> None:
        root = str(root) if root is not None else str(cache_dir(*self.cache_subdir))
        super().__init__(root, transform, pre_transform, pre_filter, log=False,
                         force_reload=force_reload)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self) -> list[str]:
        return []

    def save_items(self, items: Iterable[Data]) -> None:
        """Applies ``pre_filter`` / ``pre_transform`` and saves the processed file."""
        data_list = [self.pre_transform(d) if self.pre_transform else d for d in items
                     if self.pre_filter is None or self.pre_filter(d)]
        self.save(data_list, self.processed_paths[0])
