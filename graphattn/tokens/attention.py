r"""Attention over a :class:`~graphattn.tokens.TokenGraph`: dense fast path or fused core.

.. math::
    \mathbf{y}_i = \sum_{j \in \mathcal{N}(i)} \operatorname{softmax}_{j \in \mathcal{N}(i)}
        \big(s\,\mathbf{q}_i \cdot \mathbf{k}_j + b_{ij}\big)\,\mathbf{v}_j

Dense kinds (:data:`~graphattn.tokens.graph.DENSE_KINDS`) run
``torch.nn.functional.scaled_dot_product_attention`` (``is_causal`` for ``causal``, the
graph's boolean mask for the bipartite kinds, no mask for ``full``); the others run
:func:`graphattn.ops.edge_attention` over the graph's edges. Queries without keys get zeros on
both paths (never NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from .graph import TokenGraph


def token_attention(q: Tensor, k: Tensor, v: Tensor, tg: TokenGraph, scale: float | None = None,
                    bias: Tensor | None = None, dense: bool | None = None) -> Tensor:
    """Softmax attention restricted to the edges of ``tg``.

    Args:
        q: ``[Tq, H, D]``, or ``[B, Tq, H, D]`` for ``B`` sequences sharing the pattern.
        k: ``[Tk, H, D]`` (or ``[B, Tk, H, D]``).
        v: ``[Tk, H, Dv]`` (or ``[B, Tk, H, Dv]``).
        tg: The pattern (``num_queries = Tq``, ``num_keys = Tk``).
        scale: Score scale, default ``1/sqrt(D)``.
        bias: Per-edge additive score bias ``[E, H]`` or ``[E]``; sparse path only, so with a
            bias pass ``dense=False`` for a dense kind (batched or not; ``ValueError`` otherwise).
        dense: Force (``True``) or forbid (``False``) the dense path; default: by kind.

    ``q``, ``k``, ``v`` must be floating tensors of one dtype and device with the same head
    count ``H`` (no broadcast of one key/value head), and ``k`` the head dim ``D`` of ``q``; both
    paths check this before running.

    Returns:
        ``[Tq, H, Dv]`` (or ``[B, Tq, H, Dv]``).
    """
    batched = isinstance(q, Tensor) and q.dim() == 4
    rank, form = (4, "[B, T, H, D]") if batched else (3, "[T, H, D]")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != rank:
            raise ValueError(f"'{name}' must be a {form} tensor (as 'q'), got "
                             f"{tuple(getattr(t, 'shape', ()))}")
    if batched and not q.size(0) == k.size(0) == v.size(0):
        raise ValueError(f"batched q, k, v must have the same B, got {q.size(0)}, {k.size(0)}, "
                         f"{v.size(0)}")
    _check_heads(q, k, v)
    td = 1 if batched else 0  # the token dimension
    if q.size(td) != tg.num_queries or k.size(td) != tg.num_keys or v.size(td) != tg.num_keys:
        raise ValueError(f"token graph has {tg.num_queries} queries and {tg.num_keys} keys; got "
                         f"q {q.size(td)}, k {k.size(td)}, v {v.size(td)} tokens")
    use_dense = tg.is_dense if dense is None else dense
    if use_dense and bias is not None:
        raise ValueError("the dense path takes no per-edge 'bias'; pass dense=False")
    if batched:
        if use_dense:
            return _dense(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), tg,
                          scale).transpose(1, 2)
        B = q.size(0)
        big = _replicated(tg, B)
        eb = None if bias is None else bias.repeat(B, *([1] * (bias.dim() - 1)))
        out = token_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), big, scale,
                              eb, dense=False)
        return out.view(B, tg.num_queries, *out.shape[1:])
    if not use_dense:
        return ops.edge_attention(q, k, v, tg.graph, kind="dot", scale=scale, bias=bias)
    return _dense(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), tg,
                  scale).transpose(0, 1)


def _check_heads(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Dtype, device, head count and head dim of ``[..., T, H, D]`` q, k, v (SDPA would
    broadcast a single key/value head and raise its own dtype error)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not t.is_floating_point():
            raise TypeError(f"'{name}' must be a floating-point tensor, got dtype {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"'{name}' has dtype {t.dtype} but 'q' has {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"'{name}' is on {t.device} but 'q' is on {q.device}")
    H = q.size(-2)
    if k.size(-2) != H or v.size(-2) != H:
        raise ValueError(f"'q', 'k', 'v' must share the head count {H}, got "
                         f"{k.size(-2)}, {v.size(-2)}")
    if k.size(-1) != q.size(-1):
        raise ValueError(f"'k' must have head dim {q.size(-1)} like 'q', got {k.size(-1)}")


def _dense(qh: Tensor, kh: Tensor, vh: Tensor, tg: TokenGraph, scale: float | None) -> Tensor:
    """SDPA on ``[..., H, T, D]`` heads-first tensors with ``tg``'s mask."""
    if tg.kind == "causal" and tg.num_queries == tg.num_keys:
        return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    if tg.kind in ("full", "bipartite"):
        return F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    mask = tg.dense_mask().to(qh.device)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    empty = ~mask.any(1)
    if empty.any():
        out = torch.where(empty.view(-1, 1), torch.zeros((), dtype=out.dtype), out)
    return out


def _replicated(tg: TokenGraph, B: int) -> TokenGraph:
    """``B`` disjoint copies of ``tg`` (cached on it)."""
    cache = tg.params.setdefault("_replicated", {})
    if B not in cache:
        off = torch.arange(B).repeat_interleave(tg.num_edges)
        ei = tg.edge_index.repeat(1, B)
        ei = torch.stack([ei[0] + off * tg.num_keys, ei[1] + off * tg.num_queries])
        cache.clear()
        cache[B] = TokenGraph(ei, B * tg.num_queries, B * tg.num_keys, "batched")
    return cache[B]


def batch_token_graphs(graphs: list[TokenGraph]):
    """Concatenates self-attention patterns of different sizes with PyG's ``Batch``.

    Returns:
        ``(batch, tg)``: the PyG ``Batch`` (``batch.batch`` maps tokens to graphs,
        ``batch.ptr`` holds offsets) and one block-diagonal :class:`TokenGraph` over all
        tokens, run on the sparse path.
    """
    from torch_geometric.data import Batch

    b = Batch.from_data_list([g.to_data() for g in graphs])
    T = int(b.num_nodes)
    return b, TokenGraph(b.edge_index, T, T, "batched")
