"""Temporal-KG loader, synthetic generator and ranking metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from graphattn.datasets import load_tkg, synthetic_tkg
from graphattn.metrics import ranking_metrics, ranks

ICEWS14 = Path(__file__).resolve().parents[3] / "shared" / "data" / "ICE14-IMG-TXT"


def _write(folder: Path, train: str, extra: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stat.txt").write_text("4 2 0\n")
    (folder / "train.txt").write_text(train)
    (folder / "valid.txt").write_text("0\t1\t2\t3\n")
    (folder / "test.txt").write_text("2\t0\t3\t4\t0\n")
    (folder / "entity2id.txt").write_text("A\t0\nB\t1\nC\t2\nD D\t3\n")
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    return folder


def test_loader_round_trip(tmp_path) -> None:
    f = _write(tmp_path / "kg", "0\t0\t1\t0\n1\t1\t2\t1\n\n", {
        "e-w-graph.txt": "0 0 0\n3 1 2\n", "word2id.txt": "w0\t0\nw1\t1\nw2\t2\n"})
    np.save(f / "text_features.npy", np.ones((4, 3), np.float32))
    kg = load_tkg(f)
    assert (kg.num_entities, kg.num_relations) == (4, 2)
    assert kg.train.tolist() == [[0, 0, 1, 0], [1, 1, 2, 1]]
    assert kg.test.tolist() == [[2, 0, 3, 4]]  # fifth column ignored
    assert kg.entity_names == ["A", "B", "C", "D D"]
    assert kg.num_words == 3 and kg.num_static_relations == 2
    assert kg.text_features.shape == (4, 3) and kg.image_features is None
    assert any("image" in n for n in kg.notes)
    snaps = kg.snapshots()
    assert sorted(snaps) == [0, 1, 3, 4] and snaps[1].tolist() == [[1, 1, 2]]


@pytest.mark.parametrize("bad,match", [
    ("0\t0\t1\n", r"train.txt:1: expected 4\+ integer columns, got 3"),
    ("0\t0\tx\t0\n", r"train.txt:1: non-integer value"),
    ("0\t0\t1\t0\n0\t5\t1\t0\n", r"train.txt:2: relation id 5 outside \[0, 2\)"),
    ("9\t0\t1\t0\n", r"train.txt:1: subject id 9 outside \[0, 4\)"),
])
def test_loader_bad_lines(tmp_path, bad: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_tkg(_write(tmp_path / "kg", bad))


def test_loader_bad_feature_matrix(tmp_path) -> None:
    f = _write(tmp_path / "kg", "0\t0\t1\t0\n")
    np.save(f / "image_features.npy", np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"expected shape \[4, D\]"):
        load_tkg(f)


def test_synthetic_tkg_is_chronological_and_recurrent() -> None:
    kg = synthetic_tkg(steps=40, seed=1)
    assert kg.num_entities == 14 and kg.num_relations == 55
    assert kg.train[:, 3].max() < kg.valid[:, 3].min() <= kg.valid[:, 3].max() < kg.test[:, 3].min()
    q = kg.all_quadruples()
    events = {tuple(x) for x in q.tolist()}
    repeat = np.mean([(s, r, o, t + 1) in events for s, r, o, t in q.tolist() if t < 39])
    assert repeat > 0.4  # recurrence: far above the base rate of a fact (~0.1)
    assert torch.equal(synthetic_tkg(steps=40, seed=1).train, kg.train)


@pytest.mark.skipif(not ICEWS14.exists(), reason="ICEWS14 folder not present")
def test_icews14_folder() -> None:
    kg = load_tkg(ICEWS14)
    assert (kg.num_entities, kg.num_relations) == (7128, 230)
    assert (len(kg.train), len(kg.valid), len(kg.test)) == (74845, 8514, 7371)
    assert (len(kg.timestamps("train")), len(kg.timestamps("valid")),
            len(kg.timestamps("test"))) == (304, 30, 31)
    assert kg.num_words == 3499 and kg.word_edges.shape == (11349, 3)


def test_ranks_hand_computed() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.1],
                           [0.2, 0.2, 0.2, 0.2],
                           [0.3, 0.8, 0.8, 0.1]])
    target = torch.tensor([2, 1, 1])
    # raw: row 0 one higher -> 2; row 1 three ties -> 1 + 3/2; row 2 one tie -> 1.5
    torch.testing.assert_close(ranks(scores, target), torch.tensor([2.0, 2.5, 1.5],
                                                                  dtype=torch.float64))
    exclude = torch.tensor([[True, False, False, False],
                            [False, True, True, False],   # the target itself is never dropped
                            [False, False, True, False]])
    torch.testing.assert_close(ranks(scores, target, exclude),
                               torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64))
    m = ranking_metrics(torch.tensor([1.0, 2.0, 4.0, 20.0]))
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.25 + 0.05) / 4)
    assert (m["hits@1"], m["hits@3"], m["hits@10"]) == (0.25, 0.5, 0.75)
    with pytest.raises(ValueError, match="scores must be"):
        ranks(scores[0], target)
