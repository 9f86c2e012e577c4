"""Segment softmax and segment reductions: both paths against naive loops, gradients,
opcheck and bad input."""

from __future__ import annotations

import pytest
import torch

from graphattn import ops
from graphattn.index import build_graph
from tests.conftest import GRAPHS, ragged_edge_index

native_only = pytest.mark.skipif(not ops.native_available(), reason="graphattn._C not built")


@pytest.mark.parametrize("graph", ["ragged", "empty", "single"])
@pytest.mark.parametrize("heads", [1, 3, 4, 8])  # 1, 4, 8: the kernel's compile-time widths
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_softmax_matches_loop(backend, graph, heads, dtype):
    ei, n = GRAPHS[graph]()
    g = build_graph(ei, n, cache=False)
    s = torch.randn(ei.size(1), heads, dtype=dtype) * 10
    if ei.size(1):
        s[ei[1] == ei[1, 0], 0] = float("-inf")  # one destination's first head fully masked
    out = ops.segment_softmax(s, g)
    ref = torch.zeros_like(s)
    for i in range(n):
        idx = (ei[1] == i).nonzero().view(-1)
        if idx.numel():
            ref[idx] = torch.softmax(s[idx], dim=0).nan_to_num(0.0)
    torch.testing.assert_close(out, ref)
    assert ops.segment_softmax(s[:, 0], g).shape == (ei.size(1),)


def test_segment_softmax_gradcheck_and_extremes(backend):
    ei = ragged_edge_index(8)
    g = build_graph(ei, 8, cache=False)
    s = torch.randn(ei.size(1), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: ops.segment_softmax(s, g), (s,))
    big = torch.randn(ei.size(1), 2) * 1e4
    big[0] = float("-inf")
    out = ops.segment_softmax(big, g)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_softmax_propagates_nan_like_torch(backend, bad, dtype):
    """A NaN or +inf score makes its (destination, head) NaN, as torch.softmax does; other
    heads and destinations keep their values (no NaN hidden as zeros or unnormalised exps)."""
    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    s = torch.randn(ei.size(1), 4, dtype=dtype)
    i = int(ei[1, 0])
    s[0, 1] = bad
    out = ops.segment_softmax(s, g)
    row = ei[1] == i
    for h in range(4):
        torch.testing.assert_close(out[row, h], torch.softmax(s[row, h], 0), equal_nan=True)
    assert out[row, 1].isnan().all()
    assert not out[~row].isnan().any() and not out[:, [0, 2, 3]].isnan().any()


@pytest.mark.parametrize("where", [0, 1, 2])  # first, middle, last in-edge of node 1
def test_segment_max_propagates_nan_like_torch(backend, where):
    """A NaN among a segment's values is its max, wherever it sits (torch's amax and PyG's
    scatter say so; a plain '>' scan keeps it only when it comes first)."""
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 0], [1, 1, 1, 2, 2, 3, 3]])
    g = build_graph(ei, 6, cache=False)
    x = torch.randn(7, 3)
    x[where, 0] = float("nan")
    out = ops.aggregate(x, g, "max")
    assert out[1, 0].isnan() and not out[1, 1:].isnan().any()
    assert not out[[0, 2, 3, 4, 5]].isnan().any()
    expect = torch.full((6, 3), float("-inf")).scatter_reduce(
        0, ei[1].view(-1, 1).expand(-1, 3), x, "amax")
    expect[torch.bincount(ei[1], minlength=6) == 0] = 0
    torch.testing.assert_close(out, expect, equal_nan=True)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_segment_reduce_matches_loop_and_gradcheck(backend, reduce):
    ei = ragged_edge_index(10)
    g = build_graph(ei, 10, cache=False)
    x = torch.randn(ei.size(1), 4, dtype=torch.float64, requires_grad=True)
    out = ops.aggregate(x, g, reduce)
    for i in range(10):
        rows = x[ei[1] == i]
        if rows.numel() == 0:
            expect = torch.zeros(4, dtype=x.dtype)
        else:
            expect = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0).values}[reduce]
        torch.testing.assert_close(out[i], expect)
    assert torch.autograd.gradcheck(lambda x: ops.aggregate(x, g, reduce), (x,))


def test_segment_max_argmax(backend):
    ptr = torch.tensor([0, 2, 2, 5])
    src = torch.tensor([[1.0], [3.0], [0.0], [7.0], [2.0]])
    out, arg = ops.segment_max(src, ptr)
    assert out.view(-1).tolist() == [3.0, 0.0, 7.0]
    assert arg.view(-1).tolist() == [1, -1, 3]
    torch.testing.assert_close(ops.segment_sum(src, ptr).view(-1), torch.tensor([4.0, 0.0, 9.0]))
    torch.testing.assert_close(ops.segment_mean(src, ptr).view(-1), torch.tensor([2.0, 0.0, 3.0]))


