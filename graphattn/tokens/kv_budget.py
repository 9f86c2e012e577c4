r"""KV-cache budgets as edge pruning of the causal token graph (KV-cache survey, 2026).

Eviction keeps, for each query ``i``, a subset of the keys ``j <= i``; in the graph view it
prunes key nodes from the causal edge set (``../shared/papers/TOKEN_PAPERS.md`` section 17):

* :func:`sink_window`: StreamingLLM-style attention sinks (the first ``sinks`` tokens) plus
  the ``window`` most recent tokens;
* :func:`heavy_hitter`: H2O-style greedy eviction. Before query ``i`` attends, if its cache
  (the kept keys plus ``i``) exceeds ``budget``, the key with the smallest attention mass
  accumulated so far is evicted, never a sink nor one of the ``recent >= 1`` latest tokens
  (the query itself is always kept).

With a budget at least the sequence length nothing is evicted and both equal full causal
attention.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_int
from .graph import TokenGraph


def sink_window(T: int, sinks: int, window: int) -> TokenGraph:
    """Edges ``j -> i`` with ``j <= i`` and (``j < sinks`` or ``i - j < window``); ints
    ``T >= 0``, ``sinks >= 0``, ``window >= 1``."""
    check_int(T, "T", 0)
    check_int(sinks, "sinks", 0)
    check_int(window, "window", 1)
    i = torch.arange(T).unsqueeze(1)
    j = torch.arange(T).unsqueeze(0)
    dst, src = ((j <= i) & ((j < sinks) | (i - j < window))).nonzero(as_tuple=True)
    return TokenGraph(torch.stack([src, dst]), T, T, "kv_sink_window",
                      params={"sinks": sinks, "window": window})


@torch.no_grad()
def heavy_hitter(q: Tensor, k: Tensor, budget: int, sinks: int = 0, recent: int = 1,
                 scale: float | None = None) -> TokenGraph:
    """H2O eviction for one sequence: ``q, k [T, H, D]``; each query keeps at most ``budget``
    keys. Attention mass is averaged over heads and accumulated per key.

    ``recent >= 1``: the current query is always kept (as in H2O; with ``recent = 0`` it would
    be its own eviction candidate with mass 0 and every new token would evict itself);
    ``sinks >= 0`` and ``budget >= max(1, sinks + recent)``."""
    check_int(budget, "budget", 1)
    check_int(sinks, "sinks", 0)
    check_int(recent, "recent", 1)
    if q.dim() != 3 or k.shape != q.shape:
        raise ValueError(f"q and k must be equal [T, H, D] tensors, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    if budget < max(1, sinks + recent):
        raise ValueError(f"budget ({budget}) must be >= max(1, sinks + recent) "
                         f"({max(1, sinks + recent)})")
    T, H, D = q.shape
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    acc = torch.zeros(T, dtype=torch.float64)
    cache: list[int] = []
    src, dst = [], []
    for i in range(T):
        cache.append(i)
        if len(cache) > budget:
            cand = [j for j in cache if j >= sinks and j <= i - recent]
            victim = min(cand, key=lambda j: (acc[j].item(), j))
            cache.remove(victim)
        idx = torch.tensor(cache)
        p = torch.softmax((k[idx] * q[i]).sum(-1) * scale, dim=0).mean(1)  # [len, ] over heads
        acc[idx] += p.double()
        src += cache
        dst += [i] * len(cache)
    return TokenGraph(torch.tensor([src, dst], dtype=torch.long), T, T, "kv_heavy_hitter",
                      params={"budget": budget, "sinks": sinks, "recent": recent})
