"""Counterfactual gender templates, attribute words, definitional sentences and paraphrase
pairs of ``datasets/ugid`` (written for graphattn, CC0; provenance in its README).

A counterfactual pair is one template filled with the male and with the female word of a
pair of the same grammatical kind ("the {w} is here." -> "the man is here." / "the woman is
here."). Training pairs use ``train`` templates and word pairs; held-out pairs use ``test``
templates with every word pair, so they test both unseen contexts and unseen words.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CounterfactualSet", "load_counterfactuals", "ugid_dir"]


def ugid_dir() -> Path:
    path = Path(__file__).resolve().parents[2] / "datasets" / "ugid"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the UGID files ship with the source "
                                "checkout (install with pip install -e .)")
    return path


def _read(name: str, columns: list[str]) -> list[dict[str, str]]:
    path = ugid_dir() / name
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for i, row in enumerate(rows, start=2):
        missing = [c for c in columns if not row.get(c)]
        if missing:
            raise ValueError(f"{path}:{i}: missing column(s) {missing}")
    return rows


@dataclass
class CounterfactualSet:
    """Parallel lists: ``male[i]`` and ``female[i]`` differ only in the gendered word
    ``words[i] = (male word, female word)``."""

    male: list[str]
    female: list[str]
    words: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.male)


def load_counterfactuals() -> dict:
    """Everything the UGID example reads, as plain Python lists.

    Returns:
        dict with ``train`` / ``test`` (:class:`CounterfactualSet`), ``pairs`` (all word
        pairs with kind and split), ``attributes`` (``{set: {split: [words]}}``),
        ``definitional`` (sentences with their gender) and ``paraphrases``
        (``(a, b, label)``).
    """
    pairs = _read("gender_pairs.tsv", ["male", "female", "kind", "split"])
    templates = _read("templates.tsv", ["kind", "split", "template"])
    for t in templates:
        if "{w}" not in t["template"]:
            raise ValueError(f"template without a {{w}} slot: {t['template']!r}")
    out: dict = {"pairs": pairs}
    for split in ("train", "test"):
        male, female, words = [], [], []
        for t in templates:
            if t["split"] != split:
                continue
            for p in pairs:
                if p["kind"] != t["kind"] or (split == "train" and p["split"] != "train"):
                    continue
                male.append(t["template"].format(w=p["male"]))
                female.append(t["template"].format(w=p["female"]))
                words.append((p["male"], p["female"]))
        out[split] = CounterfactualSet(male, female, words)
    attrs: dict[str, dict[str, list[str]]] = {}
    for a in _read("attributes.tsv", ["word", "set", "split"]):
        attrs.setdefault(a["set"], {}).setdefault(a["split"], []).append(a["word"])
    out["attributes"] = attrs
    out["definitional"] = [(r["sentence"], r["gender"])
                           for r in _read("definitional.tsv", ["sentence", "gender"])]
    out["paraphrases"] = [(r["sentence_a"], r["sentence_b"], int(r["label"]))
                          for r in _read("paraphrases.tsv", ["label", "sentence_a", "sentence_b"])]
    return out
