r"""Temporal knowledge graphs: the RE-GCN / DyMRL folder format and a synthetic generator.

**Folder format** (RE-GCN, DyMRL ``*-IMG-TXT``): whitespace-separated files

* ``train.txt``, ``valid.txt``, ``test.txt``: quadruples ``s r o t`` (integer ids; an
  optional fifth column is ignored), timestamps increasing across the splits;
* ``stat.txt``: ``num_entities num_relations [...]``;
* ``entity2id.txt``, ``relation2id.txt`` (optional): ``name<TAB>id``;
* ``e-w-graph.txt`` + ``word2id.txt`` (optional): the static entity–word graph, lines
  ``entity static_relation word``;
* image / text feature matrices (optional): ``.npy`` files of shape ``[num_entities, D]``
  named ``image_features.npy`` / ``text_features.npy`` (also ``img_feat.npy`` /
  ``txt_feat.npy``, ``*img*.npy`` / ``*txt*.npy``).

Malformed lines raise ``ValueError`` naming the file and line.

**Synthetic generator** (:func:`synthetic_tkg`): every real fact of the Nations KG
(``datasets/nations``) becomes an event stream whose per-step logit is
``base + fact bias + 3.0·[same fact at t−1] + 1.5·[reverse fact at t−1] + 0.8·[any event
between the pair at t−1]`` — the recurrence, reciprocity and contagion patterns that
RE-NET/RE-GCN/CyGNet exploit on ICEWS (``../shared/DATA.md`` section 3b).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

_IMAGE_NAMES = ("image_features.npy", "img_feat.npy")
_TEXT_NAMES = ("text_features.npy", "txt_feat.npy")


@dataclass
class TemporalKG:
    """A temporal KG split chronologically.

    Attributes:
        num_entities, num_relations: Sizes (relations without inverses).
        train, valid, test: ``[M, 4]`` int64 quadruples ``(s, r, o, t)``.
        entity_names, relation_names: Names by id (may be empty).
        word_edges: ``[K, 3]`` int64 ``(entity, static_relation, word)`` or ``None``.
        num_words, num_static_relations: Sizes of the entity–word graph.
        image_features, text_features: ``[num_entities, D]`` float32 or ``None``.
        notes: What was missing (printed by the examples).
    """

    num_entities: int
    num_relations: int
    train: Tensor
    valid: Tensor
    test: Tensor
    entity_names: list[str] = field(default_factory=list)
    relation_names: list[str] = field(default_factory=list)
    word_edges: Tensor | None = None
    num_words: int = 0
    num_static_relations: int = 0
    image_features: Tensor | None = None
    text_features: Tensor | None = None
    notes: list[str] = field(default_factory=list)

    def all_quadruples(self) -> Tensor:
        return torch.cat([self.train, self.valid, self.test])

    def timestamps(self, split: str) -> list[int]:
        """Sorted distinct timestamps of ``"train"``, ``"valid"`` or ``"test"``."""
        return sorted(set(getattr(self, split)[:, 3].tolist()))

    def snapshots(self) -> dict[int, Tensor]:
        """All quadruples grouped by timestamp: ``{t: [M_t, 3] (s, r, o)}``."""
        q = self.all_quadruples()
        order = torch.argsort(q[:, 3], stable=True)
        q = q[order]
        times, counts = torch.unique_consecutive(q[:, 3], return_counts=True)
        return {int(t): chunk[:, :3] for t, chunk in zip(times, q.split(counts.tolist()))}


def _read_ints(path: Path, min_cols: int, max_cols: int | None = None) -> np.ndarray:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < min_cols or (max_cols is not None and len(parts) > max_cols):
                raise ValueError(f"{path}:{n}: expected {min_cols}"
                                 f"{'' if max_cols == min_cols else '+'} integer columns, "
                                 f"got {len(parts)}: {line.strip()!r}")
            try:
                rows.append([int(p) for p in parts[:min_cols]])
            except ValueError:
                raise ValueError(f"{path}:{n}: non-integer value in {line.strip()!r}") from None
    return np.asarray(rows, dtype=np.int64).reshape(-1, min_cols)


def _read_names(path: Path) -> list[str]:
    if not path.exists():
        return []
    pairs = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            name, _, idx = line.rstrip("\n").rpartition("\t")
            if not name:
                parts = line.split()
                name, idx = " ".join(parts[:-1]), parts[-1] if parts else ""
            try:
                pairs.append((int(idx), name))
            except ValueError:
                msg = f"{path}:{n}: expected 'name<TAB>id', got {line.strip()!r}"
                raise ValueError(msg) from None
    names = [""] * (max((i for i, _ in pairs), default=-1) + 1)
    for i, name in pairs:
        names[i] = name
    return names


def _find_npy(folder: Path, names: tuple[str, ...], pattern: str) -> Path | None:
    for n in names:
        if (folder / n).exists():
            return folder / n
    hits = sorted(folder.glob(pattern))
    return hits[0] if hits else None


def load_tkg(folder: str | Path) -> TemporalKG:
    """Reads a temporal-KG folder (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"temporal KG folder {folder} does not exist")
    stat = _read_ints(folder / "stat.txt", 2)
    if stat.shape[0] != 1:
        raise ValueError(f"{folder / 'stat.txt'}: expected one line 'num_entities num_relations'")
    n_ent, n_rel = int(stat[0, 0]), int(stat[0, 1])
    splits = {}
    for split in ("train", "valid", "test"):
        q = _read_ints(folder / f"{split}.txt", 4, 5)
        for col, name, hi in ((0, "subject", n_ent), (2, "object", n_ent), (1, "relation", n_rel)):
            bad = (q[:, col] < 0) | (q[:, col] >= hi)
            if bad.any():
                line = int(np.nonzero(bad)[0][0]) + 1
                raise ValueError(f"{folder / (split + '.txt')}:{line}: {name} id {q[line - 1, col]}"
                                 f" outside [0, {hi}) (stat.txt)")
        splits[split] = torch.from_numpy(q)
    kg = TemporalKG(n_ent, n_rel, splits["train"], splits["valid"], splits["test"],
                    _read_names(folder / "entity2id.txt"), _read_names(folder / "relation2id.txt"))
    ew = folder / "e-w-graph.txt"
    if ew.exists():
        e = _read_ints(ew, 3)
        if e.size and ((e[:, 0] < 0) | (e[:, 0] >= n_ent)).any():
            raise ValueError(f"{ew}: entity ids outside [0, {n_ent})")
        words = _read_names(folder / "word2id.txt")
        kg.word_edges = torch.from_numpy(e)
        kg.num_words = max(len(words), int(e[:, 2].max()) + 1 if e.size else 0)
        kg.num_static_relations = int(e[:, 1].max()) + 1 if e.size else 0
    else:
        kg.notes.append("no e-w-graph.txt: the Euclidean branch starts from the entity table")
    for attr, names, pattern, label in (("image_features", _IMAGE_NAMES, "*img*.npy", "image"),
                                        ("text_features", _TEXT_NAMES, "*txt*.npy", "text")):
        path = _find_npy(folder, names, pattern)
        if path is None:
            kg.notes.append(f"no {label} feature matrix (.npy): running without the {label} "
                            "modality")
            continue
        arr = np.load(path)
        if arr.ndim != 2 or arr.shape[0] != n_ent:
            raise ValueError(f"{path}: expected shape [{n_ent}, D], got {arr.shape}")
        setattr(kg, attr, torch.from_numpy(arr.astype(np.float32)))
    return kg


