r"""Pure-torch reference of every core op: the fallback path AND the test oracle.

Everything here works on per-edge tensors in the destination-sorted CSR order of an
:class:`~graphattn.index.EdgeGraph` (``graph.src`` / ``graph.dst``), takes node counts from
the graph (no ``.item()`` host syncs, so it traces under ``torch.compile``) and differentiates
with plain autograd. It materialises ``[E, H, C]`` messages; the native path does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..index import EdgeGraph

KINDS = {"dot": 0, "additive": 1, "v2": 2}


def segment_softmax(scores: Tensor, dst: Tensor, num_dst: int) -> Tensor:
    """Softmax of ``scores[E, H]`` over the edges that share a destination.

    Rows whose scores are all ``-inf`` (and destinations without edges) give zeros; a NaN or
    ``+inf`` score makes its (row, head) NaN, as ``torch.softmax`` does.
    """
    H = scores.size(1)
    idx = dst.view(-1, 1).expand(-1, H)
    mx = scores.new_full((num_dst, H), float("-inf"))
    mx = mx.scatter_reduce(0, idx, scores.detach(), "amax", include_self=True)
    mx = torch.where(mx == float("-inf"), torch.zeros_like(mx), mx)
    ex = (scores - mx.index_select(0, dst)).exp()
    den = scores.new_zeros(num_dst, H).index_add(0, dst, ex).index_select(0, dst)
    return ex / torch.where(den == 0, torch.ones_like(den), den)


def segment_reduce(src: Tensor, ptr: Tensor, reduce: str) -> tuple[Tensor, Tensor | None]:
    """Sum / mean / max of ``src[E, F]`` over the CSR segments ``ptr``.

    Returns ``(out[N, F], argmax[N, F] or None)``; empty segments give 0 (argmax -1).
    """
    if reduce not in ("sum", "mean", "max"):
        raise ValueError(f"'reduce' must be 'sum', 'mean' or 'max', got {reduce!r}")
    N, E, Fdim = ptr.size(0) - 1, src.size(0), src.size(1)
    deg = ptr[1:] - ptr[:-1]
    seg = torch.repeat_interleave(torch.arange(N, device=src.device), deg, output_size=E)
    if reduce == "max":
        idx = seg.view(-1, 1).expand(-1, Fdim)
        out = src.new_full((N, Fdim), float("-inf")).scatter_reduce(
            0, idx, src, "amax", include_self=True
        )
        empty = (deg == 0).view(-1, 1)
        out = torch.where(empty, torch.zeros_like(out), out)
        # argmax: first edge of the segment that attains the max
        pos = torch.arange(E, device=src.device).view(-1, 1).expand(-1, Fdim)
        at = out.index_select(0, seg)
        hit = (src == at) | (src.isnan() & at.isnan())  # a NaN is its segment's max
        cand = torch.where(hit, pos, torch.full_like(pos, E))
        arg = torch.full((N, Fdim), E, dtype=torch.long, device=src.device)
        arg = arg.scatter_reduce(0, idx, cand, "amin", include_self=True)
        arg = torch.where(empty, torch.full_like(arg, -1), arg)
        return out, arg
    out = src.new_zeros(N, Fdim).index_add(0, seg, src)
    if reduce == "mean":
        out = out / deg.clamp(min=1).to(src.dtype).view(-1, 1)
    return out, None


def scale_channels(m: Tensor, coef: Tensor, blocks: tuple[tuple[int, int], ...]) -> Tensor:
    r"""``m [E, F]`` with every channel of the ``blocks`` (``(mul, d)``: ``mul`` channels of
    ``d`` consecutive columns) multiplied by its factor in ``coef [E, sum mul]``. Each block is
    one broadcast product ``[E, mul, d] * [E, mul, 1]``; the blocks are cut with
    :func:`torch.split` and joined with one :func:`torch.cat`."""
    E = m.shape[0]
    ms = torch.split(m, [mul * d for mul, d in blocks], -1)
    cs = torch.split(coef, [mul for mul, _ in blocks], -1)
    out = [mb * c if d == 1 else (mb.reshape(E, mul, d) * c.unsqueeze(-1)).view(E, mul * d)
           for mb, c, (mul, d) in zip(ms, cs, blocks)]
    return torch.cat(out, -1) if len(out) > 1 else out[0]


def channel_dots(m: Tensor, g: Tensor, blocks: tuple[tuple[int, int], ...]) -> Tensor:
    """``[E, sum mul]``: per channel of the ``blocks``, the dot product of its ``d`` columns in
    ``m`` and ``g`` (both ``[E, F]``): the gradient of :func:`scale_channels` for ``coef``."""
    E = m.shape[0]
    ms = torch.split(m, [mul * d for mul, d in blocks], -1)
    gs = torch.split(g, [mul * d for mul, d in blocks], -1)
    out = [mb * gb if d == 1 else (mb.reshape(E, mul, d) * gb.reshape(E, mul, d)).sum(-1)
           for mb, gb, (mul, d) in zip(ms, gs, blocks)]
    return torch.cat(out, -1) if len(out) > 1 else out[0]


def heads_to_channels(alpha: Tensor, blocks: tuple[tuple[int, int], ...]) -> Tensor:
    r"""Per-head weights ``alpha [E, H]`` dealt to the channels of the ``blocks`` ``(mul, d)``:
    channel ``u`` of each block belongs to head ``u mod H``. Returns ``[E, sum mul]`` (repeats
    and slices only, so the backward is a cheap sum)."""
    H = alpha.shape[1]
    if all(mul % H == 0 for mul, _ in blocks):  # every block starts at head 0: one repeat
        return alpha.repeat(1, sum(mul for mul, _ in blocks) // H)
    parts = [alpha.repeat(1, -(-mul // H))[:, :mul] for mul, _ in blocks]
    return torch.cat(parts, -1) if len(parts) > 1 else parts[0]


def scaled_aggregate(m: Tensor, coef: Tensor, ptr: Tensor, blocks: tuple[tuple[int, int], ...],
                     head_coef: Tensor | None = None) -> Tensor:
    """Sum over the CSR segments ``ptr`` of :func:`scale_channels` ``(m, coef, blocks)``, the
    factors times :func:`heads_to_channels` ``(head_coef)`` when given."""
    if head_coef is not None:
        coef = coef * heads_to_channels(head_coef, blocks)
    return segment_reduce(scale_channels(m, coef, blocks), ptr, "sum")[0]


def edge_query_dot(q: Tensor, k: Tensor, dst: Tensor) -> Tensor:
    """``s[e, h] = q[dst[e], h] . k[e]`` for ``q [N, H, F]`` and per-edge ``k [E, F]`` (an
    ``[E, H, F]`` temporary)."""
    return (q.index_select(0, dst) * k.unsqueeze(1)).sum(-1)


def edge_pair_dot(a: Tensor, b: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """``s[e, h] = a[dst[e], h] . b[src[e], h]`` for ``a [N_dst, H, F]``, ``b [N_src, H, F]``
    (two ``[E, H, F]`` gathers)."""
    return (a.index_select(0, dst) * b.index_select(0, src)).sum(-1)


def edge_scores(
    q: Tensor,
    k: Tensor,
    graph: EdgeGraph,
    kind: str,
    bias: Tensor | None,
    att: Tensor | None,
    scale: float,
    negative_slope: float,
) -> Tensor:
    """Scores ``[E, H]`` (CSR order) of the kinds of :func:`graphattn.ops.edge_attention`."""
    qi = q.index_select(0, graph.dst)
    kj = k.index_select(0, graph.src)
    b = 0.0 if bias is None else bias
    if kind == "dot":
        return (qi * kj).sum(-1) * scale + b
    if kind == "additive":
        return F.leaky_relu(qi[..., 0] + kj[..., 0] + b, negative_slope)
    if kind == "v2":
        return (F.leaky_relu(qi + kj, negative_slope) * att).sum(-1) + b
    raise ValueError(f"'kind' must be one of {sorted(KINDS)}, got {kind!r}")


def edge_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    graph: EdgeGraph,
    kind: str,
    bias: Tensor | None,
    att: Tensor | None,
    scale: float,
    negative_slope: float,
    dropout: float,
    training: bool,
    return_weights: bool,
) -> tuple[Tensor, Tensor | None]:
    """Reference fused attention; per-edge tensors in CSR order, shapes as the public op."""
    s = edge_scores(q, k, graph, kind, bias, att, scale, negative_slope)
    alpha = segment_softmax(s, graph.dst, graph.num_dst)
    w = F.dropout(alpha, p=dropout, training=training) if dropout > 0 else alpha
    msg = v.index_select(0, graph.src) * w.unsqueeze(-1)  # [E, H, Dv]
    out = v.new_zeros(graph.num_dst, v.size(1), v.size(2)).index_add(0, graph.dst, msg)
    return out, (alpha if return_weights else None)