def test_segment_bad_input(backend):
    with pytest.raises(ValueError, match="'reduce' must be"):
        ops.aggregate(
            torch.randn(3, 1), build_graph(torch.tensor([[0, 1, 2], [0, 0, 1]]), 3), "median"
        )
    with pytest.raises(TypeError, match="'ptr' must be a 1-D int64"):
        ops.segment_sum(torch.randn(3, 2), torch.tensor([0.0, 3.0]))
    with pytest.raises(ValueError, match="one row per edge"):
        ops.aggregate(torch.randn(2, 1), build_graph(torch.tensor([[0, 1, 2], [0, 0, 1]]), 3))
    with pytest.raises(ValueError, match=r"'scores' must have shape \[E\]"):
        ops.segment_softmax(torch.randn(2, 1), build_graph(torch.tensor([[0, 1, 2], [0, 0, 1]]), 3))
    g = build_graph(torch.tensor([[0, 1, 2], [0, 0, 1]]), 3)
    for bad in (torch.tensor(1.0), torch.randn(3, 2, 2)):  # not [E] or [E, F]
        with pytest.raises(ValueError, match=r"'messages' must have shape \[E=3\]"):
            ops.aggregate(bad, g)
    # row pointers that do not tile the rows: the same kind of error on both backends
    for ptr in (torch.tensor([0, 2, 5]), torch.tensor([1, 3]), torch.tensor([0, 3, 1, 3])):
        with pytest.raises(ValueError, match="'ptr"):
            ops.segment_sum(torch.randn(3, 2), ptr)
    # a non-contiguous ptr works like its contiguous copy
    ptr = torch.tensor([0, 9, 1, 9, 3, 9])[::2]
    torch.testing.assert_close(ops.segment_sum(torch.ones(3, 2), ptr),
                               torch.tensor([[1.0, 1.0], [2.0, 2.0]]))


def test_segment_max_of_a_nan_points_at_the_nan(backend):
    """A NaN is its segment's max (torch's amax propagates it) and the argmax is its position,
    inside [0, E), on both backends (the reference path returned E)."""
    out, arg = ops.segment_max(torch.tensor([[1.0], [float("nan")], [2.0]]),
                               torch.tensor([0, 3]))
    assert out.isnan().all() and arg.tolist() == [[1]]


@native_only
def test_native_segment_checks_ptr():
    with pytest.raises(ValueError, match=r"'ptr\[-1\]' must equal the number of edges"):
        torch.ops.graphattn.segment_reduce(torch.randn(3, 2), torch.tensor([0, 5]), "sum")
    with pytest.raises(ValueError, match="'reduce' must be"):
        torch.ops.graphattn.segment_reduce(torch.randn(3, 2), torch.tensor([0, 3]), "prod")
    with pytest.raises(TypeError, match="'ptr' must be an int64"):
        torch.ops.graphattn.segment_softmax(
            torch.randn(3, 2), torch.tensor([0, 3], dtype=torch.int32)
        )


