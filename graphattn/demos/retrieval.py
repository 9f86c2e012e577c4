r"""Code-search retrieval with MiniLM: ColBERT-Att vs plain MaxSim vs sentence cosine vs
TF-IDF, in one run.

Data: :func:`~graphattn.datasets.docstrings.load_docstring_set` (query = a public numpy /
scipy / scikit-learn function's one-line summary, the one relevant document = the rest of its
docstring). The queries are split in two halves: the ``dev`` half picks ColBERT-Att's
:math:`(\beta, \gamma)` on a small grid, the ``test`` half reports; every document of the set
is a candidate for every query.

Encoders: all-MiniLM-L6-v2 (offline), token embeddings = the last layer's hidden states,
documents truncated to ``max_doc_tokens`` WordPieces (the model was trained on 256).
Token importance (:func:`~graphattn.nn.tokens.attention_importance`) = attention received in
the last layer, averaged over heads, ``[CLS]`` and ``[SEP]`` excluded (they soak up attention
in BERT-style models) and normalised to mean 1. MaxSim and ColBERT-Att match the tokens other
than ``[CLS]``/``[SEP]``; the sentence embedding is the sentence-transformers mean pooling.
MiniLM is used as is: ColBERT's trained projection and query augmentation are not part of it,
so the late-interaction figures are those of a zero-shot token matcher.

Metrics: Recall@1, Recall@10 and MRR (:mod:`graphattn.metrics`, ties count half).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..datasets.docstrings import RetrievalSet, load_docstring_set
from ..metrics import ranking_metrics, ranks
from ..nn.tokens import ColBERTAttention, attention_importance
from ..pretrained import mean_pool
from . import register


@dataclass
class RetrievalConfig:
    n: int | None = 300  # query/document pairs (None: the whole set)
    max_doc_tokens: int = 128
    max_query_tokens: int = 48
    betas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    gammas: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    seed: int = 0


@dataclass
class Encoded:
    tokens: Tensor  # [B, L, D]
    mask: Tensor  # [B, L] tokens that take part in matching
    importance: Tensor  # [B, L]
    sentence: Tensor  # [B, D]


@torch.no_grad()
def encode(tok, model, texts: list[str], max_tokens: int, batch: int = 32) -> Encoded:
    """MiniLM token embeddings, importances and sentence embeddings of ``texts``."""
    toks, masks, imps, sents = [], [], [], []
    special = set(tok.all_special_ids)
    for s in range(0, len(texts), batch):
        b = tok(texts[s:s + batch], padding="max_length", truncation=True,
                max_length=max_tokens, return_tensors="pt")
        out = model(**b, output_attentions=True)
        valid = b["attention_mask"].bool()
        keep = valid & ~torch.isin(b["input_ids"], torch.tensor(sorted(special)))
        toks.append(out.last_hidden_state)
        masks.append(keep)
        imps.append(attention_importance(out.attentions[-1], valid, keep))
        sents.append(mean_pool(out.last_hidden_state, b["attention_mask"]))
    return Encoded(torch.cat(toks), torch.cat(masks), torch.cat(imps), torch.cat(sents))


def _metrics(scores: Tensor, targets: Tensor) -> dict[str, float]:
    m = ranking_metrics(ranks(scores, targets), ks=(1, 10))
    return {"recall@1": m["hits@1"], "recall@10": m["hits@10"], "mrr": m["mrr"]}


def _recall_curve(scores: Tensor, targets: Tensor, kmax: int = 20) -> list[float]:
    r = ranks(scores, targets)
    return [float((r <= k).double().mean()) for k in range(1, kmax + 1)]


def tfidf_scores(rs: RetrievalSet, queries: list[int]) -> Tensor:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit(rs.docs)
    S = vec.transform([rs.queries[i] for i in queries]) @ vec.transform(rs.docs).T
    return torch.from_numpy(np.asarray(S.todense()))


def run_comparison(cfg: RetrievalConfig, out_dir: Path, progress: bool = False) -> dict:
    from ..pretrained import load_minilm

    out_dir.mkdir(parents=True, exist_ok=True)
    rs = load_docstring_set()
    if cfg.n is not None:
        rs = rs.subset(cfg.n, cfg.seed)
    perm = torch.randperm(len(rs), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    dev, test = sorted(perm[: len(rs) // 2]), sorted(perm[len(rs) // 2:])
    tok, model = load_minilm()
    t0 = time.perf_counter()
    Q = encode(tok, model, rs.queries, cfg.max_query_tokens)
    D = encode(tok, model, rs.docs, cfg.max_doc_tokens)
    encode_s = time.perf_counter() - t0
    if progress:
        print(f"  encoded {len(rs)} queries and documents in {encode_s:.0f} s", flush=True)

    def late(beta: float, gamma: float, split: list[int], plain: bool = False) -> Tensor:
        layer = ColBERTAttention(beta=beta, gamma=gamma)
        s = torch.tensor(split)
        return layer(Q.tokens[s], D.tokens, Q.mask[s], D.mask,
                     None if plain else Q.importance[s], None if plain else D.importance)

    grid = {}
    tdev = torch.tensor(dev)
    for gamma in cfg.gammas:  # one max-match pass per gamma; beta only reweights its result
        best_dev = ColBERTAttention(gamma=gamma).max_matches(Q.tokens[tdev], D.tokens,
                                                            Q.mask[tdev], D.mask, D.importance)
        for beta in cfg.betas:
            u = torch.exp(beta * Q.importance[tdev]) * Q.mask[tdev]
            grid[f"{beta},{gamma}"] = _metrics((best_dev * u[:, None]).sum(-1), tdev)["mrr"]
    best = max(grid, key=grid.get)
    beta, gamma = (float(x) for x in best.split(","))
    if progress:
        print(f"  ColBERT-Att dev MRR grid best beta={beta} gamma={gamma}: {grid[best]:.3f}",
              flush=True)
    ttest = torch.tensor(test)
    rows, curves = [], {}
    methods = {
        "TF-IDF": lambda: tfidf_scores(rs, test),
        "MiniLM sentence cosine": lambda: Q.sentence[ttest] @ D.sentence.T,
        "MaxSim (ColBERT late interaction)": lambda: late(0.0, 0.0, test, plain=True),
        f"ColBERT-Att (beta={beta:g}, gamma={gamma:g}, tuned on dev)":
            lambda: late(beta, gamma, test),
        "ColBERT-Att (beta=1, gamma=0.5, untuned)": lambda: late(1.0, 0.5, test),
    }
    for name, fn in methods.items():
        t = time.perf_counter()
        S = fn()
        secs = time.perf_counter() - t
        rows.append({"method": name, **_metrics(S, ttest), "score_s": secs})
        curves[name] = _recall_curve(S, ttest)
        if progress:
            r = rows[-1]
            print(f"  {name}: R@1 {r['recall@1']:.3f} R@10 {r['recall@10']:.3f} "
                  f"MRR {r['mrr']:.3f}", flush=True)
    _plot(curves, out_dir / "recall_at_k.png", len(test), len(rs))
    result = {"config": asdict(cfg), "pairs": len(rs), "dev_queries": len(dev),
              "test_queries": len(test), "versions": rs.versions, "encode_s": encode_s,
              "dev_mrr_grid": grid, "beta": beta, "gamma": gamma, "rows": rows,
              "recall_curves": curves}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
    return result


def _plot(curves: dict[str, list[float]], path: Path, n_test: int, n_docs: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, c in curves.items():
        ax.plot(range(1, len(c) + 1), c, marker=".", label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k")
    ax.set_title(f"docstring retrieval: {n_test} test queries, {n_docs} documents", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@register("retrieval")
def run(full: bool, runs_dir: Path, progress: bool, resume: bool = False) -> list[dict]:
    cfg = RetrievalConfig(n=None, max_doc_tokens=256) if full else RetrievalConfig()
    res = run_comparison(cfg, Path(runs_dir) / "retrieval", progress)
    return [{"example": f"docstring retrieval ({res['test_queries']} queries, "
                        f"{res['pairs']} docs)", "model": r["method"],
             "recall@1": round(r["recall@1"], 3), "recall@10": round(r["recall@10"], 3),
             "mrr": round(r["mrr"], 3)} for r in res["rows"]]
