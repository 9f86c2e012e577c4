"""The associative-recall and item-level recommendation examples (small settings)."""

from __future__ import annotations

import json

import pytest
import torch

from graphattn import cli
from graphattn.demos import recall, recsys


def test_recall_task_and_models_run() -> None:
    task = recall.RecallTask(n_pairs=3, filler=6)
    x, y = task.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, task.length) and (x[:, -2] == 1).all()
    # the answer is the value that follows the queried key
    for b in range(5):
        pos = (x[b, :6] == x[b, -1]).nonzero()[0, 0]
        assert x[b, pos + 1] == y[b]
    for kind in ("softmax", "fastmka", "mka"):
        model, hist, _ = recall.train_model(kind, task, steps=3, batch=8)
        acc, tps = recall.accuracy(model, x, y)
        assert 0 <= acc <= 1 and tps > 0 and hist
    soft, _, _ = recall.train_model("softmax", task, steps=2, batch=8)
    full_acc, _ = recall.accuracy(soft, x, y)
    # budgets covering the whole sequence change nothing
    assert recall.accuracy(soft, x, y, "h2o", budget_size=task.length)[0] == full_acc
    assert recall.accuracy(soft, x, y, "sink_window", budget_size=task.length + 4)[0] == full_acc


def test_hr_ndcg_hand_computed() -> None:
    logits = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    target = torch.tensor([2, 0])  # ranks 2 and 2
    hr, ndcg = recsys.hr_ndcg(logits, target, k=1)
    assert hr == 0 and ndcg == 0
    hr, ndcg = recsys.hr_ndcg(logits, target, k=2)
    assert hr == 1 and ndcg == pytest.approx(1 / torch.log2(torch.tensor(3.0)).item())


def test_recsys_task_item_level_signal() -> None:
    task = recsys.RecTask(n_items=20, n_attributes=10, history=3)
    toks, P = task.build()
    assert torch.allclose(P.sum(1), torch.ones(20))
    assert toks.shape == (20, task.tokens_per_item)
    x, y = task.sample(4, toks, P, torch.Generator().manual_seed(0))
    assert x.shape == (4, 3 * task.tokens_per_item)
    model = recsys.Recommender(task, ("intra", "inter"), dim=16, heads=2)
    assert model(x).shape == (4, 20)


@pytest.mark.slow
def test_token_demos_end_to_end(tmp_path) -> None:
    assert cli.main(["demo", "--only", "recall", "recsys", "--runs-dir", str(tmp_path),
                     "--no-progress"]) == 0
    for name in ("recall", "recsys"):
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        assert m["rows"] and (tmp_path / name / "training_loss.png").exists()
