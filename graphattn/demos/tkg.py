r"""Temporal-KG forecasting: DyMRL vs static KGE models and a recurrence baseline.

Task (extrapolation): for every fact :math:`(s, r, o, t)` of the evaluation split, rank all
entities as the object of :math:`(s, r, ?, t)` and as the subject of :math:`(?, r, o, t)`
(an inverse-relation query), given the ground-truth facts of the timestamps before
:math:`t`. Metrics (:mod:`graphattn.metrics`): MRR and Hits@1/3/10, raw and time-aware
filtered (other answers true at the same timestamp are removed; ties count half).

Models, trained on the same split in the same run:

* **DyMRL** (:class:`graphattn.nn.manifold.DyMRL`), history of ``k`` snapshots, one
  snapshot per optimiser step, cross-entropy over all entities, early stopping on
  validation filtered MRR;
* **DistMult, ComplEx, RotatE** from ``torch_geometric.nn.kge`` trained on the training
  facts without time (inverse relations added so subject queries are answerable);
* **recurrence**: scores an entity :math:`1/(1 + t - t')` where :math:`t'` is the last time
  :math:`(s, r, \cdot)` pointed at it (0 if never) — the copy signal CyGNet exploits.

Data: the synthetic event streams over the real Nations facts (demo, embedded) or a
temporal-KG folder such as ICEWS14 (``--data ../shared/data/ICE14-IMG-TXT``).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..datasets import TemporalKG, load_tkg, synthetic_tkg
from ..metrics import ranking_metrics, ranks
from ..nn.manifold import DyMRL, RelationalGraph
from ..train import TrainConfig, fit, load_best, plot_curves
from . import register


class TKGTask:
    """Snapshots, queries and time-aware filters of a :class:`TemporalKG`."""

    def __init__(self, kg: TemporalKG, history: int) -> None:
        self.kg, self.k = kg, history
        N, R = kg.num_entities, kg.num_relations
        self.snaps = kg.snapshots()
        self.times = sorted(self.snaps)
        self.pos = {t: i for i, t in enumerate(self.times)}
        self.graphs = {t: RelationalGraph.from_triples(q[:, 0], q[:, 1], q[:, 2], N, R)
                       for t, q in self.snaps.items()}
        self.truth: dict[int, dict[tuple[int, int], list[int]]] = {}
        for t, q in self.snaps.items():
            d: dict[tuple[int, int], list[int]] = defaultdict(list)
            for s, r, o in q.tolist():
                d[(s, r)].append(o)
                d[(o, r + R)].append(s)
            self.truth[t] = d

    def queries(self, t: int) -> tuple[Tensor, Tensor, Tensor]:
        """Object and inverse subject queries of timestamp ``t``: ``s, r, target``."""
        q, R = self.snaps[t], self.kg.num_relations
        return (torch.cat([q[:, 0], q[:, 2]]), torch.cat([q[:, 1], q[:, 1] + R]),
                torch.cat([q[:, 2], q[:, 0]]))

    def history(self, t: int) -> list[RelationalGraph]:
        i = self.pos[t]
        return [self.graphs[u] for u in self.times[max(0, i - self.k): i]]

    def exclude(self, t: int, s: Tensor, r: Tensor) -> Tensor:
        """``[Q, N]`` mask of the answers true at ``t`` for each query (time-aware filter)."""
        mask = torch.zeros(s.numel(), self.kg.num_entities, dtype=torch.bool)
        truth = self.truth[t]
        rows, cols = [], []
        for i, (a, b) in enumerate(zip(s.tolist(), r.tolist())):
            ans = truth.get((a, b), ())
            rows += [i] * len(ans)
            cols += ans
        mask[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = True
        return mask

    def split_times(self, split: str) -> list[int]:
        return [t for t in self.kg.timestamps(split) if self.pos[t] > 0]


def evaluate(task: TKGTask, split: str, scorer) -> dict[str, float]:
    """Raw and time-aware filtered metrics of ``scorer(t, s, r) -> [Q, N]`` on ``split``."""
    raw, filt = [], []
    for t in task.split_times(split):
        s, r, target = task.queries(t)
        sc = scorer(t, s, r)
        raw.append(ranks(sc, target))
        filt.append(ranks(sc, target, task.exclude(t, s, r)))
    out = {f"raw_{k}": v for k, v in ranking_metrics(torch.cat(raw)).items()}
    out.update({f"filt_{k}": v for k, v in ranking_metrics(torch.cat(filt)).items()})
    return out


def train_dymrl(task: TKGTask, epochs: int, out_dir: Path, progress: bool, resume: bool = False,
                lr: float = 1e-2, dim: int = 20, patience: int = 10,
                riemannian: bool = False, lr_decay: float | None = None,
                weight_decay: float = 0.0) -> tuple[DyMRL, dict[str, Any]]:
    """Trains DyMRL (Adam, or geoopt's ``RiemannianAdam`` with ``riemannian=True``; both are
    exact here because every DyMRL parameter is a tangent vector or a Euclidean weight).
    ``lr_decay``: multiply the learning rate by this factor whenever validation MRR did not
    improve for an epoch (``ReduceLROnPlateau``, patience 1). ``weight_decay``: L2 penalty of
    the optimiser (coupled, as in ``torch.optim.Adam``; 0 in the paper's config)."""
    kg = task.kg
    modality_dims = {}
    mods = {}
    if kg.image_features is not None:
        modality_dims["image"], mods["image"] = kg.image_features.size(1), kg.image_features
    if kg.text_features is not None:
        modality_dims["text"], mods["text"] = kg.text_features.size(1), kg.text_features
    torch.manual_seed(0)
    model = DyMRL(kg.num_entities, kg.num_relations, dim=dim, word_edges=kg.word_edges,
                  num_words=kg.num_words, num_static_relations=kg.num_static_relations,
                  modality_dims=modality_dims,
                  # compiling pays off for the [Q, N] decoder of a real KG, not for the demo's
                  fused_decoder=kg.num_entities >= 1000)
    if riemannian:
        import geoopt

        opt = geoopt.optim.RiemannianAdam(model.parameters(), lr=lr,
                                              weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    train_times = task.split_times("train")
    gen = torch.Generator().manual_seed(0)

    def train_epoch(epoch: int) -> dict[str, float]:
        total, count = 0.0, 0
        for i in torch.randperm(len(train_times), generator=gen).tolist():
            t = train_times[i]
            s, r, target = task.queries(t)
            loss = F.cross_entropy(model(task.history(t), s, r, mods), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * s.numel(), count + s.numel()
        return {"loss": total / max(count, 1), "lr": opt.param_groups[0]["lr"]}

    def scorer(t, s, r):
        return model(task.history(t), s, r, mods)

    def evaluate_epoch(epoch: int) -> dict[str, float]:
        m = evaluate(task, "valid", scorer)
        return {"val_mrr": m["filt_mrr"], "val_hits@10": m["filt_hits@10"]}

    cfg = TrainConfig(name="dymrl", epochs=epochs, seed=0, runs_dir=out_dir, patience=patience,
                      monitor="val_mrr", mode="max", progress=progress, resume=resume)
    sched = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=lr_decay,
                                                        patience=1)
             if lr_decay else None)
    res = fit(model, opt, train_epoch, evaluate_epoch, cfg, scheduler=sched)
    # wall-clock of all training sessions of this run (fit accumulates it across resumes)
    seconds = json.loads((res.run_dir / "metrics.json").read_text())["total_time"]
    load_best(model, res.run_dir)
    model.eval()
    with torch.no_grad():
        test = evaluate(task, "test", scorer)
    return model, {"test": test, "train_time_s": seconds, "epochs": len(res.history),
                   "best_epoch": res.best_epoch, "history": res.history,
                   "params": sum(p.numel() for p in model.parameters())}


def train_kge(name: str, task: TKGTask, epochs: int, dim: int = 100, lr: float = 0.01,
              batch_size: int = 1024) -> dict[str, Any]:
    """A PyG static KGE model on the training facts (plus inverses), evaluated like DyMRL."""
    from torch_geometric.nn.kge import ComplEx, DistMult, RotatE

    kg = task.kg
    cls = {"DistMult": DistMult, "ComplEx": ComplEx, "RotatE": RotatE}[name]
    torch.manual_seed(0)
    kw = {"margin": 9.0} if name == "RotatE" else {}
    model = cls(kg.num_entities, 2 * kg.num_relations, dim, **kw)
    tr = kg.train
    h = torch.cat([tr[:, 0], tr[:, 2]])
    r = torch.cat([tr[:, 1], tr[:, 1] + kg.num_relations])
    o = torch.cat([tr[:, 2], tr[:, 0]])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = model.loader(head_index=h, rel_type=r, tail_index=o, batch_size=batch_size,
                          shuffle=True)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for hb, rb, ob in loader:
            opt.zero_grad()
            model.loss(hb, rb, ob).backward()
            opt.step()
    seconds = time.perf_counter() - t0
    model.eval()

    @torch.no_grad()
    def scorer(t, s, rel):
        return kge_scores(model, s, rel)

    return {"test": evaluate(task, "test", scorer), "train_time_s": seconds, "epochs": epochs,
            "params": sum(p.numel() for p in model.parameters())}


def kge_scores(model, s: Tensor, r: Tensor) -> Tensor:
    """Scores ``[Q, N]`` of every tail for PyG's DistMult / ComplEx / RotatE, by matrix
    products (the same values as ``model(h, r, t)`` for every ``t``; tested)."""
    from torch_geometric.nn.kge import ComplEx, DistMult, RotatE

    E = model.node_emb.weight
    if isinstance(model, DistMult):
        return (E[s] * model.rel_emb.weight[r]) @ E.T
    Ei = model.node_emb_im.weight
    if isinstance(model, ComplEx):
        hr, hi = E[s], Ei[s]
        rr, ri = model.rel_emb.weight[r], model.rel_emb_im.weight[r]
        return (hr * rr - hi * ri) @ E.T + (hr * ri + hi * rr) @ Ei.T
    if isinstance(model, RotatE):
        th = model.rel_emb.weight[r]
        c, si = torch.cos(th), torch.sin(th)
        hr, hi = E[s], Ei[s]
        q = torch.cat([c * hr - si * hi, c * hi + si * hr], 1)
        return model.margin - torch.cdist(q, torch.cat([E, Ei], 1))
    raise TypeError(f"no all-tails scorer for {type(model).__name__}")


def recurrence(task: TKGTask) -> dict[str, Any]:
    """The last-seen-fact baseline (no training)."""
    N = task.kg.num_entities
    last: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
    seen_upto = -1

    def advance(t: int) -> None:
        nonlocal seen_upto
        for u in task.times:
            if seen_upto < u < t:
                for (s, r), objs in task.truth[u].items():
                    for o in objs:
                        last[(s, r)][o] = u
                seen_upto = u

    def scorer(t, s, r):
        advance(t)
        sc = torch.zeros(s.numel(), N)
        for i, key in enumerate(zip(s.tolist(), r.tolist())):
            for o, u in last.get(key, {}).items():
                sc[i, o] = 1.0 / (1 + task.pos[t] - task.pos[u])
        return sc

    t0 = time.perf_counter()
    test = evaluate(task, "test", scorer)
    return {"test": test, "train_time_s": 0.0, "eval_time_s": time.perf_counter() - t0,
            "epochs": 0, "params": 0}


def run_comparison(kg: TemporalKG, label: str, out_dir: Path, progress: bool, resume: bool,
                   dymrl_epochs: int, kge_epochs: int, history: int, lr: float = 1e-2,
                   patience: int = 10, riemannian: bool = False,
                   lr_decay: float | None = None, dim: int = 20,
                   weight_decay: float = 0.0) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for note in kg.notes:
        print(f"[{label}] {note}", flush=True)
    task = TKGTask(kg, history)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    _, results["DyMRL"] = train_dymrl(task, dymrl_epochs, out_dir, progress, resume, lr=lr,
                                      patience=patience, riemannian=riemannian,
                                      lr_decay=lr_decay, dim=dim, weight_decay=weight_decay)
    print(f"[{label}] DyMRL done in {time.perf_counter() - t0:.0f} s", flush=True)
    for name in ("DistMult", "ComplEx", "RotatE"):
        results[name] = train_kge(name, task, kge_epochs)
    results["recurrence (last seen)"] = recurrence(task)
    history_rows = results["DyMRL"].pop("history")
    plot_curves(history_rows, out_dir / "dymrl_curves.png", title=f"DyMRL on {label}")
    (out_dir / "metrics.json").write_text(json.dumps(
        {"data": label, "entities": kg.num_entities, "relations": kg.num_relations,
         "quadruples": [len(kg.train), len(kg.valid), len(kg.test)], "notes": kg.notes,
         "history": history, "results": results, "dymrl_history": history_rows}, indent=1))
    return results


def summary_rows(results: dict[str, Any], label: str) -> list[dict]:
    return [{"example": label, "model": name, "test_filt_mrr": round(r["test"]["filt_mrr"], 4),
             "test_filt_hits@1": round(r["test"]["filt_hits@1"], 4),
             "test_filt_hits@10": round(r["test"]["filt_hits@10"], 4),
             "test_raw_mrr": round(r["test"]["raw_mrr"], 4), "params": r["params"],
             "time_s": round(r["train_time_s"], 1)} for name, r in results.items()]


@register("tkg")
def run(full: bool, runs_dir: Path, progress: bool, resume: bool = False,
        data: str | None = None, riemannian: bool = False, dim: int | None = None,
        weight_decay: float | None = None) -> list[dict]:
    """Synthetic Nations event streams at demo size; ``data`` (a temporal-KG folder) for the
    real run; ``riemannian`` trains DyMRL with ``geoopt.optim.RiemannianAdam``.

    ``dim`` (DyMRL's rank ``d``) and ``weight_decay`` (its optimiser's L2) default to the
    paper's config (20, 0) on the synthetic KG and to 40 and 1e-5 on a real folder: chosen by
    validation MRR on ICEWS14 (d=20: 0.360, d=40: 0.363, d=40 with 1e-5: 0.371; d=80 peaked at
    0.346 by epoch 2 and was stopped), see the README."""
    real = data is not None
    dim = (40 if real else 20) if dim is None else dim
    weight_decay = (1e-5 if real else 0.0) if weight_decay is None else weight_decay
    if real:
        kg = load_tkg(data)
        label = Path(data).name
        res = run_comparison(kg, label, Path(runs_dir) / "tkg" / label, progress, resume,
                             dymrl_epochs=30 if full else 3, kge_epochs=50 if full else 10,
                             history=6, patience=4, riemannian=riemannian, lr_decay=0.3,
                             dim=dim, weight_decay=weight_decay)
    else:
        kg = synthetic_tkg(steps=100)
        label = "synthetic Nations TKG"
        res = run_comparison(kg, label, Path(runs_dir) / "tkg" / "synthetic", progress, resume,
                             dymrl_epochs=30 if full else 12, kge_epochs=200 if full else 100,
                             history=3, riemannian=riemannian, dim=dim,
                             weight_decay=weight_decay)
    return summary_rows(res, label)
