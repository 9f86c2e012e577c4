"""Loads ``graphattn._C`` and registers fake (meta) and autograd formulas for its ops.

If the extension cannot be loaded, a warning is issued once with the rebuild command and
``WITH_EXT`` is ``False``; :mod:`graphattn.ops` then uses the reference path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

REBUILD = 'pip install --no-build-isolation -e ".[all,dev]"  (or: make setup)'
WITH_EXT = False
WITH_OPENMP = False
CUDA_VERSION = -1
CUDA_MAX_HEAD_DIM = 0  # widest head the CUDA kernels take (from _C)
LOAD_ERROR: str | None = None
_REQUIRED = object()  # a schema argument without a default

if os.environ.get("GRAPHATTN_NO_EXT", "0").lower() in {"1", "true", "yes", "on"}:
    LOAD_ERROR = "disabled by GRAPHATTN_NO_EXT"
else:
    try:
        from .. import _C  # noqa: F401  (registers torch.ops.graphattn.*)

        WITH_EXT = hasattr(torch.ops.graphattn, "edge_attention")
        WITH_OPENMP = bool(_C.with_openmp())
        CUDA_VERSION = int(_C.cuda_version())
        CUDA_MAX_HEAD_DIM = int(_C.cuda_max_head_dim())
        if CUDA_VERSION > 0 and torch.version.cuda is not None:
            major = int(str(torch.version.cuda).split(".")[0])
            if major != CUDA_VERSION // 1000:
                warnings.warn(
                    f"graphattn._C was built for CUDA {CUDA_VERSION} but torch uses CUDA "
                    f"{torch.version.cuda}; rebuild with: {REBUILD}",
                    stacklevel=2,
                )
    except (ImportError, OSError) as err:  # pragma: no cover - depends on the install
        LOAD_ERROR = str(err)
        warnings.warn(
            f"graphattn: the native extension could not be loaded ({err}); using the "
            f"pure-torch reference path. Rebuild it with: {REBUILD}",
            stacklevel=2,
        )


if WITH_EXT:
    ops = torch.ops.graphattn

    # ---- fake (shape) implementations: keep the ops inside torch.compile -------------
    @torch.library.register_fake("graphattn::edge_attention")
    def _ea_fake(
        q,
        k,
        v,
        att,
        bias,
        ptr,
        src,
        csc_ptr,
        csc_eid,
        csc_dst,
        kind,
        scale,
        negative_slope,
        return_weights,
        validated=False,
    ):
        nd, h, dv = ptr.shape[0] - 1, q.shape[1], v.shape[2]
        e = src.shape[0] if return_weights else 0
        return q.new_empty(nd, h, dv), q.new_empty(nd, h), q.new_empty(e, h)

    @torch.library.register_fake("graphattn::edge_attention_backward")
    def _ea_bwd_fake(
        grad_out,
        grad_weights,
        q,
        k,
        v,
        att,
        bias,
        lse,
        ptr,
        src,
        csc_ptr,
        csc_eid,
        csc_dst,
        kind,
        scale,
        negative_slope,
        kv_shared=False,
        validated=False,
    ):
        gatt = torch.empty_like(att) if (att is not None and kind == 2) else q.new_empty(0)
        gbias = torch.empty_like(bias) if bias is not None else q.new_empty(0)
        gv = v.new_empty(0) if kv_shared else torch.empty_like(v)
        return torch.empty_like(q), torch.empty_like(k), gv, gatt, gbias

    @torch.library.register_fake("graphattn::edge_attention_backward_dst")
    def _ea_bwd_dst_fake(grad_out, grad_weights, q, k, v, att, bias, lse, ptr, src, kind, scale,
                         negative_slope, validated=False, record=None):
        gatt = torch.empty_like(att) if att is not None else q.new_empty(0)
        gbias = torch.empty_like(bias) if bias is not None else q.new_empty(0)
        return torch.empty_like(q), gatt, gbias, q.new_empty(ptr.shape[0] - 1, 2 * q.shape[1])

    @torch.library.register_fake("graphattn::edge_attention_backward_src")
    def _ea_bwd_src_fake(grad_out, grad_weights, q, k, v, att, bias, stats, ptr, src, csc_ptr,
                         csc_eid, csc_dst, kind, scale, negative_slope, kv_shared=False,
                         validated=False, row_begin=0, row_end=None, record=None):
        rows = (k.shape[0] if row_end is None else row_end) - row_begin
        gv = v.new_empty(0) if kv_shared else v.new_empty(rows, *v.shape[1:])
        return k.new_empty(rows, *k.shape[1:]), gv

    @torch.library.register_fake("graphattn::edge_attention_backward_additive_values")
    def _ea_bwd_add_values_fake(grad_out, q, k, v, bias, stats, csc_ptr, csc_eid, csc_dst,
                                negative_slope, record, validated=False, row_begin=0,
                                row_end=None):
        rows = (v.shape[0] if row_end is None else row_end) - row_begin
        return v.new_empty(rows, *v.shape[1:])

    @torch.library.register_fake("graphattn::edge_attention_backward_additive_scores")
    def _ea_bwd_add_scores_fake(record, ptr, csc_ptr, csc_eid, negative_slope, bias_grad=False,
                                validated=False):
        H = record.shape[1] // 2
        gbias = record.new_empty(record.shape[0], H) if bias_grad else record.new_empty(0)
        return (record.new_empty(ptr.shape[0] - 1, H, 1),
                record.new_empty(csc_ptr.shape[0] - 1, H, 1), gbias)

    @torch.library.register_fake("graphattn::edge_pair_dot")
    def _pair_dot_fake(a, b, ptr, src, validated=False):
        return a.new_empty(src.shape[0], a.shape[1])

    @torch.library.register_fake("graphattn::edge_spmm")
    def _spmm_fake(w, x, ptr, col, eid=None, validated=False):
        return x.new_empty(ptr.shape[0] - 1, x.shape[1], x.shape[2])

    @torch.library.register_fake("graphattn::edge_csr")
    def _csr_fake(edge_index, num_src, num_dst, self_loops=False):
        ctx = torch.library.get_ctx()
        E, K = ctx.new_dynamic_size(), ctx.new_dynamic_size() if self_loops else 0
        new = edge_index.new_empty
        return (new(num_dst + 1), new(E), new(E), new(num_src + 1), new(E), new(E), new(K))

    @torch.library.register_fake("graphattn::radius")
    def _radius_fake(src, tgt, r, src_ptr, tgt_ptr, exclude_offset=-1, max_num_neighbors=-1):
        return src.new_empty((2, torch.library.get_ctx().new_dynamic_size()), dtype=torch.long)

    @torch.library.register_fake("graphattn::knn")
    def _knn_fake(src, tgt, src_ptr, tgt_ptr, k, exclude_offset=-1):
        return src.new_empty((2, torch.library.get_ctx().new_dynamic_size()), dtype=torch.long)

    @torch.library.register_fake("graphattn::segment_softmax")
    def _ss_fake(scores, ptr, validated=False):
        return torch.empty_like(scores)

    @torch.library.register_fake("graphattn::segment_softmax_backward")
    def _ss_bwd_fake(out, grad_out, ptr, validated=False):
        return torch.empty_like(out)

    @torch.library.register_fake("graphattn::segment_reduce")
    def _sr_fake(src, ptr, reduce, validated=False):
        n = ptr.shape[0] - 1
        arg = src.new_empty((n if reduce == "max" else 0, src.shape[1]), dtype=torch.long)
        return src.new_empty(n, src.shape[1]), arg

    @torch.library.register_fake("graphattn::segment_reduce_backward")
    def _sr_bwd_fake(grad_out, ptr, arg, reduce, num_edges, validated=False):
        return grad_out.new_empty(num_edges, grad_out.shape[1])

    # ---- autograd formulas --------------------------------------------------------------
    # The native backward kernels are not themselves differentiable. Under create_graph=True
    # (grad mode is on inside the backward, e.g. conservative forces F = -dE/dr trained on),
    # the segment ops switch to a pure-torch backward ([E, H] tensors) so that second
    # derivatives are exact; edge_attention differentiates its composition over the bilinear
    # kernels edge_pair_dot / edge_spmm (no [E, H, Dv] tensor; the reference formula off the
    # CPU); edge_query_dot, depthwise_tp and scaled_aggregate, multilinear in their inputs,
    # keep every order on their kernels (autograd Functions over the backward kernels, below).
    def _segments(ptr, num_edges):
        N = ptr.shape[0] - 1
        return torch.repeat_interleave(torch.arange(N, device=ptr.device), ptr[1:] - ptr[:-1],
                                       output_size=num_edges)

    def _ea_setup(ctx, inputs, output):
        # inputs: q, k, v, att, bias, ptr, src, csc_ptr, csc_eid, csc_dst (tensors, saved),
        # then kind, scale, negative_slope, return_weights and validated (optional)
        tensors, (kind, scale, slope, return_weights, *rest) = inputs[:10], inputs[10:]
        _, lse, _ = output  # only the log-sum-exp is saved, never the output
        ctx.save_for_backward(*tensors, lse)
        ctx.kind, ctx.scale, ctx.slope, ctx.return_weights = kind, scale, slope, return_weights
        ctx.validated = bool(rest[0]) if rest else False
        ctx.has_att, ctx.has_bias = tensors[3] is not None, tensors[4] is not None
        # the same tensor as k and v (GATv2): the backward returns one summed gradient
        ctx.kv_shared = tensors[1] is tensors[2] and tensors[1].requires_grad

    def _ea_backward(ctx, grad_out, grad_lse, grad_weights):
        q, k, v, att, bias, ptr, src, csc_ptr, csc_eid, csc_dst, lse = ctx.saved_tensors
        gw = grad_weights if ctx.return_weights else None
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return _ea_backward_differentiable(ctx, grad_out, gw, q, k, v, att, bias, ptr, src,
                                               (csc_ptr, csc_eid, csc_dst))
        gq, gk, gv, gatt, gbias = ops.edge_attention_backward(
            grad_out,
            gw,
            q,
            k,
            v,
            att,
            bias,
            lse,
            ptr,
            src,
            csc_ptr,
            csc_eid,
            csc_dst,
            ctx.kind,
            ctx.scale,
            ctx.slope,
            ctx.kv_shared,
            ctx.validated,
        )
        return (
            gq,
            gk,
            None if ctx.kv_shared else gv,  # k is v: gk already holds grad k + grad v
            gatt if ctx.has_att else None,
            gbias if ctx.has_bias else None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )

    def _ea_backward_differentiable(ctx, grad_out, grad_weights, q, k, v, att, bias, ptr, src,
                                    csc):
        """The vector-Jacobian product of the op, recomputed from the saved inputs with
        ``create_graph=True``, so that second derivatives through the native op are exact.
        On the CPU it differentiates :func:`_composed_attention` (scores, native softmax and
        the value sum on the bilinear kernels: no ``[E, H, Dv]`` tensor; GATv2's scores need
        their ``[E, H, D]`` pre-activation); elsewhere the reference formula."""
        from types import SimpleNamespace

        from . import _reference

        E = src.shape[0]
        kind = {v_: k_ for k_, v_ in _reference.KINDS.items()}[ctx.kind]
        inputs = (q, k, v, att, bias)
        # k is v: one gradient (for k) covers both uses; asking for it twice would double it
        wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]
                  and not (i == 2 and ctx.kv_shared)]
        grads: list = [None] * 5
        if wanted:
            if q.device.type == "cpu":
                dst = None if kind == "dot" else _segments(ptr, E)  # for the gathered scores
                g = _Rows(ptr, src, *csc, dst, ctx.validated)
                out, w = _composed_attention(q, k, v, att, bias, g, kind, ctx.scale, ctx.slope)
            else:
                graph = SimpleNamespace(src=src, dst=_segments(ptr, E), num_dst=ptr.shape[0] - 1)
                out, w = _reference.edge_attention(q, k, v, graph, kind, bias, att, ctx.scale,
                                                   ctx.slope, 0.0, False, True)
            outs, gos = [out], [grad_out]
            if grad_weights is not None:
                outs.append(w)
                gos.append(grad_weights)
            res = torch.autograd.grad(outs, [inputs[i] for i in wanted], gos,
                                      create_graph=True, allow_unused=True)
            for i, g_ in zip(wanted, res):
                grads[i] = g_ if g_ is not None else torch.zeros_like(inputs[i])
        return (*grads, None, None, None, None, None, None, None, None, None, None)

    # ---- the bilinear family of the higher derivatives (csrc/cpu/edge_spmm.cpp) ----------
    # Unlike the ops of _Multilinear below, these have no backward kernels: the gradient of
    # each member is another member's forward, so each is a plain Function whose backward
    # applies the others (differentiable in turn, to any order).
    class _Rows(NamedTuple):
        ptr: torch.Tensor
        src: torch.Tensor
        csc_ptr: torch.Tensor
        csc_eid: torch.Tensor
        csc_dst: torch.Tensor
        dst: torch.Tensor | None  # destination of each CSR edge (additive, v2 scores)
        validated: bool

    class _PairDot(torch.autograd.Function):
        """``s[e, h] = a[dst_e, h] . b[src_e, h]``, ``[E, H]``; its gradients are
        :class:`_Spmm` over the CSR (for ``a``) and the CSC (for ``b``)."""

        @staticmethod
        def forward(ctx, a, b, g):
            ctx.save_for_backward(a, b)
            ctx.g = g
            return ops.edge_pair_dot(a, b, g.ptr, g.src, g.validated)

        @staticmethod
        def backward(ctx, gs):
            a, b = ctx.saved_tensors
            need_a, need_b = ctx.needs_input_grad[:2]
            return (_Spmm.apply(gs, b, ctx.g, False) if need_a else None,
                    _Spmm.apply(gs, a, ctx.g, True) if need_b else None, None)

    class _Spmm(torch.autograd.Function):
        """``out[i, h] = sum_e w[e, h] x[src_e, h]`` (by destinations) or, transposed,
        ``out[j, h] = sum_e w[e, h] x[dst_e, h]`` (by sources, through the CSC view); the
        gradient of ``w`` is a :class:`_PairDot`, that of ``x`` the other orientation."""

        @staticmethod
        def forward(ctx, w, x, g, transposed):
            ctx.save_for_backward(w, x)
            ctx.g, ctx.transposed = g, transposed
            if transposed:
                return ops.edge_spmm(w, x, g.csc_ptr, g.csc_dst, g.csc_eid, g.validated)
            return ops.edge_spmm(w, x, g.ptr, g.src, None, g.validated)

        @staticmethod
        def backward(ctx, go):
            w, x = ctx.saved_tensors
            need_w, need_x = ctx.needs_input_grad[:2]
            g, t = ctx.g, ctx.transposed
            gw = (_PairDot.apply(x, go, g) if t else _PairDot.apply(go, x, g)) if need_w else None
            return gw, _Spmm.apply(w, go, g, not t) if need_x else None, None, None

    def pair_dot(a, b, graph):
        """:func:`graphattn.ops.edge_pair_dot` on the kernels, ``[E, H]`` in CSR order."""
        g = _Rows(graph.ptr, graph.src, graph.csc_ptr, graph.csc_eid, graph.csc_dst, None,
                  graph.indices_trusted())
        return _PairDot.apply(a, b, g)

    def _composed_attention(q, k, v, att, bias, g, kind, scale, slope):
        """The op as a differentiable composition whose pieces are kernels or ``[E, H]``
        tensors: scores (:class:`_PairDot` for ``dot``), the native segment softmax, and the
        weighted value sum :class:`_Spmm`. Returns ``(out, weights)``, weights in CSR
        order."""
        b = 0.0 if bias is None else bias
        if kind == "dot":
            s = _PairDot.apply(q, k, g) * scale + b
        elif kind == "additive":  # one scalar per head: [E, H] gathers
            s = torch.nn.functional.leaky_relu(
                q[..., 0].index_select(0, g.dst) + k[..., 0].index_select(0, g.src) + b, slope)
        else:  # v2: the score is a function of the [E, H, D] pre-activation
            z = q.index_select(0, g.dst) + k.index_select(0, g.src)
            s = (torch.nn.functional.leaky_relu(z, slope) * att).sum(-1) + b
        p = call("segment_softmax", s, g.ptr, g.validated)
        return _Spmm.apply(p, v, g, False), p

    def _ss_setup(ctx, inputs, output):
        ctx.save_for_backward(output, inputs[1])
        ctx.validated = bool(inputs[2]) if len(inputs) > 2 else False

    def _ss_backward(ctx, grad):
        out, ptr = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            seg = _segments(ptr, out.shape[0])
            dot = out.new_zeros(ptr.shape[0] - 1, out.shape[1]).index_add(0, seg, out * grad)
            return out * (grad - dot.index_select(0, seg)), None, None
        return ops.segment_softmax_backward(out, grad, ptr, ctx.validated), None, None

    def _sr_setup(ctx, inputs, output):
        src, ptr, reduce, *rest = inputs
        ctx.save_for_backward(ptr, output[1])
        ctx.reduce, ctx.num_edges = reduce, src.shape[0]
        ctx.validated = bool(rest[0]) if rest else False

    def _sr_backward(ctx, grad_out, grad_arg):
        ptr, arg = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            E = ctx.num_edges
            if ctx.reduce == "max":
                hit = arg >= 0
                g = grad_out.new_zeros(E + 1, grad_out.shape[1]).scatter_add(
                    0, torch.where(hit, arg, torch.full_like(arg, E)), grad_out)
                return g[:E], None, None, None
            seg = _segments(ptr, E)
            g = grad_out.index_select(0, seg)
            if ctx.reduce == "mean":
                deg = (ptr[1:] - ptr[:-1]).clamp(min=1).to(g.dtype)
                g = g / deg.index_select(0, seg).unsqueeze(-1)
            return g, None, None, None
        return (
            ops.segment_reduce_backward(grad_out, ptr, arg, ctx.reduce, ctx.num_edges,
                                        ctx.validated),
            None,
            None,
            None,
        )

    # Under create_graph, the backward of an op T that is linear in each of its slots (the
    # tensor arguments that take gradients: edge_query_dot's q, k; depthwise_tp's x, y, w;
    # scaled_aggregate's m, c, a) is an autograd Function on the native backward kernel. With
    # U = d out, grad of slot w is G_w(U; slots), linear in U and in every other slot; G_w
    # does not read slot w (it only gives the shape). With X the gradient of G_w's output and
    # slots' = slots with slot w replaced by X, <X, G_w(U; slots)> = <U, T(slots')>, so its
    # derivatives are dU = T(slots') and d(slot j) = G_j(U; slots') for j != w: every order
    # stays on the kernels, without the per-edge products of the torch forms. The gradients
    # of several slots come from one kernel pass (the kernels take a flag per slot), and so
    # do, in the backward, the G_j of all j != w for each replaced slot w.
    class _Multilinear(NamedTuple):
        # (U, slots, ws) -> (G_w(U; slots) for w in ws): one kernel call on detached slots
        grads: Callable
        forward: Callable  # slots -> T(slots), differentiable (through ``call``)

    class _MultilinearGrads(torch.autograd.Function):
        @staticmethod
        def forward(ctx, op, which, U, *slots):
            ctx.save_for_backward(U, *slots)
            ctx.op, ctx.which = op, which
            ctx.set_materialize_grads(False)  # an output no loss reaches costs no kernel call
            return tuple(op.grads(U, [None if t is None else t.detach() for t in slots], which))

        @staticmethod
        def backward(ctx, *Xs):
            U, *slots = ctx.saved_tensors
            need = ctx.needs_input_grad[3:]  # a slot that is None needs no gradient
            dU, grads = None, [None] * len(slots)
            for w, X in zip(ctx.which, Xs):
                if X is None:
                    continue
                replaced = list(slots)
                replaced[w] = X
                # the sums accumulate in place, into the fresh outputs of the first terms
                if ctx.needs_input_grad[2]:
                    t = ctx.op.forward(replaced)
                    dU = t if dU is None else dU.add_(t)
                others = [j != w and n for j, n in enumerate(need)]
                for j, g in enumerate(_multilinear_grads(ctx.op, others, U, *replaced)):
                    if g is not None:
                        grads[j] = g if grads[j] is None else grads[j].add_(g)
            return None, None, dU, *grads

    def _pick(results, ws):
        return tuple(results[w] for w in ws)

    def _multilinear_grads(op, need, U, *slots) -> list:
        """The gradients of the slots flagged in ``need`` (``None`` for the others), from one
        differentiable :class:`_MultilinearGrads`."""
        which = tuple(j for j, n in enumerate(need) if n)
        out = [None] * len(slots)
        if which:
            for j, g in zip(which, _MultilinearGrads.apply(op, which, U, *slots)):
                out[j] = g
        return out

    @torch.library.register_fake("graphattn::edge_query_dot")
    def _eqd_fake(q, k, ptr):
        return k.new_empty(k.shape[0], q.shape[1])

    @torch.library.register_fake("graphattn::edge_query_dot_backward")
    def _eqd_bwd_fake(grad_out, q, k, ptr, need_q, need_k):
        return (torch.empty_like(q) if need_q else q.new_empty(0, q.shape[1], q.shape[2]),
                torch.empty_like(k) if need_k else k.new_empty(0, k.shape[1]))

    def _eqd_setup(ctx, inputs, output):
        q, k, ptr = inputs
        ctx.save_for_backward(q, k, ptr)

    # s = edge_query_dot(q, k); with g = ds:
    #   grad q = G_0(g; q, k): sum over a row's edges of g[e, h] k[e]
    #   grad k = G_1(g; q, k): sum over heads of g[e, h] q[dst e, h]
    def _eqd_multilinear(ptr):
        return _Multilinear(
            lambda U, s, ws: _pick(ops.edge_query_dot_backward(U, *s, ptr, 0 in ws, 1 in ws),
                                   ws),
            lambda s: call("edge_query_dot", *s, ptr))

    def _eqd_backward(ctx, grad_out):
        q, k, ptr = ctx.saved_tensors
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph=True: differentiable, on the kernels
            gq, gk = _multilinear_grads(_eqd_multilinear(ptr), (need_q, need_k),
                                        grad_out.contiguous(), q, k)
            return gq, gk, None
        gq, gk = ops.edge_query_dot_backward(grad_out, q, k, ptr, need_q, need_k)
        return gq if need_q else None, gk if need_k else None, None

    @torch.library.register_fake("graphattn::depthwise_tp")
    def _tp_fake(x, y, weight, coupling, meta, out_dim):
        return x.new_empty(x.shape[0], out_dim)

    @torch.library.register_fake("graphattn::depthwise_tp_backward")
    def _tp_bwd_fake(grad_out, x, y, weight, coupling, meta, need_x, need_y, need_weight):
        return (torch.empty_like(x) if need_x else x.new_empty(0, x.shape[1]),
                torch.empty_like(y) if need_y else y.new_empty(0, y.shape[1]),
                torch.empty_like(weight) if need_weight else weight.new_empty(0, weight.shape[1]))

    def _tp_setup(ctx, inputs, output):
        x, y, weight, coupling, meta, out_dim = inputs
        ctx.save_for_backward(x, y, weight, coupling, meta)
        ctx.out_dim = out_dim

    # out = T(x, y, w), the channel-wise tensor product of the path table (coupling, meta)
    def _tp_multilinear(coupling, meta, out_dim):
        return _Multilinear(
            lambda U, s, ws: _pick(ops.depthwise_tp_backward(U, *s, coupling, meta,
                                                             *(j in ws for j in range(3))), ws),
            lambda s: call("depthwise_tp", *s, coupling, meta, out_dim))

    def _tp_backward(ctx, grad_out):
        x, y, weight, coupling, meta = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: differentiable, on the kernels
            return (*_multilinear_grads(_tp_multilinear(coupling, meta, ctx.out_dim), need,
                                        grad_out.contiguous(), x, y, weight), None, None, None)
        gx, gy, gw = ops.depthwise_tp_backward(grad_out, x, y, weight, coupling, meta, *need)
        return (*(g if n else None for g, n in zip((gx, gy, gw), need)), None, None, None)

    @torch.library.register_fake("graphattn::scaled_aggregate")
    def _sa_fake(messages, coef, ptr, muls, dims, head_coef=None):
        return messages.new_empty(ptr.shape[0] - 1, messages.shape[1])

    @torch.library.register_fake("graphattn::scaled_aggregate_backward")
    def _sa_bwd_fake(grad_out, messages, coef, ptr, muls, dims, need_messages, need_coef,
                     head_coef=None, need_head=False):
        H = head_coef.shape[1] if head_coef is not None else 1
        return (messages.new_empty(messages.shape[0] if need_messages else 0, messages.shape[1]),
                coef.new_empty(coef.shape[0] if need_coef else 0, coef.shape[1]),
                messages.new_empty(messages.shape[0] if need_head else 0, H))

    def _sa_setup(ctx, inputs, output):
        messages, coef, ptr, muls, dims, head_coef = inputs
        ctx.save_for_backward(messages, coef, ptr, head_coef)
        ctx.muls, ctx.dims = list(muls), list(dims)

    # out = SA(m, c, a) (a: the per-head factors, or none); with U = d out and
    # D[e, k] = <m_e, U_dst(e)> over channel k's columns:
    #   grad m = G_0(U; m, c, a) = c a U_dst,  grad c = G_1(U; m, c, a) = a D,
    #   grad a = G_2(U; m, c, a) = sum over a head's channels of c D.
    def _sa_multilinear(ptr, muls, dims):
        return _Multilinear(
            lambda U, s, ws: _pick(ops.scaled_aggregate_backward(
                U, s[0], s[1], ptr, muls, dims, 0 in ws, 1 in ws, s[2], 2 in ws), ws),
            lambda s: call("scaled_aggregate", s[0], s[1], ptr, muls, dims, s[2]))

    def _sa_backward(ctx, grad_out):
        messages, coef, ptr, head = ctx.saved_tensors
        need_m, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_h = head is not None and ctx.needs_input_grad[5]
        if torch.is_grad_enabled():  # create_graph=True: differentiable, on the kernels
            gm, gc, gh = _multilinear_grads(_sa_multilinear(ptr, ctx.muls, ctx.dims),
                                            (need_m, need_c, need_h), grad_out.contiguous(),
                                            messages, coef, head)
            return gm, gc, None, None, None, gh
        gm, gc, gh = ops.scaled_aggregate_backward(grad_out, messages, coef, ptr, ctx.muls,
                                                   ctx.dims, need_m, need_c, head, need_h)
        return (gm if need_m else None, gc if need_c else None, None, None, None,
                gh if need_h else None)

    # ---- autograd: one table for the registered wrapper and the eager fast path ---------
    # torch.library's autograd wrapper (register_autograd) costs ~85 us of Python per forward
    # on this project's CPU, more than the kernels themselves on small graphs and a share of
    # every GPU step at E = 200k. In eager mode with gradients the ops run through a plain
    # autograd.Function built from the same setup and backward (``call``); the registered
    # wrapper stays for torch.compile (which traces it) and direct calls.
    _AUTOGRAD = {  # op -> (Function name, setup, backward, outputs without gradient)
        "edge_attention": ("EdgeAttention", _ea_setup, _ea_backward, (1,)),  # log-sum-exp
        "segment_softmax": ("SegmentSoftmax", _ss_setup, _ss_backward, ()),
        "segment_reduce": ("SegmentReduce", _sr_setup, _sr_backward, (1,)),  # argmax
        "edge_query_dot": ("EdgeQueryDot", _eqd_setup, _eqd_backward, ()),
        "depthwise_tp": ("DepthwiseTP", _tp_setup, _tp_backward, ()),
        "scaled_aggregate": ("ScaledAggregate", _sa_setup, _sa_backward, ()),
    }

    def _make_function(op, title, setup, backward, nondiff):
        def forward(ctx, *args):
            out = op(*args)  # grad mode is off here: the op's own wrapper only redispatches
            setup(ctx, args, out)
            if nondiff:
                ctx.mark_non_differentiable(*(out[i] for i in nondiff))
            return out

        return type(title, (torch.autograd.Function,), {
            "forward": staticmethod(forward),
            "backward": staticmethod(backward),
        })

    _FUNCTIONS = {}
    _DEFAULTS = {}  # name -> the schema's trailing default values, filled in by ``call``
    for _name, (_title, _setup, _backward, _nondiff) in _AUTOGRAD.items():
        torch.library.register_autograd(f"graphattn::{_name}", _backward, setup_context=_setup)
        _FUNCTIONS[_name] = _make_function(getattr(ops, _name), _title, _setup, _backward,
                                           _nondiff)
        _DEFAULTS[_name] = [a.default_value if a.has_default_value() else _REQUIRED
                            for a in getattr(ops, _name).default._schema.arguments]


def call(name: str, *args):
    """``torch.ops.graphattn.<name>(*args)``, through the eager autograd fast path where it
    applies (gradients wanted, outside ``torch.compile``): the same numbers and formulas.
    Trailing arguments left out take the schema's defaults (the backward returns one gradient
    per schema argument, so the function always receives all of them)."""
    op = getattr(torch.ops.graphattn, name)
    defaults = _DEFAULTS[name]
    if len(args) < len(defaults):
        missing = defaults[len(args):]
        if any(d is _REQUIRED for d in missing):  # a required argument left out: torch says
            return op(*args)
        args = (*args, *missing)
    if (torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)):
        return _FUNCTIONS[name].apply(*args)
    return op(*args)
