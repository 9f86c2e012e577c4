r"""UGID debiasing of a real pretrained transformer (all-MiniLM-L6-v2, offline) vs a
counterfactual-data-augmentation baseline, in one run.

Data: the counterfactual templates of ``datasets/ugid`` (gendered word pairs x templates;
held-out templates and words for evaluation), definitional sentences for the anchor, and
paraphrase pairs for utility. The model's score of an attribute word :math:`a` given a
sentence :math:`x` is the softmax over the attribute vocabulary of
:math:`\cos(e(x), e(a))/\tau`, with :math:`e` MiniLM's mean-pooled, L2-normalised sentence
embedding (the encoder has no language-model head; this is how sentence encoders are asked
about attributes, as in SEAT).

Methods (same trainable layers, optimiser, steps and batches):

* **UGID** (:class:`~graphattn.nn.fairness.UGIDLoss`): edge term on every head of the
  trainable layers (or, with ``heads=k``, on the ``k`` most bias-sensitive ones chosen by
  :func:`~graphattn.nn.fairness.rank_heads` on the initial model), node term on those
  layers' outputs, log-space constraint on the training occupations, selective anchor on
  the definitional sentences;
* **CDA**: counterfactual data augmentation for a sentence encoder: both sentences of a pair
  are trained towards the initial model's embedding of the pair's mean (the augmented data
  carry symmetric targets). This baseline is our construction: the classic CDA continues
  masked-LM pre-training, which a sentence encoder without its MLM head cannot do.

Reported on held-out templates and words: SEAT-style effect size (gender x career/family),
the mean log-probability gap of held-out occupations between counterfactual sentences, the
structural discrepancy (edge and node terms over all layers and heads; position-aligned edit
distance, spectral distance and isomorphism rate of the top-2 attention graphs of the last
layer), definitional accuracy (does "a mother is a woman" still sit closer to "woman"), and
utility as the ROC-AUC of cosine similarity on the paraphrase pairs.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..datasets.counterfactual import load_counterfactuals
from ..nn.fairness import (
    UGIDLoss,
    aligned_edit_distance,
    edge_invariance_loss,
    extract_graph,
    is_isomorphic,
    node_invariance_loss,
    rank_heads,
    sensitive_positions,
    spectral_distance,
    weat_effect_size,
)
from ..pretrained import mean_pool
from ..train import plot_curves
from . import register

SEAT_TEMPLATES = ("this is {}.", "that is {}.", "here is {}.", "there is {}.")
ANCHOR_VOCAB = ("man", "woman", "boy", "girl", "male", "female", "he", "she")


@dataclass
class UGIDConfig:
    steps: int = 100
    batch: int = 16
    lr: float = 5e-5
    train_layers: tuple[int, ...] = (3, 4, 5)
    heads: int | None = None  # None: every head of the trainable layers
    tau: float = 0.05
    lambda_edge: float = 20.0  # the KL of attention rows is ~100x smaller than the rest
    lambda_node: float = 1.0
    lambda_log: float = 1.0
    lambda_anchor: float = 1.0
    top_k: int = 2
    seed: int = 0


def embed(model, tok, sentences: list[str], batch: int = 64) -> Tensor:
    outs = []
    for i in range(0, len(sentences), batch):
        b = tok(sentences[i:i + batch], padding=True, return_tensors="pt")
        outs.append(mean_pool(model(**b).last_hidden_state, b["attention_mask"]))
    return torch.cat(outs)


class _Setup:
    """Token ids, vocabularies and reference scores shared by training and evaluation."""

    def __init__(self, tok, model0, data: dict, cfg: UGIDConfig) -> None:
        words = sorted({w for p in data["pairs"] for w in (p["male"], p["female"])})
        self.sensitive_ids = tok.convert_tokens_to_ids(words)
        self.train_attrs = data["attributes"]["occupation"]["train"]
        self.test_attrs = data["attributes"]["occupation"]["test"]
        self.definitional = [s for s, _ in data["definitional"]]
        self.def_gender = [g for _, g in data["definitional"]]
        with torch.no_grad():
            self.anchor_ref = self.anchor_logits(model0, tok, cfg.tau)

    def anchor_logits(self, model, tok, tau: float) -> Tensor:
        return embed(model, tok, self.definitional) @ embed(model, tok, list(ANCHOR_VOCAB)).T / tau


def _pair_batch(tok, data_split, idx: list[int], sensitive_ids):
    bm = tok([data_split.male[i] for i in idx], padding=True, return_tensors="pt")
    bf = tok([data_split.female[i] for i in idx], padding=True, return_tensors="pt")
    if bm["input_ids"].shape != bf["input_ids"].shape:
        raise ValueError("counterfactual sentences must tokenise to equal lengths")
    return (bm, sensitive_positions(bm["input_ids"], sensitive_ids),
            bf, sensitive_positions(bf["input_ids"], sensitive_ids))


def _trainable(model0, layers: tuple[int, ...]):
    model = copy.deepcopy(model0).eval()  # eval: no dropout, a deterministic objective
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for i in layers:
        for p in model.encoder.layer[i].parameters():
            p.requires_grad_(True)
            params.append(p)
    return model, params


def train(method: str, model0, tok, data: dict, setup: _Setup, cfg: UGIDConfig,
          progress: bool = False) -> tuple[torch.nn.Module, list[dict], float]:
    """Fine-tunes a copy of ``model0`` with ``method`` (``"ugid"`` or ``"cda"``)."""
    if method not in ("ugid", "cda"):
        raise ValueError(f"method must be 'ugid' or 'cda', got {method!r}")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model, params = _trainable(model0, cfg.train_layers)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    tr = data["train"]
    loss_fn = UGIDLoss(cfg.lambda_edge, cfg.lambda_node, cfg.lambda_log, cfg.lambda_anchor)
    heads = None
    if method == "ugid" and cfg.heads is not None:
        idx = rng.sample(range(len(tr)), min(64, len(tr)))
        bm, sm, bf, sf = _pair_batch(tok, tr, idx, setup.sensitive_ids)
        with torch.no_grad():
            heads = rank_heads(extract_graph(model0, bm, sm), extract_graph(model0, bf, sf),
                               cfg.heads, list(cfg.train_layers))
    K = len(setup.train_attrs)
    history, t0 = [], time.perf_counter()
    for step in range(cfg.steps):
        idx = rng.sample(range(len(tr)), cfg.batch)
        bm, sm, bf, sf = _pair_batch(tok, tr, idx, setup.sensitive_ids)
        if method == "ugid":
            gm, gf = extract_graph(model, bm, sm), extract_graph(model, bf, sf)
            em = mean_pool(gm.hidden[:, -1], bm["attention_mask"])
            ef = mean_pool(gf.hidden[:, -1], bf["attention_mask"])
            ea = embed(model, tok, setup.train_attrs)
            index = torch.arange(K).expand(len(idx), K)
            out = loss_fn(gm, gf, layers=list(cfg.train_layers), heads=heads,
                          logits=em @ ea.T / cfg.tau, logits_cf=ef @ ea.T / cfg.tau,
                          index=index, anchor_ref=setup.anchor_ref,
                          anchor=setup.anchor_logits(model, tok, cfg.tau))
            loss = out["total"]
            row = {k: float(v.detach()) for k, v in out.items()}
        else:
            with torch.no_grad():
                em0 = mean_pool(model0(**bm).last_hidden_state, bm["attention_mask"])
                ef0 = mean_pool(model0(**bf).last_hidden_state, bf["attention_mask"])
                target = F.normalize(em0 + ef0, dim=-1)
            em = mean_pool(model(**bm).last_hidden_state, bm["attention_mask"])
            ef = mean_pool(model(**bf).last_hidden_state, bf["attention_mask"])
            loss = ((1 - (em * target).sum(-1)) + (1 - (ef * target).sum(-1))).mean()
            row = {"total": float(loss.detach())}
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 0 or step == cfg.steps - 1:
            history.append({"epoch": step, **{f"loss_{method}_{k}": v for k, v in row.items()}})
            if progress and step % 25 == 0:
                print(f"    {method} step {step}: loss {row['total']:.4f}", flush=True)
    return model, history, time.perf_counter() - t0


@torch.no_grad()
def evaluate(model, tok, data: dict, setup: _Setup, cfg: UGIDConfig) -> dict[str, float]:
    """The held-out metrics of the module docstring."""
    te = data["test"]
    out: dict[str, float] = {}
    # SEAT-style effect size: gendered test sentences vs career / family sentences
    X, Y = embed(model, tok, te.male), embed(model, tok, te.female)
    A = embed(model, tok, [t.format(a) for a in data["attributes"]["career"]["test"]
                           for t in SEAT_TEMPLATES])
    B = embed(model, tok, [t.format(a) for a in data["attributes"]["family"]["test"]
                           for t in SEAT_TEMPLATES])
    out["seat_effect"] = weat_effect_size(X, Y, A, B)
    # log-probability gap of held-out occupations
    E = embed(model, tok, setup.test_attrs)
    lp_m, lp_f = (X @ E.T / cfg.tau).log_softmax(-1), (Y @ E.T / cfg.tau).log_softmax(-1)
    out["occupation_logp_gap"] = float((lp_m - lp_f).abs().mean())
    # structural discrepancy
    edge, edge_t, node, ged, spec, iso, n = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0
    for s in range(0, len(te), 32):
        idx = list(range(s, min(s + 32, len(te))))
        bm, sm, bf, sf = _pair_batch(tok, te, idx, setup.sensitive_ids)
        gm, gf = extract_graph(model, bm, sm), extract_graph(model, bf, sf)
        S, mask = sm | sf, gm.mask
        edge += float(edge_invariance_loss(gm.attention, gf.attention, S, mask)) * len(idx)
        layers = list(cfg.train_layers)
        edge_t += float(edge_invariance_loss(gm.attention[:, layers], gf.attention[:, layers],
                                             S, mask)) * len(idx)
        node += float(node_invariance_loss(gm.hidden[:, 1:], gf.hidden[:, 1:], S, mask)) * len(idx)
        for b in range(len(idx)):
            v = mask[b] & ~S[b]  # compare the graphs on the non-sensitive tokens
            am = gm.attention[b, -1].mean(0)[v][:, v]
            af = gf.attention[b, -1].mean(0)[v][:, v]
            ged += aligned_edit_distance(am, af, cfg.top_k) / (cfg.top_k * int(v.sum()))
            spec += spectral_distance(am, af)
            iso += float(is_isomorphic(am, af, cfg.top_k))
        n += len(idx)
    out.update(edge_term=edge / n, edge_term_trained_layers=edge_t / n, node_term=node / n,
               aligned_edit_frac=ged / n, spectral_distance=spec / n, isomorphic_rate=iso / n)
    # definitional semantics: the gendered anchor words still separate
    lg = setup.anchor_logits(model, tok, cfg.tau)
    man, woman = ANCHOR_VOCAB.index("man"), ANCHOR_VOCAB.index("woman")
    pred = ["female" if lg[i, woman] > lg[i, man] else "male" for i in range(len(lg))]
    out["definitional_acc"] = sum(p == g for p, g in zip(pred, setup.def_gender)) / len(pred)
    out["anchor_kl"] = float(F.kl_div(lg.log_softmax(-1), setup.anchor_ref.log_softmax(-1),
                                      log_target=True, reduction="batchmean"))
    # utility: paraphrase detection by cosine
    from sklearn.metrics import roc_auc_score

    pa = embed(model, tok, [a for a, _, _ in data["paraphrases"]])
    pb = embed(model, tok, [b for _, b, _ in data["paraphrases"]])
    out["paraphrase_auc"] = float(roc_auc_score([y for _, _, y in data["paraphrases"]],
                                                (pa * pb).sum(-1).numpy()))
    return out


def run_comparison(cfg: UGIDConfig, out_dir: Path, progress: bool = False) -> list[dict]:
    from ..pretrained import load_minilm

    out_dir.mkdir(parents=True, exist_ok=True)
    tok, model0 = load_minilm()
    for p in model0.parameters():
        p.requires_grad_(False)
    data = load_counterfactuals()
    setup = _Setup(tok, model0, data, cfg)
    rows = [{"model": "MiniLM (before)", "train_s": 0.0,
             **evaluate(model0, tok, data, setup, cfg)}]
    curves: dict[int, dict] = {}
    for method, label in (("cda", "MiniLM + CDA"), ("ugid", "MiniLM + UGID")):
        model, hist, secs = train(method, model0, tok, data, setup, cfg, progress)
        for h in hist:
            curves.setdefault(h["epoch"], {}).update(h)
        rows.append({"model": label, "train_s": secs, **evaluate(model, tok, data, setup, cfg)})
        if progress:
            r = rows[-1]
            print(f"  {label}: SEAT d {r['seat_effect']:+.3f}, edge {r['edge_term']:.4f}, "
                  f"paraphrase AUC {r['paraphrase_auc']:.3f}", flush=True)
    plot_curves([curves[k] for k in sorted(curves)], out_dir / "training_loss.png",
                title="UGID vs CDA fine-tuning of MiniLM")
    _plot_metrics(rows, out_dir / "metrics.png")
    (out_dir / "metrics.json").write_text(json.dumps(
        {"config": asdict(cfg), "train_pairs": len(data["train"]),
         "test_pairs": len(data["test"]), "rows": rows}, indent=1))
    return rows


def _plot_metrics(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = ["seat_effect", "occupation_logp_gap", "edge_term", "node_term",
            "aligned_edit_frac", "definitional_acc", "paraphrase_auc"]
    fig = Figure(figsize=(12, 3.2))
    FigureCanvasAgg(fig)
    for i, k in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        ax.bar(range(len(rows)), [abs(r[k]) if k == "seat_effect" else r[k] for r in rows],
               color=["0.6", "tab:orange", "tab:blue"][: len(rows)])
        ax.set_xticks(range(len(rows)), ["before", "CDA", "UGID"][: len(rows)], fontsize=7)
        ax.set_title("|SEAT d|" if k == "seat_effect" else k, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@register("ugid")
def run(full: bool, runs_dir: Path, progress: bool, resume: bool = False) -> list[dict]:
    cfg = UGIDConfig(steps=300) if full else UGIDConfig()
    rows = run_comparison(cfg, Path(runs_dir) / "ugid", progress)
    return [{"example": "UGID debiasing (MiniLM, held-out templates)", "model": r["model"],
             "seat_d": round(r["seat_effect"], 3),
             "occ_gap": round(r["occupation_logp_gap"], 4),
             "edge": round(r["edge_term"], 4), "node": round(r["node_term"], 4),
             "def_acc": round(r["definitional_acc"], 3),
             "para_auc": round(r["paraphrase_auc"], 3), "train_s": round(r["train_s"], 1)}
            for r in rows]
