r"""Dot-product edge attention of linear projections with a memory-lean backward.

.. math::
    \mathbf{q}_i = W_q \mathbf{x}^{dst}_i + \mathbf{b}_q,\quad
    \mathbf{k}_j = W_k \mathbf{x}^{src}_j + \mathbf{b}_k,\quad
    \mathbf{v}_j = W_v \mathbf{x}^{src}_j + \mathbf{b}_v,\qquad
    \mathbf{o}^{(h)}_i = \sum_{j \in \mathcal{N}(i)}
        \operatorname{softmax}_{j}\big(\text{scale}\ \mathbf{q}^{(h)}_i \cdot
        \mathbf{k}^{(h)}_j\big)\, \mathbf{v}^{(h)}_j

(the attention of PyG's ``TransformerConv``). The numbers are those of the composition
:func:`graphattn.ops.linear` (``F.linear``, on oneDNN where that is faster) +
:func:`graphattn.ops.edge_attention`; what differs is the backward on the
native CPU path. There the attention backward runs as its two passes: the destination pass
gives :math:`\partial\mathbf{q}`, which is turned into the gradients of :math:`W_q`,
:math:`\mathbf{b}_q` and :math:`\mathbf{x}^{dst}` and freed before the source pass allocates
:math:`\partial\mathbf{k}` and :math:`\partial\mathbf{v}`, and the source pass runs by
blocks of source rows (about 1 MB of :math:`\partial\mathbf{k}, \partial\mathbf{v}` each),
each block turned into its rows of the gradient of :math:`\mathbf{x}^{src}` and its terms of
the gradients of :math:`W_k, \mathbf{b}_k, W_v, \mathbf{b}_v` before the next. The
composition holds all three ``[N, H, C]`` gradients at once (they leave one autograd node
together); this holds one, then blocks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..index import EdgeGraph
from .dense import input_grad, linear

_DOT = 0
_BLOCK_BYTES = 1 << 20  # grad k + grad v of one block of source rows in the backward


def _project(x_dst, x_src, wq, bq, wk, bk, wv, bv, heads):
    q = linear(x_dst, wq, bq)
    k = linear(x_src, wk, bk)
    v = linear(x_src, wv, bv)
    # explicit widths: -1 is ambiguous for a side without nodes
    return tuple(t.view(t.size(0), heads, t.size(1) // heads) for t in (q, k, v))


def _attend(q, k, v, graph_tensors, scale, validated):
    ptr, src, cp, ce, cd = graph_tensors
    out, lse, _ = torch.ops.graphattn.edge_attention(q, k, v, None, None, ptr, src, cp, ce, cd,
                                                     _DOT, scale, 0.2, False, validated)
    return out, lse


class _ProjectedDotAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_dst, x_src, wq, bq, wk, bk, wv, bv, ptr, src, cp, ce, cd, heads, scale,
                validated):
        q, k, v = _project(x_dst, x_src, wq, bq, wk, bk, wv, bv, heads)
        out, lse = _attend(q, k, v, (ptr, src, cp, ce, cd), scale, validated)
        ctx.save_for_backward(x_dst, x_src, wq, bq, wk, bk, wv, bv, q, k, v, lse, ptr, src, cp,
                              ce, cd)
        ctx.heads, ctx.scale, ctx.validated = heads, scale, validated
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (x_dst, x_src, wq, bq, wk, bk, wv, bv, q, k, v, lse, ptr, src, cp, ce,
         cd) = ctx.saved_tensors
        need = ctx.needs_input_grad
        params = (x_dst, x_src, wq, bq, wk, bk, wv, bv)
        none = (None,) * 8  # graph tensors, heads, scale, validated
        if torch.is_grad_enabled():  # create_graph=True: recompute with autograd recording
            wanted = [i for i, t in enumerate(params) if t is not None and need[i]]
            grads: list = [None] * 8
            if wanted:
                with torch.enable_grad():
                    q_, k_, v_ = _project(*params, ctx.heads)
                    out, _ = _attend(q_, k_, v_, (ptr, src, cp, ce, cd), ctx.scale,
                                     ctx.validated)
                res = torch.autograd.grad(out, [params[i] for i in wanted], grad_out,
                                          create_graph=True, allow_unused=True)
                for i, g in zip(wanted, res):
                    grads[i] = g if g is not None else torch.zeros_like(params[i])
            return (*grads, *none)
        ops = torch.ops.graphattn
        scale, validated = ctx.scale, ctx.validated
        # destination pass: grad q -> grads of W_q, b_q, x_dst; then grad q is freed
        gq, _, _, stats = ops.edge_attention_backward_dst(grad_out, None, q, k, v, None, None,
                                                          lse, ptr, src, _DOT, scale, 0.2,
                                                          validated)
        g = gq.flatten(1)
        g_xd = input_grad(g, wq) if need[0] else None
        g_wq = g.t() @ x_dst if need[2] else None
        g_bq = g.sum(0) if bq is not None and need[3] else None
        del gq, g
        # source pass, by blocks of source rows: each block's grad k, grad v -> its rows of
        # grad x_src and its terms of the grads of W_k, b_k, W_v, b_v; then the block is freed
        Ns, width = k.size(0), k.size(1) * k.size(2) + v.size(1) * v.size(2)
        rows = max(256, _BLOCK_BYTES // max(1, width * k.element_size()))
        g_xs = x_src.new_empty(x_src.shape) if need[1] else None
        g_wk = wk.new_zeros(wk.shape) if need[4] else None
        g_bk = wk.new_zeros(wk.size(0)) if bk is not None and need[5] else None
        g_wv = wv.new_zeros(wv.shape) if need[6] else None
        g_bv = wv.new_zeros(wv.size(0)) if bv is not None and need[7] else None
        for b in range(0, Ns, rows):
            e = min(b + rows, Ns)
            # the first block's call checks the indices; they are the same for the others
            gk, gv = ops.edge_attention_backward_src(grad_out, None, q, k, v, None, None, stats,
                                                     ptr, src, cp, ce, cd, _DOT, scale, 0.2,
                                                     False, validated or b > 0, b, e)
            gk, gv, xs = gk.flatten(1), gv.flatten(1), x_src[b:e]
            if g_xs is not None:
                torch.add(input_grad(gk, wk), input_grad(gv, wv), out=g_xs[b:e])
            if g_wk is not None:
                g_wk.addmm_(gk.t(), xs)
            if g_bk is not None:
                g_bk += gk.sum(0)
            if g_wv is not None:
                g_wv.addmm_(gv.t(), xs)
            if g_bv is not None:
                g_bv += gv.sum(0)
            del gk, gv
        return (g_xd, g_xs, g_wq, g_bq, g_wk, g_bk, g_wv, g_bv, *none)


def _check_linear(x: Tensor, w: Tensor, b: Tensor | None, name: str, heads: int) -> None:
    from . import _check_tensor

    _check_tensor(w, f"weight_{name}")
    if b is not None:
        _check_tensor(b, f"bias_{name}")
    if w.dim() != 2:
        raise ValueError(f"'weight_{name}' must be a 2-D tensor [out, in], got {list(w.shape)}")
    if w.size(1) != x.size(1):
        raise ValueError(f"'weight_{name}' takes {w.size(1)} input features but its input "
                         f"has {x.size(1)}")
    if w.size(0) % heads:
        raise ValueError(f"'weight_{name}' has {w.size(0)} outputs, not a multiple of "
                         f"heads={heads}")
    if b is not None and tuple(b.shape) != (w.size(0),):
        raise ValueError(f"'bias_{name}' must have shape [{w.size(0)}], got {list(b.shape)}")
    for t, n in ((w, f"weight_{name}"), (b, f"bias_{name}")):
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

    Returns:
        ``[N_dst, H, Dv]``.

    The lean backward runs where the native CPU kernels do (float32/float64 CPU tensors,
    backend ``native`` or ``auto`` with the extension built) outside ``torch.compile``;
    anywhere else this is the plain composition, with the same numbers.
    """
    from . import _check_graph, _check_tensor, _use_native, edge_attention

    for t, n in ((x_dst, "x_dst"), (x_src, "x_src")):
        if _check_tensor(t, n).dim() != 2:
            raise ValueError(f"'{n}' must be a 2-D tensor [N, F], got {list(t.shape)}")
    if not isinstance(heads, int) or heads < 1:
        raise ValueError(f"'heads' must be a positive int, got {heads!r}")
    _check_linear(x_dst, weight_q, bias_q, "q", heads)
    _check_linear(x_src, weight_k, bias_k, "k", heads)
    _check_linear(x_src, weight_v, bias_v, "v", heads)
    if weight_q.size(0) != weight_k.size(0):
        raise ValueError(f"'weight_q' and 'weight_k' must have the same number of outputs, "
                         f"got {weight_q.size(0)} and {weight_k.size(0)}")
    D = weight_q.size(0) // heads
    scale = float(D) ** -0.5 if scale is None else float(scale)
    graph = _check_graph(graph, x_dst)
    if (x_src.size(0), x_dst.size(0)) != (graph.num_src, graph.num_dst):
        raise ValueError(f"'graph' joins ({graph.num_src}, {graph.num_dst}) nodes but the "
                         f"features give ({x_src.size(0)}, {x_dst.size(0)})")
    lean = (x_dst.device.type == "cpu" and _use_native(x_dst)
            and hasattr(torch.ops.graphattn, "edge_attention_backward_dst")
            and not torch.compiler.is_compiling())
    if not lean:
        q, k, v = _project(x_dst, x_src, weight_q, bias_q, weight_k, bias_k, weight_v, bias_v,
                           heads)
        return edge_attention(q, k, v, graph, "dot", scale=scale)
    return _ProjectedDotAttention.apply(
        x_dst, x_src, weight_q, bias_q, weight_k, bias_k, weight_v, bias_v, graph.ptr,
        graph.src, graph.csc_ptr, graph.csc_eid, graph.csc_dst, heads, scale,
        graph.indices_trusted())
