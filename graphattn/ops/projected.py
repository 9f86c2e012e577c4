r"""Dot-product edge attention of linear projections with a memory-lean backward.

.. math::
    \mathbf{q}_i = W_q \mathbf{x}^{dst}_i + \mathbf{b}_q,\quad
    \mathbf{k}_j = W_k \mathbf{x}^{src}_j + \mathbf{b}_k,\quad
    \mathbf{v}_j = W_v \mathbf{x}^{src}_j + \mathbf{b}_v,\qquad
    \mathbf{o}^{(h)}_i = \sum_{j \in \mathcal{N}(i)}
        \operatorname{softmax}_{j}\big(\text{scale}\ \mathbf{q}^{(h)}_i \cdot
        \mathbf{k}^{(h)}_j\big)\, \mathbf{v}^{(h)}_j
        \;\big[+\, (W_s \mathbf{x}^{dst}_i + \mathbf{b}_s)^{(h)}\big]

(the attention of PyG's ``TransformerConv``, with its optional root term
:math:`W_s \mathbf{x}^{dst}_i + \mathbf{b}_s`, ``lin_skip``). The numbers are those of the
composition :func:`graphattn.ops.linear` (``F.linear``, on oneDNN where that is faster) +
:func:`graphattn.ops.edge_attention` (+ the root term); what differs is the memory on the
native CPU path:

* forward: the root term is added into the attention's output by blocks of rows (no second
  ``[N, H * C]`` buffer);
* backward: the attention backward runs as its two passes, each by blocks of rows (about
  1 MB of gradients each). The destination pass gives :math:`\partial\mathbf{q}` of a block of
  destination rows, which is turned into those rows of the gradient of
  :math:`\mathbf{x}^{dst}` and their terms of the gradients of :math:`W_q, \mathbf{b}_q`
  (and of :math:`W_s, \mathbf{b}_s`, from the same rows of the output gradient) before the
  next block; the source pass does the same with :math:`\partial\mathbf{k},
  \partial\mathbf{v}` of a block of source rows, the gradient of :math:`\mathbf{x}^{src}` and
  :math:`W_k, \mathbf{b}_k, W_v, \mathbf{b}_v`.
  The destination pass leaves each edge's softmax weight and score gradient
  :math:`(p_e, \partial s_e)` in an ``[E, 2H]`` record where that is no larger than the
  output gradient (mean in-degree at most C / 2), so that the source pass reads them instead
  of recomputing the scores (the source pass alone at E = 200k, H = 4, C = 32: 10.3 -> 6.4 ms
  on 2 cores).

The composition holds all three ``[N, H, C]`` gradients at once (they leave one autograd node
together) and the root term's output beside the attention's; this holds one block at a time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..index import EdgeGraph
from .dense import input_grad, linear, product

_DOT, _ADDITIVE, _V2 = 0, 1, 2
_BLOCK_BYTES = 1 << 20  # one block of rows: root-term products, grads in the backward


def _project(x_dst, x_src, wq, bq, wk, bk, wv, bv, heads):
    """q, k, v ``[N, H, D]``; without ``wv`` the values are the keys (v is k)."""
    q = linear(x_dst, wq, bq)
    k = linear(x_src, wk, bk)
    v = k if wv is None else linear(x_src, wv, bv)
    # explicit widths: -1 is ambiguous for a side without nodes
    return tuple(t.view(t.size(0), heads, t.size(1) // heads) for t in (q, k, v))


def _attend(q, k, v, att, graph_tensors, kind, scale, slope, validated):
    ptr, src, cp, ce, cd = graph_tensors
    out, lse, _ = torch.ops.graphattn.edge_attention(q, k, v, att, None, ptr, src, cp, ce, cd,
                                                     kind, scale, slope, False, validated)
    return out, lse


def _aliases(params: tuple) -> tuple:
    """A view of each input, for the recomputation of a backward with ``create_graph=True``:
    the gradient with respect to the view counts only the paths through this input's place in
    the function, not those through another input computed from it (``x_dst`` is ``x_src``,
    or scores computed from ``x``), which autograd adds on its own; the views keep the
    second derivatives connected to the inputs."""
    return tuple(None if t is None else t.view_as(t) for t in params)


def _rows(n: int, width: int, itemsize: int) -> int:
    """Rows of a block of ``width`` columns: about :data:`_BLOCK_BYTES` (at least 256)."""
    return max(256, _BLOCK_BYTES // max(1, width * itemsize))


def _accumulate(g: Tensor, x: Tensor, g_w: Tensor | None, g_b: Tensor | None) -> None:
    """Adds one block's terms ``g^T x`` and ``sum(g)`` to the weight and bias gradients."""
    if g_w is not None:
        g_w.addmm_(g.t(), x)
    if g_b is not None:
        g_b += g.sum(0)