def nations_facts() -> tuple[np.ndarray, list[str], list[str]]:
    """The 1,992 real Nations facts ``[F, 3]`` with entity and relation names."""
    path = Path(__file__).resolve().parents[2] / "datasets" / "nations" / "triples.tsv"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the Nations facts ship in the source "
                                "checkout under datasets/nations/ (install with pip install -e .)")
    facts = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
    ents = sorted({h for h, _, _ in facts} | {t for _, _, t in facts})
    rels = sorted({r for _, r, _ in facts})
    E, R = {e: i for i, e in enumerate(ents)}, {r: i for i, r in enumerate(rels)}
    return np.array([(E[h], R[r], E[t]) for h, r, t in facts], dtype=np.int64), ents, rels


def synthetic_tkg(steps: int = 100, seed: int = 0, base: float = -4.0, a_self: float = 3.0,
                  a_rev: float = 1.5, a_pair: float = 0.8,
                  split: tuple[float, float] = (0.8, 0.1)) -> TemporalKG:
    """Event streams over the real Nations facts (see the module docstring), split
    chronologically (80/10/10 of the steps by default)."""
    F, ents, rels = nations_facts()
    rng = np.random.default_rng(seed)
    idx = {tuple(f): i for i, f in enumerate(F.tolist())}
    rev = np.array([idx.get((t, r, h), -1) for h, r, t in F.tolist()])
    pair = np.minimum(F[:, 0], F[:, 2]) * len(ents) + np.maximum(F[:, 0], F[:, 2])
    upair, pinv = np.unique(pair, return_inverse=True)
    bias = base + rng.normal(0, 0.7, len(F))
    prev = np.zeros(len(F), bool)
    quads = []
    for ts in range(steps):
        pair_act = np.bincount(pinv, weights=prev, minlength=len(upair))[pinv] > 0
        logit = (bias + a_self * prev + a_rev * np.where(rev >= 0, prev[np.maximum(rev, 0)], 0)
                 + a_pair * pair_act)
        cur = rng.random(len(F)) < 1 / (1 + np.exp(-logit))
        quads.append(np.column_stack([F[cur], np.full(int(cur.sum()), ts)]))
        prev = cur
    Q = torch.from_numpy(np.concatenate(quads).astype(np.int64))
    t_tr, t_va = int(steps * split[0]), int(steps * (split[0] + split[1]))
    t = Q[:, 3]
    kg = TemporalKG(len(ents), len(rels), Q[t < t_tr], Q[(t >= t_tr) & (t < t_va)], Q[t >= t_va],
                    ents, rels)
    kg.notes.append("synthetic: no entity-word graph and no image/text modalities")
    return kg
