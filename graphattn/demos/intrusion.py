r"""Intrusion detection on a host-flow graph: Q-AGNN vs classical GNNs, and Q-AGNN under noise.

Data: :func:`graphattn.datasets.flow_graph` (generated offline; single flows are ambiguous,
attack campaigns are not). Binary task: attack vs benign flow, transductive split
40/20/40 stratified by attack class.

In one run, on the same split:

1. per-flow baselines without the graph (random forest, logistic regression), to show how
   far single flows go;
2. Q-AGNN (:class:`graphattn.nn.quantum.QAGNN`, exact statevector training) against PyG's
   ``GATConv``, ``GCNConv`` and ``TransformerConv`` (two layers each, the same MLP head)
   whose widths are chosen to match Q-AGNN's parameter count, and against Q-AGNN's classical
   twin (the circuit replaced by ``tanh`` of a linear map);
3. the trained Q-AGNN evaluated again with its circuits run under finite shots (qiskit-aer),
   under the depolarising noise of the Q-AGNN survey (1e-3 per one-qubit gate, 1e-2 per CNOT,
   2 % read-out flips), and on a fake IBM device (``fake-manila``: its calibrated noise,
   native gates and coupling map), with the degradation reported.

Everything is written under ``runs_dir/intrusion/``: ``metrics.json``, ``comparison.png``,
``noise.png``, one training run per model, and ``qagnn/model.json`` + ``qagnn/best.pt`` that
``graphattn quantum submit`` reads.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import GATConv, GCNConv, TransformerConv

from ..datasets import FlowConfig, flow_graph
from ..nn.quantum import QAGNN, make_executor
from ..nn.quantum.execution import Executor
from ..train import TrainConfig, fit, load_best, plot_curves
from . import register

QAGNN_ARGS = {"hidden": 8, "num_qubits": 4, "reps": 2, "heads": 2, "hops": 2}


def binary_metrics(logits: Tensor, y: Tensor) -> dict[str, float]:
    """Macro-F1 over the two classes, false-positive rate (benign flagged) and recall."""
    pred = (logits > 0).long()
    y = y.long()
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    f1_pos = 2 * tp / max(2 * tp + fp + fn, 1)
    f1_neg = 2 * tn / max(2 * tn + fn + fp, 1)
    return {"macro_f1": (f1_pos + f1_neg) / 2, "fpr": fp / max(fp + tn, 1),
            "recall": tp / max(tp + fn, 1)}


class ClassicalGNN(nn.Module):
    """Two PyG convolutions (ELU) and Q-AGNN's MLP head."""

    def __init__(self, kind: str, fin: int, width: int, heads: int = 2) -> None:
        super().__init__()
        if kind == "gcn":
            self.c1, self.c2, out = GCNConv(fin, width), GCNConv(width, width), width
        elif kind == "gat":
            self.c1 = GATConv(fin, width, heads=heads)
            self.c2 = GATConv(width * heads, width, heads=heads)
            out = width * heads
        elif kind == "transformer":
            self.c1 = TransformerConv(fin, width, heads=heads)
            self.c2 = TransformerConv(width * heads, width, heads=heads)
            out = width * heads
        else:
            raise ValueError(f"unknown kind {kind!r}")
        self.head = nn.Sequential(nn.Linear(out, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = F.elu(self.c2(F.elu(self.c1(x, edge_index)), edge_index))
        return self.head(h).squeeze(-1)


class ClassicalTwin(QAGNN):
    """Q-AGNN with the circuit replaced by ``tanh`` of the encoder output (same bound)."""

    def __init__(self, fin: int, **kw: Any) -> None:
        super().__init__(fin, **kw)
        self.conv.weights.requires_grad_(False)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        e = torch.tanh(self.conv.encoder(x, edge_index, edge_weight))
        return self.head(F.elu(self.conv.attention(e, edge_index))).squeeze(-1)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched(kind: str, fin: int, budget: int) -> ClassicalGNN:
    """The ``ClassicalGNN`` whose parameter count is closest to ``budget``."""
    best = min(range(1, 64), key=lambda w: abs(n_params(ClassicalGNN(kind, fin, w)) - budget))
    return ClassicalGNN(kind, fin, best)


def load_data(full: bool, seed: int = 0) -> tuple[Data, FlowConfig]:
    cfg = FlowConfig.full() if full else FlowConfig()
    return flow_graph(cfg, seed=seed), cfg


def train(name: str, model: nn.Module, data: Data, epochs: int, out_dir: Path, progress: bool,
          resume: bool = False, lr: float = 0.02):
    """Full-batch BCE (positive class weighted by the train imbalance), early stopping on
    validation macro-F1; returns ``(RunResult, seconds)`` with the best weights loaded."""
    y, tr, va = data.y, data.train_mask, data.val_mask
    pos_weight = (y[tr] == 0).sum() / (y[tr] == 1).sum().clamp(min=1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

    def train_epoch(epoch: int) -> dict[str, float]:
        opt.zero_grad()
        loss = QAGNN.loss(model(data.x, data.edge_index)[tr], y[tr], pos_weight)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    def evaluate(epoch: int) -> dict[str, float]:
        out = model(data.x, data.edge_index)
        m = binary_metrics(out[va], y[va])
        return {"val_loss": QAGNN.loss(out[va], y[va], pos_weight).item(),
                "val_macro_f1": m["macro_f1"]}

    cfg = TrainConfig(name=name, epochs=epochs, seed=0, runs_dir=out_dir, patience=60,
                      monitor="val_macro_f1", mode="max", progress=progress, resume=resume)
    t0 = time.perf_counter()
    res = fit(model, opt, train_epoch, evaluate, cfg)
    seconds = time.perf_counter() - t0
    load_best(model, res.run_dir)
    model.eval()
    return res, seconds


def evaluate_on(model: QAGNN, data: Data, executor: Executor | None) -> dict[str, Any]:
    """Test metrics of a trained Q-AGNN with its circuits run on ``executor`` (``None``:
    exact), plus the mean absolute deviation of the embeddings from the exact ones."""
    model.eval()
    with torch.no_grad():
        model.executor = None
        exact_e = model.conv.embed(data.x, data.edge_index)
        model.executor = executor
        t0 = time.perf_counter()
        e = model.conv.embed(data.x, data.edge_index)
        logits = model.head(F.elu(model.conv.attention(e, data.edge_index))).squeeze(-1)
        seconds = time.perf_counter() - t0
    model.executor = None
    m = binary_metrics(logits[data.test_mask], data.y[data.test_mask])
    return {**m, "embedding_mad": (e - exact_e).abs().mean().item(), "time_s": seconds,
            "circuits": data.num_nodes, **(executor.describe() if executor else
                                           {"backend": "statevector (torch, exact)"})}


def per_flow_baselines(data: Data) -> list[dict[str, Any]]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    X, y = data.x.numpy(), data.y.numpy()
    tr, te = data.train_mask.numpy(), data.test_mask.numpy()
    rows = []
    for label, clf in (("random forest (per flow, no graph)",
                        RandomForestClassifier(300, random_state=0, n_jobs=2,
                                               class_weight="balanced")),
                       ("logistic regression (per flow, no graph)",
                        LogisticRegression(max_iter=2000, class_weight="balanced"))):
        t0 = time.perf_counter()
        clf.fit(X[tr], y[tr])
        score = clf.predict_proba(X[te])[:, 1]
        logits = torch.from_numpy(np.log(score + 1e-12) - np.log(1 - score + 1e-12))
        rows.append({"model": label, **binary_metrics(logits, data.y[torch.from_numpy(te)]),
                     "params": None, "time_s": time.perf_counter() - t0})
    return rows


def save_qagnn(model: QAGNN, run_dir: Path, cfg: FlowConfig, seed: int) -> None:
    (run_dir / "model.json").write_text(json.dumps(
        {"model_args": {"in_channels": model.conv.encoder.lin.in_features // 3, **QAGNN_ARGS},
         "flow_config": asdict(cfg), "data_seed": seed}, indent=1))


def load_qagnn(run_dir: Path) -> tuple[QAGNN, Data]:
    """The trained Q-AGNN of a run directory and its data (regenerated from the seed)."""
    meta = json.loads((run_dir / "model.json").read_text())
    model = QAGNN(**meta["model_args"])
    load_best(model, run_dir)
    data = flow_graph(FlowConfig(**meta["flow_config"]), seed=meta["data_seed"])
    return model.eval(), data


NOISE_BACKENDS = ("statevector", "aer", "aer-depolarizing", "fake-manila")


def _bar_plot(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    names = [r["backend"] for r in rows]
    ax.bar(names, [r["macro_f1"] for r in rows], color="tab:blue")
    ax.set_ylabel("test macro-F1")
    ax.set_ylim(min(r["macro_f1"] for r in rows) - 0.05, 1.0)
    ax.set_title("Q-AGNN, same weights, different circuit execution")
    ax.tick_params(axis="x", labelsize=8)
    fig.savefig(path, dpi=100)


@register("intrusion")
def run(full: bool, runs_dir: Path, progress: bool, resume: bool = False,
        backends: list[str] | None = None, shots: int = 1024, epochs: int | None = None
        ) -> list[dict]:
    """The whole comparison; returns the summary rows and writes ``runs_dir/intrusion/``."""
    out_dir = Path(runs_dir) / "intrusion"
    out_dir.mkdir(parents=True, exist_ok=True)
    data, cfg = load_data(full)
    epochs = epochs or (800 if full else 400)
    n_attack = int(data.y.sum())
    example = (f"host flows ({data.num_nodes} flows, {n_attack} attacks, "
               f"{data.edge_index.size(1)} edges)")
    rows = per_flow_baselines(data)

    torch.manual_seed(0)
    qagnn = QAGNN(data.num_features, **QAGNN_ARGS)
    budget = n_params(qagnn)
    models: dict[str, nn.Module] = {
        "Q-AGNN (4 qubits, EfficientSU2 reps=2, exact)": qagnn,
        "classical twin (circuit -> tanh)": ClassicalTwin(data.num_features, **QAGNN_ARGS),
        "GAT (PyG)": matched("gat", data.num_features, budget),
        "GCN (PyG)": matched("gcn", data.num_features, budget),
        "TransformerConv (PyG)": matched("transformer", data.num_features, budget),
    }
    keys = ["qagnn", "twin", "gat", "gcn", "transformer"]
    histories = {}
    for key, (label, model) in zip(keys, models.items()):
        torch.manual_seed(0)
        res, seconds = train(key, model, data, epochs, out_dir, progress, resume)
        with torch.no_grad():
            m = binary_metrics(model(data.x, data.edge_index)[data.test_mask],
                               data.y[data.test_mask])
        histories[key] = res.history
        rows.append({"model": label, **m, "params": n_params(model), "time_s": seconds,
                     "epochs": len(res.history)})
    save_qagnn(qagnn, out_dir / "qagnn", cfg, 0)

    noise_rows = []
    for name in backends or NOISE_BACKENDS:
        ex = make_executor(name, qagnn.conv.spec, shots=shots, seed=0)
        noise_rows.append(evaluate_on(qagnn, data, ex))
    base = noise_rows[0]["macro_f1"]
    for r in noise_rows:
        r["delta_macro_f1"] = r["macro_f1"] - base

    merged = [{"epoch": h["epoch"], **{f"val_f1_{k}": histories[k][i]["val_macro_f1"]
                                      for k in keys if i < len(histories[k])}}
              for i, h in enumerate(max(histories.values(), key=len))]
    plot_curves(merged, out_dir / "comparison.png", title="intrusion: validation macro-F1")
    _bar_plot(noise_rows, out_dir / "noise.png")
    (out_dir / "metrics.json").write_text(json.dumps(
        {"data": {"flows": data.num_nodes, "attacks": n_attack,
                  "edges": data.edge_index.size(1), "config": asdict(cfg)},
         "models": rows, "qagnn_under_noise": noise_rows, "shots": shots}, indent=1))

    summary = [{"example": example, "model": r["model"], "test_macro_f1": round(r["macro_f1"], 4),
                "test_fpr": round(r["fpr"], 4), "params": r["params"],
                "time_s": round(r["time_s"], 2)} for r in rows]
    summary += [{"example": example, "model": f"Q-AGNN evaluated on {r['backend']}",
                 "test_macro_f1": round(r["macro_f1"], 4), "test_fpr": round(r["fpr"], 4),
                 "params": budget, "time_s": round(r["time_s"], 2)} for r in noise_rows[1:]]
    return summary
