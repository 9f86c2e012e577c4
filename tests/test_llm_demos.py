"""UGID and retrieval examples: data files, the association metric, short end-to-end runs."""

from __future__ import annotations

import pytest
import torch

from graphattn.datasets.counterfactual import load_counterfactuals
from graphattn.nn.fairness import association, weat_effect_size


def test_counterfactual_files_pair_up_and_hold_out():
    d = load_counterfactuals()
    for split in ("train", "test"):
        cs = d[split]
        assert len(cs) > 100 and len(cs.male) == len(cs.female) == len(cs.words)
        for m, f, (wm, wf) in zip(cs.male, cs.female, cs.words):
            diff = [(a.strip("."), b.strip(".")) for a, b in zip(m.split(), f.split()) if a != b]
            assert len(m.split()) == len(f.split()) and diff == [(wm, wf)]
    train_ctx = {m.replace(w, "{w}") for m, (w, _) in zip(d["train"].male, d["train"].words)}
    test_ctx = {m.replace(w, "{w}") for m, (w, _) in zip(d["test"].male, d["test"].words)}
    assert not train_ctx & test_ctx
    occ = d["attributes"]["occupation"]
    assert not set(occ["train"]) & set(occ["test"])
    assert {g for _, g in d["definitional"]} == {"male", "female"}
    labels = [y for _, _, y in d["paraphrases"]]
    assert labels.count(1) == labels.count(0) == 30


def test_counterfactual_pairs_tokenise_to_equal_length():
    pytest.importorskip("transformers")
    from graphattn.pretrained import load_minilm

    tok, _ = load_minilm()
    d = load_counterfactuals()
    for cs in (d["train"], d["test"]):
        a = tok(cs.male)["input_ids"]
        b = tok(cs.female)["input_ids"]
        assert all(len(x) == len(y) for x, y in zip(a, b))


def test_weat_effect_size_hand_computed():
    # 2-D: A = x-axis, B = y-axis; targets at angles with known cosines
    A = torch.tensor([[1.0, 0.0]])
    B = torch.tensor([[0.0, 1.0]])
    X = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # s = 1 - 0 = 1
    Y = torch.tensor([[0.0, 1.0], [0.0, 3.0]])  # s = 0 - 1 = -1
    torch.testing.assert_close(association(X, A, B), torch.tensor([1.0, 1.0]))
    # mean difference 2, sample std of [1, 1, -1, -1] = sqrt(4/3)
    assert weat_effect_size(X, Y, A, B) == pytest.approx(2 / (4 / 3) ** 0.5)
    assert weat_effect_size(Y, X, A, B) == pytest.approx(-2 / (4 / 3) ** 0.5)
    assert weat_effect_size(X, X * 3, A, B) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="'A'"):
        association(X, A[:0], B)


@pytest.mark.slow
def test_ugid_demo_end_to_end(tmp_path):
    from graphattn.demos.ugid import UGIDConfig, run_comparison

    rows = run_comparison(UGIDConfig(steps=30), tmp_path)
    before, cda, ugid = rows
    assert ugid["occupation_logp_gap"] < before["occupation_logp_gap"]
    assert ugid["node_term"] < before["node_term"]
    assert ugid["anchor_kl"] < cda["anchor_kl"]
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "metrics.png").exists()


@pytest.mark.slow
def test_retrieval_demo_end_to_end(tmp_path):
    from graphattn.demos.retrieval import RetrievalConfig, run_comparison

    res = run_comparison(RetrievalConfig(n=60, betas=(0.0, 1.0), gammas=(0.0, 0.5)), tmp_path)
    by = {r["method"]: r for r in res["rows"]}
    assert len(by) == 5 and all(0 < r["mrr"] <= 1 for r in by.values())
    assert by["TF-IDF"]["recall@10"] > 0.5  # the task is solvable, not noise
    assert (tmp_path / "recall_at_k.png").exists()
