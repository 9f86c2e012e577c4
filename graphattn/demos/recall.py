r"""Associative recall with a tiny causal LM: softmax vs FastMKA vs MKA-Full, plus KV budgets.

Task (generated): ``n`` key–value pairs early in the sequence (``k1 v1 k2 v2 ...``), then
filler tokens, then a query marker and one of the keys; the model must emit that key's value
at the last position. The signal is far from the query, so it probes long-range routing.

Models: two pre-norm blocks (attention + MLP) with learned absolute positions, the attention
being causal softmax, :class:`~graphattn.nn.tokens.FastMKAttention` or
:class:`~graphattn.nn.tokens.MKAttention`; same width, optimiser and steps. The trained softmax
model is also evaluated with KV-cache budgets (attention sinks + recent window, and H2O
heavy-hitter eviction) as pruned causal token graphs. Reported: accuracy on held-out
sequences, training and inference tokens/s, and the peak resident memory of inference in a
fresh process.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..memory import status_kb as _status_kb
from ..nn.tokens import FastMKAttention, MKAttention
from ..tokens import TokenGraph, causal, heavy_hitter, sink_window, token_attention
from ..train import plot_curves
from . import register


@dataclass(frozen=True)
class RecallTask:
    n_keys: int = 16
    n_values: int = 16
    n_pairs: int = 6
    filler: int = 32
    n_filler_tokens: int = 8

    @property
    def vocab(self) -> int:
        return 2 + self.n_keys + self.n_values + self.n_filler_tokens

    @property
    def length(self) -> int:
        return 2 * self.n_pairs + self.filler + 2

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(tokens [B, T], target [B])``."""
        K, V = self.n_keys, self.n_values
        keys = torch.stack([torch.randperm(K, generator=generator)[: self.n_pairs]
                            for _ in range(batch)]) + 2
        vals = torch.randint(0, V, (batch, self.n_pairs), generator=generator) + 2 + K
        pairs = torch.stack([keys, vals], -1).flatten(1)
        fill = torch.randint(0, self.n_filler_tokens, (batch, self.filler),
                             generator=generator) + 2 + K + V
        pick = torch.randint(0, self.n_pairs, (batch,), generator=generator)
        query = keys.gather(1, pick[:, None])
        seq = torch.cat([pairs, fill, torch.ones(batch, 1, dtype=torch.long), query], 1)
        return seq, vals.gather(1, pick[:, None]).squeeze(1)


class SoftmaxAttention(nn.Module):
    """Plain multi-head softmax attention on a token graph (causal by default)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.w_q, self.w_k, self.w_v, self.w_o = (nn.Linear(dim, dim, bias=False)
                                                  for _ in range(4))

    def qk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, T, D = x.shape
        return (self.w_q(x).view(B, T, self.heads, -1), self.w_k(x).view(B, T, self.heads, -1))

    def forward(self, x: Tensor, tg: TokenGraph | None = None) -> Tensor:
        B, T, D = x.shape
        q, k = self.qk(x)
        o = token_attention(q, k, self.w_v(x).view(B, T, self.heads, -1),
                            tg if tg is not None else causal(T))
        return self.w_o(o.reshape(B, T, D))


class TinyLM(nn.Module):
    def __init__(self, kind: str, vocab: int, length: int, dim: int = 64, heads: int = 4,
                 layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        make = {"softmax": lambda: SoftmaxAttention(dim, heads),
                "fastmka": lambda: FastMKAttention(dim, heads),
                "mka": lambda: MKAttention(dim, heads)}[kind]
        self.attn = nn.ModuleList(make() for _ in range(layers))
        self.n1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.n2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                               nn.Linear(2 * dim, dim)) for _ in range(layers))
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens: Tensor, graphs: list[TokenGraph | None] | None = None) -> Tensor:
        """Logits at the last position, ``[B, vocab]``; ``graphs`` gives each layer's
        attention pattern (default causal)."""
        x = self.emb(tokens) + self.pos[: tokens.size(1)]
        for i, (attn, n1, n2, mlp) in enumerate(zip(self.attn, self.n1, self.n2, self.mlp)):
            tg = graphs[i] if graphs is not None else None
            x = x + attn(n1(x), tg)
            x = x + mlp(n2(x))
        return self.out(x[:, -1])


def train_model(kind: str, task: RecallTask, steps: int, batch: int = 64, seed: int = 0
                ) -> tuple[TinyLM, list[dict], float]:
    torch.manual_seed(seed)
    model = TinyLM(kind, task.vocab, task.length)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed + 1)
    history, t0 = [], time.perf_counter()
    for step in range(steps):
        x, y = task.sample(batch, gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"epoch": step, f"loss_{kind}": loss.item()})
    return model, history, time.perf_counter() - t0


@torch.no_grad()
def accuracy(model: TinyLM, x: Tensor, y: Tensor, budget: str | None = None,
             budget_size: int = 16) -> tuple[float, float]:
    """Accuracy and inference tokens/s; ``budget`` is None, ``"sink_window"`` or ``"h2o"``."""
    model.eval()
    T = x.size(1)
    t0 = time.perf_counter()
    if budget is None:
        pred = model(x).argmax(-1)
    elif budget == "sink_window":
        tg = sink_window(T, 4, budget_size - 4)
        pred = model(x, [tg] * len(model.attn)).argmax(-1)
    else:  # H2O: data-dependent eviction per sequence and layer
        preds = []
        for b in range(x.size(0)):
            xb = x[b: b + 1]
            h = model.emb(xb) + model.pos[:T]
            for attn, n1, n2, mlp in zip(model.attn, model.n1, model.n2, model.mlp):
                z = n1(h)
                q, k = attn.qk(z)
                tg = heavy_hitter(q[0], k[0], budget=budget_size, sinks=4, recent=4)
                h = h + attn(z, tg)
                h = h + mlp(n2(h))
            preds.append(model.out(h[:, -1]).argmax(-1))
        pred = torch.cat(preds)
    seconds = time.perf_counter() - t0
    return (pred == y).float().mean().item(), x.numel() / seconds



def _peak_worker(state: dict, kind: str, task: RecallTask, n: int, queue) -> None:
    torch.set_num_threads(1)
    model = TinyLM(kind, task.vocab, task.length)
    model.load_state_dict(state)
    x, _ = task.sample(n, torch.Generator().manual_seed(5))
    try:  # reset the high-water mark so that imports do not count (Linux clear_refs "5")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = _status_kb("VmRSS")
    with torch.no_grad():
        model(x)
    queue.put((_status_kb("VmHWM") - before) / 1024)


def inference_peak_mb(model: TinyLM, kind: str, task: RecallTask, n: int = 2048) -> float:
    """Peak resident-memory growth (MB) of one inference batch, in a fresh process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_worker, args=(model.state_dict(), kind, task, n, q))
    p.start()
    value = q.get(timeout=300)
    p.join()
    return float(value)


