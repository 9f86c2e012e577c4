"""A code-search retrieval set generated from the docstrings of installed numpy, scipy and
scikit-learn (real text, BSD-licensed, no download).

Each public callable of the listed modules gives one query and one document (in the style of
CodeSearchNet): the **query** is its docstring's summary paragraph, the **document** the rest
of the docstring (parameters, notes, examples) with the summary removed. For ufuncs, whose
docstring starts with the signature line, the signature is skipped. Objects reachable under
several names count once; queries or documents that repeat are dropped with all their
copies, so every query has exactly one relevant document.

The set depends on the installed library versions, so it is cached per version triple under
the user cache directory (``$GRAPHATTN_CACHE``, else ``$XDG_CACHE_HOME/graphattn``, else
``~/.cache/graphattn``); the cache file records the versions and module list.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
from dataclasses import dataclass

from .cache import cache_dir

__all__ = ["MODULES", "RetrievalSet", "cache_dir", "harvest_docstrings", "load_docstring_set"]

MODULES = ("numpy", "numpy.linalg", "numpy.fft", "numpy.random", "scipy.linalg", "scipy.signal",
           "scipy.stats", "scipy.optimize", "scipy.sparse.csgraph", "sklearn.metrics",
           "sklearn.preprocessing")

_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")


@dataclass
class RetrievalSet:
    """``queries[i]`` is answered by ``docs[i]`` (and only by it); ``names[i]`` is the
    object's qualified name; ``versions`` the library versions it was generated from."""

    queries: list[str]
    docs: list[str]
    names: list[str]
    versions: dict[str, str]

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, n: int, seed: int = 0) -> RetrievalSet:
        """A deterministic random subset of ``n`` query/document pairs."""
        import random

        idx = sorted(random.Random(seed).sample(range(len(self)), min(n, len(self))))
        return RetrievalSet([self.queries[i] for i in idx], [self.docs[i] for i in idx],
                            [self.names[i] for i in idx], self.versions)


def _split(doc: str) -> tuple[str, str] | None:
    parts = doc.strip().split("\n\n", 1)
    if len(parts) == 2 and _SIGNATURE.match(parts[0].strip().splitlines()[0]):
        parts = parts[1].strip().split("\n\n", 1)
    if len(parts) != 2:
        return None
    return " ".join(parts[0].split()), parts[1].strip()


def harvest_docstrings(modules: tuple[str, ...] = MODULES, min_query_chars: int = 15,
                       min_doc_chars: int = 200) -> RetrievalSet:
    """Generates the set from the installed modules (see the module docstring)."""
    seen_obj: set[int] = set()
    rows: list[tuple[str, str, str]] = []
    versions = {}
    for mod_name in modules:
        mod = importlib.import_module(mod_name)
        top = mod_name.split(".")[0]
        versions[top] = importlib.import_module(top).__version__
        for name in sorted(dir(mod)):
            if name.startswith("_"):
                continue
            obj = getattr(mod, name, None)
            if not callable(obj) or id(obj) in seen_obj:
                continue
            seen_obj.add(id(obj))
            split = _split(inspect.getdoc(obj) or "")
            if split is None:
                continue
            q, d = split
            if len(q) >= min_query_chars and len(d) >= min_doc_chars:
                rows.append((q, d, f"{mod_name}.{name}"))
    q_count: dict[str, int] = {}
    d_count: dict[str, int] = {}
    for q, d, _ in rows:
        q_count[q] = q_count.get(q, 0) + 1
        d_count[d] = d_count.get(d, 0) + 1
    rows = [r for r in rows if q_count[r[0]] == 1 and d_count[r[1]] == 1]
    return RetrievalSet([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                        versions)


def load_docstring_set(modules: tuple[str, ...] = MODULES, refresh: bool = False) -> RetrievalSet:
    """The set for the installed versions, from the cache or generated (then cached)."""
    versions = {m: importlib.import_module(m).__version__ for m in ("numpy", "scipy", "sklearn")}
    key = hashlib.sha1(json.dumps([versions, list(modules)]).encode()).hexdigest()[:12]
    path = cache_dir() / f"docstrings-{key}.json"
    if path.exists() and not refresh:
        raw = json.loads(path.read_text())
        return RetrievalSet(raw["queries"], raw["docs"], raw["names"], raw["versions"])
    rs = harvest_docstrings(modules)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"versions": rs.versions, "modules": list(modules),
                               "queries": rs.queries, "docs": rs.docs, "names": rs.names}))
    tmp.replace(path)
    return rs