def _recompute_grads(params: tuple, need: tuple, grad_out: Tensor, forward) -> list:
    """The gradients of a ``create_graph=True`` backward: ``forward(*aliases)`` recomputed with
    autograd recording, differentiated at the aliases of the wanted inputs (zeros for an
    input it does not reach)."""
    wanted = [i for i, t in enumerate(params) if t is not None and need[i]]
    grads: list = [None] * len(params)
    if wanted:
        with torch.enable_grad():
            params = _aliases(params)
            out = forward(*params)
        res = torch.autograd.grad(out, [params[i] for i in wanted], grad_out,
                                  create_graph=True, allow_unused=True)
        for i, g in zip(wanted, res):
            grads[i] = g if g is not None else torch.zeros_like(params[i])
    return grads


def _add_root(out: Tensor, x_dst: Tensor, ws: Tensor, bs: Tensor | None) -> None:
    """``out [N, H * Dv] += x_dst W_s^T + b_s`` in place, by blocks of rows: each block's
    product (:func:`graphattn.ops.dense.product`, oneDNN where faster) is added while it is
    in cache, so no second ``[N, H * Dv]`` buffer exists."""
    rows = _rows(out.size(0), out.size(1), out.element_size())
    for b in range(0, out.size(0), rows):
        out[b:b + rows] += product(x_dst[b:b + rows], ws, bs)