@register("recall")
def run(full: bool, runs_dir: Path, progress: bool, resume: bool = False) -> list[dict]:
    out_dir = Path(runs_dir) / "recall"
    out_dir.mkdir(parents=True, exist_ok=True)
    task = RecallTask(filler=96) if full else RecallTask()
    steps = 3000 if full else 1200
    x_test, y_test = task.sample(2000, torch.Generator().manual_seed(123))
    rows: list[dict[str, Any]] = []
    curves: dict[int, dict] = {}
    models = {}
    for kind, label in (("softmax", "causal softmax"), ("fastmka", "FastMKA (route-fused)"),
                        ("mka", "MKA-Full")):
        model, hist, secs = train_model(kind, task, steps)
        models[kind] = model
        for h in hist:
            curves.setdefault(h["epoch"], {"epoch": h["epoch"]}).update(h)
        acc, tps = accuracy(model, x_test, y_test)
        rows.append({"model": label, "accuracy": acc, "train_tokens_per_s":
                     steps * 64 * task.length / secs, "infer_tokens_per_s": tps,
                     "infer_peak_mb": inference_peak_mb(model, kind, task),
                     "params": sum(p.numel() for p in model.parameters()), "train_s": secs})
        if progress:
            print(f"  {label}: accuracy {acc:.3f}", flush=True)
    soft = models["softmax"]
    budget = 16
    for mode, label in (("sink_window", f"softmax + KV budget {budget} (4 sinks + window)"),
                        ("h2o", f"softmax + KV budget {budget} (H2O heavy hitters)")):
        n = 2000 if mode == "sink_window" else 300
        acc, tps = accuracy(soft, x_test[:n], y_test[:n], mode, budget)
        rows.append({"model": label, "accuracy": acc, "train_tokens_per_s": None,
                     "infer_tokens_per_s": tps, "infer_peak_mb": None,
                     "params": rows[0]["params"], "train_s": 0.0})
    plot_curves([curves[k] for k in sorted(curves)], out_dir / "training_loss.png",
                title=f"associative recall (T={task.length})")
    (out_dir / "metrics.json").write_text(json.dumps(
        {"task": task.__dict__, "length": task.length, "steps": steps, "rows": rows}, indent=1))
    return [{"example": f"associative recall (T={task.length}, {task.n_pairs} pairs)",
             "model": r["model"], "accuracy": round(r["accuracy"], 4),
             "infer_tok_per_s": round(r["infer_tokens_per_s"]),
             "peak_mb": None if r["infer_peak_mb"] is None else round(r["infer_peak_mb"], 1),
             "params": r["params"], "train_s": round(r["train_s"], 1)} for r in rows]