@native_only
def test_native_segment_ops_match_reference_float32():
    ei = torch.randint(0, 200, (2, 4000))
    g = build_graph(ei, 200, cache=False)
    s = torch.randn(4000, 4, requires_grad=True)
    res = {}
    for name in ("native", "reference"):
        with ops.set_backend(name):
            outs = [ops.segment_softmax(s, g)] + [
                ops.aggregate(s, g, r) for r in ("sum", "mean", "max")
            ]
            loss = sum((o * torch.linspace(0, 1, o.numel()).view_as(o)).sum() for o in outs)
            res[name] = (*outs, torch.autograd.grad(loss, s)[0])
    for a, b in zip(res["native"], res["reference"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@native_only
def test_opcheck_segment_ops():
    ei = ragged_edge_index(10)
    g = build_graph(ei, 10, cache=False)
    s = torch.randn(ei.size(1), 3, dtype=torch.float64, requires_grad=True)
    for validated in (False, True):
        torch.library.opcheck(torch.ops.graphattn.segment_softmax.default, (s, g.ptr, validated))
        for reduce in ("sum", "mean", "max"):
            torch.library.opcheck(torch.ops.graphattn.segment_reduce.default,
                                  (s, g.ptr, reduce, validated))


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_second_derivatives(backend, reduce):
    """create_graph=True (e.g. conservative forces trained on) differentiates the backward."""
    ei = ragged_edge_index(8)
    g = build_graph(ei, 8, cache=False)
    s = torch.randn(ei.size(1), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda s: ops.segment_softmax(s, g), (s,))
    x = torch.randn(ei.size(1), 3, dtype=torch.float64, requires_grad=True)
    ptr = g.ptr
    assert torch.autograd.gradgradcheck(lambda x: ops._segment(x, ptr, reduce)[0] ** 2, (x,))


@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_edge_attention_second_derivatives(backend, kind):
    """Double backward through edge_attention: gradgradcheck in float64 on a ragged graph
    (zero in-degree, a hub), bias and returned weights included, on both backends."""
    ei = ragged_edge_index(8)
    g = build_graph(ei, 8, cache=False)
    torch.manual_seed(3)
    D = 1 if kind == "additive" else 3
    t = dict(dtype=torch.float64, requires_grad=True)
    q, k = torch.randn(8, 2, D, **t), torch.randn(8, 2, D, **t)
    v, b = torch.randn(8, 2, 3, **t), torch.randn(ei.size(1), 2, **t)
    att = torch.randn(2, 3, **t) if kind == "v2" else None
    extra = (att,) if att is not None else ()

    def f(q, k, v, b, *a):
        out, w = ops.edge_attention(q, k, v, g, kind, bias=b, att=a[0] if a else None,
                                    return_weights=True)
        return out.square(), w.square()

    assert torch.autograd.gradgradcheck(f, (q, k, v, b, *extra))


@native_only
def test_native_double_backward_equals_reference():
    """A force-style second derivative (gradient of a gradient norm) agrees across backends."""
    ei = ragged_edge_index(8)
    g = build_graph(ei, 8, cache=False)
    torch.manual_seed(4)
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    res = {}
    for name in ("native", "reference"):
        with ops.set_backend(name):
            res[name] = []
            for shared in (False, True):  # separate k, v and k is v (GATv2)
                q, k = (2 * x).view(8, 2, 3).tanh(), x.view(8, 2, 3)
                v = k if shared else x.view(8, 2, 3) ** 2
                out = ops.edge_attention(q, k, v, g)
                (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
                res[name] += [gx, torch.autograd.grad(gx.square().sum(), x)[0]]
    for a, b in zip(res["native"], res["reference"]):
        torch.testing.assert_close(a, b)


@native_only
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_segment_reduce_backward_writes_every_row(reduce):
    """The native backward allocates its [E, F] gradient without a zero fill (every edge lies in
    one segment): each row must still be written, zeros for the edges that are not a segment's
    argmax. A NaN-filled block of the same size is freed just before, so that stale memory
    handed back by the allocator would show."""
    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    E, F = ei.size(1), 64
    x = torch.randn(E, F, dtype=torch.float64)
    _, arg = ops._segment(x, g.ptr, reduce)
    grad = torch.randn(12, F, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    with ops.set_backend("reference"):
        ops._segment(xr, g.ptr, reduce)[0].backward(grad)
    for _ in range(3):
        junk = torch.full((E, F), float("nan"), dtype=torch.float64)
        del junk
        gin = torch.ops.graphattn.segment_reduce_backward(grad, g.ptr, arg, reduce, E)
        torch.testing.assert_close(gin, xr.grad)


@native_only
def test_eager_fast_path_fills_schema_defaults():
    """``_native.call`` with the trailing defaulted argument left out (``validated``) still
    takes the eager autograd.Function, whose backward returns one gradient per schema argument,
    and gives the registered op's values and gradients; every op has its table entry."""
    from graphattn.ops import _native

    g = build_graph(ragged_edge_index(9), 9, cache=False)
    s0 = torch.randn(g.src.numel(), 2, dtype=torch.float64)
    gout = torch.randn_like(s0)
    res = []
    for fast in (True, False):
        s = s0.clone().requires_grad_()
        out = (_native.call("segment_softmax", s, g.ptr) if fast
               else torch.ops.graphattn.segment_softmax(s, g.ptr))
        assert (type(out.grad_fn).__name__ == "SegmentSoftmaxBackward") == fast
        res.append((out, *torch.autograd.grad((out * gout).sum(), s)))
    for a, b in zip(*res):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="ptr"):  # a required argument left out
        _native.call("segment_softmax", s0)
    assert set(_native._FUNCTIONS) == set(_native._AUTOGRAD) and len(_native._AUTOGRAD) == 6