class _ProjectedAttention(torch.autograd.Function):
    """Attention of kind ``dot`` or ``v2`` of projections, with the lean backward of
    :func:`projected_attention` / :func:`projected_v2_attention`."""

    @staticmethod
    def forward(ctx, x_dst, x_src, wq, bq, wk, bk, wv, bv, ws, bs, att, ptr, src, cp, ce, cd,
                heads, kind, scale, slope, validated):
        q, k, v = _project(x_dst, x_src, wq, bq, wk, bk, wv, bv, heads)
        out, lse = _attend(q, k, v, att, (ptr, src, cp, ce, cd), kind, scale, slope, validated)
        if ws is not None:
            _add_root(out.view(out.size(0), out.size(1) * out.size(2)), x_dst, ws, bs)
        ctx.save_for_backward(x_dst, x_src, wq, bq, wk, bk, wv, bv, ws, bs, att, q, k, v, lse,
                              ptr, src, cp, ce, cd)
        ctx.heads, ctx.kind, ctx.scale = heads, kind, scale
        ctx.slope, ctx.validated = slope, validated
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (x_dst, x_src, wq, bq, wk, bk, wv, bv, ws, bs, att, q, k, v, lse, ptr, src, cp, ce,
         cd) = ctx.saved_tensors
        need = ctx.needs_input_grad
        params = (x_dst, x_src, wq, bq, wk, bk, wv, bv, ws, bs, att)
        none = (None,) * 10  # graph tensors, heads, kind, scale, slope, validated
        kind, scale, slope = ctx.kind, ctx.scale, ctx.slope
        if torch.is_grad_enabled():  # create_graph=True: recompute with autograd recording
            def forward(x_dst, x_src, wq, bq, wk, bk, wv, bv, ws, bs, att):
                q_, k_, v_ = _project(x_dst, x_src, wq, bq, wk, bk, wv, bv, ctx.heads)
                out, _ = _attend(q_, k_, v_, att, (ptr, src, cp, ce, cd), kind, scale, slope,
                                 ctx.validated)
                return out if ws is None else out + F.linear(x_dst, ws, bs).view(out.shape)

            return (*_recompute_grads(params, need, grad_out, forward), *none)
        ops = torch.ops.graphattn
        validated, shared = ctx.validated, wv is None

        def zeros_if(t, i):  # a zero gradient to accumulate into, where one is wanted
            return t.new_zeros(t.shape) if t is not None and need[i] else None

        g_att = zeros_if(att, 10)
        g_wq, g_bq, g_wk, g_bk = zeros_if(wq, 2), zeros_if(bq, 3), zeros_if(wk, 4), zeros_if(bk, 5)
        g_wv, g_bv, g_ws, g_bs = zeros_if(wv, 6), zeros_if(bv, 7), zeros_if(ws, 8), zeros_if(bs, 9)
        g_xd = x_dst.new_empty(x_dst.shape) if need[0] else None
        g_xs = x_src.new_empty(x_src.shape) if need[1] else None
        Nd, Ns, H = q.size(0), k.size(0), q.size(1)
        # destination pass, by blocks of destination rows: each block's grad q (and rows of
        # the output gradient, for the root term) -> its rows of grad x_dst and its terms of
        # the grads of W_q, b_q (W_s, b_s); the block is freed before the next. The CSR rows
        # [b, e) are the edges ptr[b]..ptr[e] of src, re-based to start at 0.
        stats = q.new_empty(Nd, 2 * H)
        # each edge's (p_e, ds_e), left by the destination pass for the source pass, which
        # then need not recompute the scores, where that [E, 2H] record is no larger than
        # grad_out [N_dst, H, Dv] (mean in-degree <= Dv / 2; the fused kernel's rule,
        # use_edge_record in csrc/cpu/edge_attention.cpp)
        record = (q.new_empty(src.numel(), 2 * H) if 2 * src.numel() <= Nd * v.size(2)
                  else None)
        width = q.size(1) * q.size(2) + (grad_out.size(1) * grad_out.size(2) if ws is not None
                                         else 0)
        rows = _rows(Nd, width, q.element_size())
        starts = list(range(0, Nd, rows))
        offsets = ptr[starts + [Nd]].tolist() if starts else []
        for n, b in enumerate(starts):
            e, lo, hi = min(b + rows, Nd), offsets[n], offsets[n + 1]
            gq, gatt, _, st = ops.edge_attention_backward_dst(
                grad_out[b:e], None, q[b:e], k, v, att, None, lse[b:e], ptr[b:e + 1] - lo,
                src[lo:hi], kind, scale, slope, validated,
                None if record is None else record[lo:hi])
            stats[b:e] = st
            if g_att is not None:
                g_att += gatt
            g, xd = gq.flatten(1), x_dst[b:e]
            go = grad_out[b:e].reshape(e - b, -1).contiguous() if ws is not None else None
            if g_xd is not None:
                if go is None:
                    g_xd[b:e] = input_grad(g, wq)
                else:
                    torch.add(input_grad(g, wq), input_grad(go, ws), out=g_xd[b:e])
            _accumulate(g, xd, g_wq, g_bq)
            if go is not None:
                _accumulate(go, xd, g_ws, g_bs)
            del gq, g, go
        # source pass, by blocks of source rows: each block's grad k, grad v -> its rows of
        # grad x_src and its terms of the grads of W_k, b_k, W_v, b_v
        width = k.size(1) * k.size(2) + (0 if shared else v.size(1) * v.size(2))
        rows = _rows(Ns, width, k.element_size())
        for b in range(0, Ns, rows):
            e = min(b + rows, Ns)
            # the first block's call checks the indices; they are the same for the others
            # (v is k: one gradient, grad k + grad v, in gk)
            gk, gv = ops.edge_attention_backward_src(grad_out, None, q, k, v, att, None, stats,
                                                     ptr, src, cp, ce, cd, kind, scale, slope,
                                                     shared, validated or b > 0, b, e, record)
            gk, gv, xs = gk.flatten(1), None if shared else gv.flatten(1), x_src[b:e]
            if g_xs is not None:
                if shared:
                    g_xs[b:e] = input_grad(gk, wk)
                else:
                    torch.add(input_grad(gk, wk), input_grad(gv, wv), out=g_xs[b:e])
            _accumulate(gk, xs, g_wk, g_bk)
            if not shared:
                _accumulate(gv, xs, g_wv, g_bv)
            del gk, gv
        return (g_xd, g_xs, g_wq, g_bq, g_wk, g_bk, g_wv, g_bv, g_ws, g_bs, g_att, *none)



