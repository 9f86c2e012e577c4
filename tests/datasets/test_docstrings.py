"""The docstring retrieval set: splitting rules, uniqueness, cache round trip."""

from __future__ import annotations

from graphattn.datasets import docstrings
from graphattn.datasets.docstrings import _split, harvest_docstrings, load_docstring_set


def test_split_skips_ufunc_signature_and_needs_a_body():
    doc = "absolute(x, /, out=None)\n\nCalculate the absolute\nvalue.\n\nParameters\n----------\nx"
    assert _split(doc) == ("Calculate the absolute value.", "Parameters\n----------\nx")
    assert _split("Only a summary.") is None
    assert _split("Summary here.\n\nBody text.") == ("Summary here.", "Body text.")


def test_harvest_is_unique_and_real():
    rs = harvest_docstrings(("numpy.linalg", "scipy.linalg"))
    assert len(rs) > 20
    assert len(set(rs.queries)) == len(rs) and len(set(rs.docs)) == len(rs)
    assert all(q not in d[: len(q)] for q, d in zip(rs.queries, rs.docs))
    assert all(len(d) >= 200 and len(q) >= 15 for q, d in zip(rs.queries, rs.docs))
    i = rs.names.index("numpy.linalg.solve")
    assert "linear matrix equation" in rs.queries[i].lower()
    assert set(rs.versions) == {"numpy", "scipy"}


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHATTN_CACHE", str(tmp_path))
    mods = ("numpy.fft",)
    a = load_docstring_set(mods)
    files = list(tmp_path.glob("docstrings-*.json"))
    assert len(files) == 1 and docstrings.cache_dir() == tmp_path
    b = load_docstring_set(mods)
    assert (a.queries, a.docs, a.names) == (b.queries, b.docs, b.names)
    sub = a.subset(3, seed=1)
    assert len(sub) == 3 and all(q in a.queries for q in sub.queries)
    assert sub.queries == a.subset(3, seed=1).queries