def additive_stats(lse: Tensor, q: Tensor) -> Tensor:
    """The ``[N_dst, 2H]`` destination record that
    ``edge_attention_backward_additive_values`` reads: ``[lse_i, q_i]`` per row, with ``+inf``
    for a fully masked head's ``-inf`` (the layout of the fused kernel's own record,
    ``additive_stats`` in ``csrc/cpu/edge_attention.cpp``)."""
    N, H = lse.shape
    return torch.cat([lse.masked_fill(lse == -math.inf, math.inf), q.reshape(N, H)], 1)


class _ProjectedAdditiveAttention(torch.autograd.Function):
    """GAT's attention of the values ``x W^T + b`` with the lean backward of
    :func:`projected_additive_attention`."""

    @staticmethod
    def forward(ctx, x, w, b, a_dst, a_src, ptr, src, cp, ce, cd, heads, slope, validated):
        h = product(x, w, b)
        h = h.view(h.size(0), heads, h.size(1) // heads)
        out, lse, _ = torch.ops.graphattn.edge_attention(a_dst, a_src, h, None, None, ptr, src,
                                                         cp, ce, cd, _ADDITIVE, 1.0, slope,
                                                         False, validated)
        ctx.save_for_backward(x, w, b, a_dst, a_src, h, lse, ptr, src, cp, ce, cd)
        ctx.heads, ctx.slope, ctx.validated = heads, slope, validated
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w, b, a_dst, a_src, h, lse, ptr, src, cp, ce, cd = ctx.saved_tensors
        need = ctx.needs_input_grad
        params = (x, w, b, a_dst, a_src)
        none = (None,) * 8  # graph tensors, heads, slope, validated
        if torch.is_grad_enabled():  # create_graph=True: recompute with autograd recording
            def forward(x, w, b, a_dst, a_src):
                h_ = linear(x, w, b)
                h_ = h_.view(h_.size(0), ctx.heads, h_.size(1) // ctx.heads)
                return torch.ops.graphattn.edge_attention(
                    a_dst, a_src, h_, None, None, ptr, src, cp, ce, cd, _ADDITIVE, 1.0,
                    ctx.slope, False, ctx.validated)[0]

            return (*_recompute_grads(params, need, grad_out, forward), *none)
        ops = torch.ops.graphattn
        Ns, H = h.size(0), ctx.heads
        stats = additive_stats(lse, a_dst)
        record = h.new_empty(src.numel(), 2 * H)
        g_x = x.new_empty(x.shape) if need[0] else None
        g_w = w.new_zeros(w.shape) if need[1] else None
        g_b = b.new_zeros(b.shape) if b is not None and need[2] else None
        rows = _rows(Ns, h.size(1) * h.size(2), h.element_size())
        for blk in range(0, Ns, rows):
            e = min(blk + rows, Ns)
            # the first block's call checks the indices; they are the same for the others
            gv = ops.edge_attention_backward_additive_values(
                grad_out, a_dst, a_src, h, None, stats, cp, ce, cd, ctx.slope, record,
                ctx.validated or blk > 0, blk, e)
            g = gv.flatten(1)
            if g_x is not None:
                g_x[blk:e] = input_grad(g, w)
            _accumulate(g, x[blk:e], g_w, g_b)
            del gv, g
        gq, gk, _ = ops.edge_attention_backward_additive_scores(record, ptr, cp, ce, ctx.slope,
                                                                 False, ctx.validated)
        return (g_x, g_w, g_b, gq.view(a_dst.shape) if need[3] else None,
                gk.view(a_src.shape) if need[4] else None, *none)


def projected_additive_attention(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    score_dst: Tensor,
    score_src: Tensor,
    graph: EdgeGraph,
    heads: int,
    negative_slope: float = 0.2,
) -> Tensor:
    r"""GAT's attention (PyG ``GATConv``) of the values :math:`\mathbf{h}_j = W\mathbf{x}_j +
    \mathbf{b}` with its per-node score terms given:

    .. math::
        \mathbf{o}^{(h)}_i = \sum_{j \in \mathcal{N}(i)} \operatorname{softmax}_j\big(
            \mathrm{LeakyReLU}(a^{dst}_{i,h} + a^{src}_{j,h})\big)\, \mathbf{h}^{(h)}_j

    (``GATConv`` computes :math:`a^{src}_{j,h} = \langle \mathbf{att}^{src}_h,
    \mathbf{h}^{(h)}_j\rangle`, and ``a^{dst}`` likewise: the caller forms them, e.g. as
    ``x @ (att ⊙ W)`` without an ``[N, H, C]`` temporary). The numbers are those of
    :func:`graphattn.ops.linear` + :func:`graphattn.ops.edge_attention` with
    ``kind="additive"``; on the native CPU path the backward runs the attention backward's
    values pass by blocks of source rows (about 1 MB of :math:`\partial\mathbf{h}` each),
    each block turned into its rows of the gradient of :math:`\mathbf{x}` and its terms of the
    gradients of :math:`W, \mathbf{b}` before the next, then the score pass; the composition
    holds all of :math:`\partial\mathbf{h}` ``[N, H, C]`` beside the ``[E, 2H]`` per-edge record.

    Args:
        x (Tensor): node features ``[N, F]`` (sources and destinations: one node set).
        weight, bias: the projection ``[H * C, F]``, ``[H * C]`` or ``None``.
        score_dst, score_src (Tensor): ``[N, H]`` (or ``[N, H, 1]``) score terms.
        graph (EdgeGraph): the edges ``j -> i`` over the ``N`` nodes.
        heads (int): :math:`H`.
        negative_slope (float): the LeakyReLU's slope.

    Returns:
        ``[N, H, C]``.
    """
    from . import _check_graph, _check_tensor, edge_attention

    if _check_tensor(x, "x").dim() != 2:
        raise ValueError(f"'x' must be a 2-D tensor [N, F], got {list(x.shape)}")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ValueError(f"'heads' must be a positive int, got {heads!r}")
    _check_linear(x, weight, bias, "", heads)
    graph = _check_graph(graph, x)
    if (graph.num_src, graph.num_dst) != (x.size(0), x.size(0)):
        raise ValueError(f"'graph' joins ({graph.num_src}, {graph.num_dst}) nodes but 'x' has "
                         f"{x.size(0)}")
    N = x.size(0)
    scores = []
    for t, n in ((score_dst, "score_dst"), (score_src, "score_src")):
        _check_tensor(t, n)
        if tuple(t.shape) not in ((N, heads), (N, heads, 1)):
            raise ValueError(f"'{n}' must have shape [N, H] = [{N}, {heads}], got "
                             f"{list(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"'{n}' must have the dtype and device of 'x' ({x.dtype}, "
                            f"{x.device}), got ({t.dtype}, {t.device})")
        scores.append(t.view(N, heads, 1))
    lean = _lean(x, "edge_attention_backward_additive_values")
    if not lean:
        h = linear(x, weight, bias)
        h = h.view(N, heads, h.size(1) // heads)
        return edge_attention(scores[0], scores[1], h, graph, "additive",
                              negative_slope=negative_slope)
    return _ProjectedAdditiveAttention.apply(
        x, weight, bias, scores[0], scores[1], graph.ptr, graph.src, graph.csc_ptr,
        graph.csc_eid, graph.csc_dst, heads, float(negative_slope), graph.indices_trusted())


def _lean(x: Tensor, op: str) -> bool:
    """Whether the lean node runs: the native CPU kernels (float32/float64 CPU tensors,
    backend ``native`` or ``auto`` with the extension built, ``op`` registered), outside
    ``torch.compile``."""
    from . import _use_native

    return (x.device.type == "cpu" and _use_native(x) and hasattr(torch.ops.graphattn, op)
            and not torch.compiler.is_compiling())


def _check_sides(x_dst: Tensor, x_src: Tensor, heads: int) -> None:
    from . import _check_tensor

    for t, n in ((x_dst, "x_dst"), (x_src, "x_src")):
        if _check_tensor(t, n).dim() != 2:
            raise ValueError(f"'{n}' must be a 2-D tensor [N, F], got {list(t.shape)}")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ValueError(f"'heads' must be a positive int, got {heads!r}")


def _check_sides_graph(graph: EdgeGraph, x_dst: Tensor, x_src: Tensor) -> EdgeGraph:
    from . import _check_graph

    graph = _check_graph(graph, x_dst)
    if (x_src.size(0), x_dst.size(0)) != (graph.num_src, graph.num_dst):
        raise ValueError(f"'graph' joins ({graph.num_src}, {graph.num_dst}) nodes but the "
                         f"features give ({x_src.size(0)}, {x_dst.size(0)})")
    return graph


def _check_linear(x: Tensor, w: Tensor, b: Tensor | None, name: str, heads: int) -> None:
    from . import _check_tensor

    wn, bn = (f"weight_{name}", f"bias_{name}") if name else ("weight", "bias")
    _check_tensor(w, wn)
    if b is not None:
        _check_tensor(b, bn)
    if w.dim() != 2:
        raise ValueError(f"'{wn}' must be a 2-D tensor [out, in], got {list(w.shape)}")
    if w.size(1) != x.size(1):
        raise ValueError(f"'{wn}' takes {w.size(1)} input features but its input "
                         f"has {x.size(1)}")
    if w.size(0) % heads:
        raise ValueError(f"'{wn}' has {w.size(0)} outputs, not a multiple of "
                         f"heads={heads}")
    if b is not None and tuple(b.shape) != (w.size(0),):
        raise ValueError(f"'{bn}' must have shape [{w.size(0)}], got {list(b.shape)}")
    for t, n in ((w, wn), (b, bn)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"'{n}' must have the dtype and device of its input "
                            f"({x.dtype}, {x.device}), got ({t.dtype}, {t.device})")


def projected_attention(
    x_dst: Tensor,
    x_src: Tensor,
    weight_q: Tensor,
    bias_q: Tensor | None,
    weight_k: Tensor,
    bias_k: Tensor | None,
    weight_v: Tensor,
    bias_v: Tensor | None,
    graph: EdgeGraph,
    heads: int,
    scale: float | None = None,
    weight_skip: Tensor | None = None,
    bias_skip: Tensor | None = None,
) -> Tensor:
    r"""Dot-product edge attention of the projections of ``x_dst`` (queries) and ``x_src``
    (keys, values): module docstring.

    Args:
        x_dst (Tensor): destination features ``[N_dst, F_dst]``.
        x_src (Tensor): source features ``[N_src, F_src]`` (may be ``x_dst`` itself).
        weight_q, bias_q: query projection ``[H * D, F_dst]``, ``[H * D]`` or ``None``.
        weight_k, bias_k: key projection ``[H * D, F_src]``, ``[H * D]`` or ``None``.
        weight_v, bias_v: value projection ``[H * Dv, F_src]``, ``[H * Dv]`` or ``None``.
        graph (EdgeGraph): the edges ``j -> i``.
        heads (int): number of heads :math:`H`.
        scale (float, optional): score scale, :math:`1/\sqrt{D}` by default.
        weight_skip, bias_skip: the root term's projection ``[H * Dv, F_dst]``, ``[H * Dv]``
            or ``None`` (PyG ``TransformerConv``'s ``lin_skip``; no root term by default).

    Returns:
        ``[N_dst, H, Dv]``.

    The lean backward runs where the native CPU kernels do (float32/float64 CPU tensors,
    backend ``native`` or ``auto`` with the extension built) outside ``torch.compile``;
    anywhere else this is the plain composition, with the same numbers.
    """
    from . import edge_attention

    _check_sides(x_dst, x_src, heads)
    _check_linear(x_dst, weight_q, bias_q, "q", heads)
    _check_linear(x_src, weight_k, bias_k, "k", heads)
    _check_linear(x_src, weight_v, bias_v, "v", heads)
    if weight_q.size(0) != weight_k.size(0):
        raise ValueError(f"'weight_q' and 'weight_k' must have the same number of outputs, "
                         f"got {weight_q.size(0)} and {weight_k.size(0)}")
    if weight_skip is None and bias_skip is not None:
        raise ValueError("'bias_skip' needs 'weight_skip'")
    if weight_skip is not None:
        _check_linear(x_dst, weight_skip, bias_skip, "skip", heads)
        if weight_skip.size(0) != weight_v.size(0):
            raise ValueError(f"'weight_skip' must have the outputs of 'weight_v' "
                             f"({weight_v.size(0)}), got {weight_skip.size(0)}")
    D = weight_q.size(0) // heads
    scale = float(D) ** -0.5 if scale is None else float(scale)
    graph = _check_sides_graph(graph, x_dst, x_src)
    lean = _lean(x_dst, "edge_attention_backward_dst")
    if not lean:
        q, k, v = _project(x_dst, x_src, weight_q, bias_q, weight_k, bias_k, weight_v, bias_v,
                           heads)
        out = edge_attention(q, k, v, graph, "dot", scale=scale)
        if weight_skip is not None:
            out = out + linear(x_dst, weight_skip, bias_skip).view(out.shape)
        return out
    return _ProjectedAttention.apply(
        x_dst, x_src, weight_q, bias_q, weight_k, bias_k, weight_v, bias_v, weight_skip,
        bias_skip, None, graph.ptr, graph.src, graph.csc_ptr, graph.csc_eid, graph.csc_dst,
        heads, _DOT, scale, 0.2, graph.indices_trusted())


def projected_v2_attention(
    x_dst: Tensor,
    x_src: Tensor,
    weight_r: Tensor,
    bias_r: Tensor | None,
    weight_l: Tensor,
    bias_l: Tensor | None,
    att: Tensor,
    graph: EdgeGraph,
    heads: int,
    negative_slope: float = 0.2,
) -> Tensor:
    r"""GATv2's attention (PyG ``GATv2Conv``) of its two projections,
    :math:`\mathbf{r}_i = W_r\mathbf{x}^{dst}_i + \mathbf{b}_r` and
    :math:`\mathbf{l}_j = W_l\mathbf{x}^{src}_j + \mathbf{b}_l`:

    .. math::
        \mathbf{o}^{(h)}_i = \sum_{j \in \mathcal{N}(i)} \operatorname{softmax}_j\big(
            \mathbf{a}_h^\top \mathrm{LeakyReLU}(\mathbf{r}^{(h)}_i + \mathbf{l}^{(h)}_j)\big)
            \, \mathbf{l}^{(h)}_j

    The numbers are those of :func:`graphattn.ops.linear` + :func:`graphattn.ops.edge_attention`
    with ``kind="v2"``; on the native CPU path the backward runs its destination and source
    passes by blocks of rows, as :func:`projected_attention` does (the keys are the values, so
    the source pass gives one gradient per block).

    Args:
        x_dst (Tensor): destination features ``[N_dst, F_dst]``.
        x_src (Tensor): source features ``[N_src, F_src]`` (may be ``x_dst`` itself).
        weight_r, bias_r: destination projection ``[H * C, F_dst]``, ``[H * C]`` or ``None``.
        weight_l, bias_l: source projection ``[H * C, F_src]``, ``[H * C]`` or ``None``.
        att (Tensor): ``[H, C]`` (or ``[1, H, C]``).
        graph (EdgeGraph): the edges ``j -> i``.
        heads (int): :math:`H`.
        negative_slope (float): the LeakyReLU's slope.

    Returns:
        ``[N_dst, H, C]``.
    """
    from . import _check_tensor, edge_attention

    _check_sides(x_dst, x_src, heads)
    _check_linear(x_dst, weight_r, bias_r, "r", heads)
    _check_linear(x_src, weight_l, bias_l, "l", heads)
    if weight_r.size(0) != weight_l.size(0):
        raise ValueError(f"'weight_r' and 'weight_l' must have the same number of outputs, "
                         f"got {weight_r.size(0)} and {weight_l.size(0)}")
    C = weight_l.size(0) // heads
    _check_tensor(att, "att")
    if tuple(att.shape) not in ((heads, C), (1, heads, C)):
        raise ValueError(f"'att' must have shape [H, C] = [{heads}, {C}], got {list(att.shape)}")
    if att.dtype != x_src.dtype or att.device != x_src.device:
        raise TypeError(f"'att' must have the dtype and device of 'x_src' ({x_src.dtype}, "
                        f"{x_src.device}), got ({att.dtype}, {att.device})")
    graph = _check_sides_graph(graph, x_dst, x_src)
    a = att.reshape(heads, C)
    lean = _lean(x_dst, "edge_attention_backward_dst")
    if not lean:
        q, k, _ = _project(x_dst, x_src, weight_r, bias_r, weight_l, bias_l, None, None, heads)
        return edge_attention(q, k, k, graph, "v2", att=a, negative_slope=negative_slope)
    return _ProjectedAttention.apply(
        x_dst, x_src, weight_r, bias_r, weight_l, bias_l, None, None, None, None, a,
        graph.ptr, graph.src, graph.csc_ptr, graph.csc_eid, graph.csc_dst, heads, _V2, 1.0,
        float(negative_slope), graph.indices_trusted())
