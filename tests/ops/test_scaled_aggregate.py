"""ops.aggregate_scaled: per-edge channel factors and the sum over in-edges in one op, against
an explicit loop, on both backends; gradients (first and second order), opcheck, bad input."""

from __future__ import annotations

import pytest
import torch

from graphattn import ops
from graphattn.index import build_graph
from tests.conftest import GRAPHS, ragged_edge_index

native_only = pytest.mark.skipif(not ops.native_available(), reason="graphattn._C not built")

BLOCKS = ((5, 1), (0, 3), (3, 3), (2, 5))  # an empty block included
F, K = 5 + 9 + 10, 10
# widths the native kernel does not specialise (2, 4: its run-time width) beside l = 3 (7)
OTHER_BLOCKS = ((2, 2), (1, 7), (3, 4), (17, 1))


def loop_reference(m, coef, ei, n, blocks, head=None):
    """out[i] = sum over edges e = (j -> i) of m[e] with each channel times its factor (and,
    with ``head [E, H]``, times the weight of head u mod H for channel u of its block)."""
    out = torch.zeros(n, m.shape[1], dtype=m.dtype)
    for e in range(ei.shape[1]):
        c0 = k0 = 0
        for mul, d in blocks:
            for u in range(mul):
                cols = slice(c0 + u * d, c0 + (u + 1) * d)
                f = coef[e, k0 + u] * (head[e, u % head.shape[1]] if head is not None else 1.0)
                out[ei[1, e], cols] += f * m[e, cols]
            c0, k0 = c0 + mul * d, k0 + mul
    return out


@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("blocks", [BLOCKS, OTHER_BLOCKS], ids=["irreps", "other-widths"])
def test_matches_loop(backend, graph, dtype, blocks):
    ei, n = GRAPHS[graph]()
    E = ei.shape[1]
    F_, K_ = sum(mul * d for mul, d in blocks), sum(mul for mul, _ in blocks)
    m, coef = torch.randn(E, F_, dtype=dtype), torch.randn(E, K_, dtype=dtype)
    out = ops.aggregate_scaled(m, coef, build_graph(ei, n, cache=False), blocks)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, loop_reference(m, coef, ei, n, blocks), atol=tol, rtol=tol)


def test_gradients_first_and_second_order(backend):
    """gradcheck and gradgradcheck in float64 on a ragged graph whose edges are not sorted by
    destination (zero in-degree, a hub, duplicates, self-loops)."""
    ei = ragged_edge_index(10)
    ei = ei[:, torch.randperm(ei.shape[1])]
    g = build_graph(ei, 10, cache=False)
    t = dict(dtype=torch.float64, requires_grad=True)
    m, coef = torch.randn(ei.shape[1], F, **t), torch.randn(ei.shape[1], K, **t)

    def f(m, c):
        return ops.aggregate_scaled(m, c, g, BLOCKS)

    assert torch.autograd.gradcheck(f, (m, coef))
    assert torch.autograd.gradgradcheck(f, (m, coef))


@native_only
@pytest.mark.parametrize("blocks", [BLOCKS, OTHER_BLOCKS], ids=["irreps", "other-widths"])
def test_native_equals_reference_with_gradients(blocks):
    ei = ragged_edge_index(16)
    g = build_graph(ei, 16, cache=False)
    F_, K_ = sum(mul * d for mul, d in blocks), sum(mul for mul, _ in blocks)
    m = torch.randn(ei.shape[1], F_, requires_grad=True)
    coef = torch.randn(ei.shape[1], K_, requires_grad=True)
    w = torch.randn(16, F_)
    results = []
    for name in ("native", "reference"):
        with ops.set_backend(name):
            out = ops.aggregate_scaled(m, coef, g, blocks)
            gm, gc = torch.autograd.grad((out * w).sum(), (m, coef))
        results.append((out, gm, gc))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # only the gradient asked for is formed (the other comes back None), either one
    with ops.set_backend("native"):
        (gm_only,) = torch.autograd.grad(
            (ops.aggregate_scaled(m, coef.detach(), g, blocks) * w).sum(), (m,))
        (gc_only,) = torch.autograd.grad(
            (ops.aggregate_scaled(m.detach(), coef, g, blocks) * w).sum(), (coef,))
    torch.testing.assert_close(gm_only, results[1][1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gc_only, results[1][2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("blocks", [BLOCKS, OTHER_BLOCKS], ids=["irreps", "other-widths"])
@pytest.mark.parametrize("H", [1, 3, 8])  # 8: more heads than any block has channels
def test_head_factors_match_loop_with_gradients(backend, blocks, H):
    """head_coef [E, H] multiplies channel u of each block by the weight of head u mod H:
    values against the explicit loop, gradients of all three inputs (and of each alone)
    against the loop's autograd, float64, edges not sorted by destination."""
    ei = ragged_edge_index(10)
    ei = ei[:, torch.randperm(ei.shape[1])]
    n, E = 10, ei.shape[1]
    g = build_graph(ei, n, cache=False)
    F_, K_ = sum(mul * d for mul, d in blocks), sum(mul for mul, _ in blocks)
    t = dict(dtype=torch.float64, requires_grad=True)
    m, coef, head = torch.randn(E, F_, **t), torch.randn(E, K_, **t), torch.randn(E, H, **t)
    w = torch.randn(n, F_, dtype=torch.float64)
    out = ops.aggregate_scaled(m, coef, g, blocks, head_coef=head)
    want = loop_reference(m, coef, ei, n, blocks, head)
    torch.testing.assert_close(out, want)
    got = torch.autograd.grad((out * w).sum(), (m, coef, head))
    ref = torch.autograd.grad((want * w).sum(), (m, coef, head))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)
    for i, x in enumerate((m, coef, head)):
        ins = [y if y is x else y.detach() for y in (m, coef, head)]
        (alone,) = torch.autograd.grad((ops.aggregate_scaled(
            ins[0], ins[1], g, blocks, head_coef=ins[2]) * w).sum(), (x,))
        torch.testing.assert_close(alone, ref[i])
    # the same as the factors formed in torch
    torch.testing.assert_close(out, ops.aggregate_scaled(
        m, coef * ops.heads_to_channels(head, blocks), g, blocks))


def test_head_factors_gradcheck_first_and_second_order(backend):
    ei = ragged_edge_index(8)
    g = build_graph(ei, 8, cache=False)
    t = dict(dtype=torch.float64, requires_grad=True)
    E = ei.shape[1]
    m, coef, head = torch.randn(E, F, **t), torch.randn(E, K, **t), torch.randn(E, 2, **t)

    def f(m, c, h):
        return ops.aggregate_scaled(m, c, g, BLOCKS, head_coef=h)

    assert torch.autograd.gradcheck(f, (m, coef, head))
    assert torch.autograd.gradgradcheck(f, (m, coef, head))


@native_only
def test_opcheck_and_compile():
    ei = ragged_edge_index(8)
    g = build_graph(ei, 8, cache=False)
    m, coef = torch.randn(ei.shape[1], F), torch.randn(ei.shape[1], K)
    mc, cc = g.to_csr(m), g.to_csr(coef)
    muls, dims = [mul for mul, _ in BLOCKS], [d for _, d in BLOCKS]
    torch.library.opcheck(torch.ops.graphattn.scaled_aggregate.default,
                          (mc, cc, g.ptr, muls, dims))
    torch.library.opcheck(torch.ops.graphattn.scaled_aggregate.default,
                          (mc.requires_grad_(), cc.requires_grad_(), g.ptr, muls, dims))
    head = torch.randn(ei.shape[1], 3)
    hc = g.to_csr(head)
    torch.library.opcheck(torch.ops.graphattn.scaled_aggregate.default,
                          (mc, cc, g.ptr, muls, dims, hc.requires_grad_()))
    f = torch.compile(lambda m, c: ops.aggregate_scaled(m, c, g, BLOCKS), fullgraph=True)
    torch.testing.assert_close(f(m, coef), ops.aggregate_scaled(m, coef, g, BLOCKS))
    fh = torch.compile(lambda m, c, h: ops.aggregate_scaled(m, c, g, BLOCKS, head_coef=h),
                       fullgraph=True)
    torch.testing.assert_close(fh(m, coef, head),
                               ops.aggregate_scaled(m, coef, g, BLOCKS, head_coef=head))


def test_bad_input(backend):
    ei = ragged_edge_index(6)
    g = build_graph(ei, 6, cache=False)
    E = ei.shape[1]
    m, coef = torch.randn(E, F), torch.randn(E, K)
    with pytest.raises(ValueError, match=r"'messages' must have shape \[E, 24\]"):
        ops.aggregate_scaled(m[:, :-1], coef, g, BLOCKS)
    with pytest.raises(ValueError, match=r"'coef' must have shape \[E=\d+, 10\]"):
        ops.aggregate_scaled(m, coef[:, :-1], g, BLOCKS)
    with pytest.raises(ValueError, match="one per edge"):
        ops.aggregate_scaled(m[:-1], coef[:-1], g, BLOCKS)
    with pytest.raises(TypeError, match="'coef' has dtype torch.float64"):
        ops.aggregate_scaled(m, coef.double(), g, BLOCKS)
    with pytest.raises(TypeError, match="'blocks' must be a sequence of"):
        ops.aggregate_scaled(m, coef, g, 3)
    with pytest.raises(ValueError, match="'blocks' must be non-empty"):
        ops.aggregate_scaled(m, coef, g, ((24, 0),))
    with pytest.raises(TypeError, match="pairs of ints"):  # not cut to 5
        ops.aggregate_scaled(m, coef, g, ((5.7, 1), (0, 3), (3, 3), (2, 5)))
    for bad in ("x", ((-1, 1),)):  # heads_to_channels checks blocks the same way
        with pytest.raises((TypeError, ValueError), match="'blocks' must"):
            ops.heads_to_channels(torch.randn(E, 2), bad)
    with pytest.raises(ValueError, match=r"'head_coef' must have shape \[E=\d+, H >= 1\]"):
        ops.aggregate_scaled(m, coef, g, BLOCKS, head_coef=torch.randn(E - 1, 2))
    with pytest.raises(ValueError, match=r"'head_coef' must have shape"):
        ops.aggregate_scaled(m, coef, g, BLOCKS, head_coef=torch.randn(E, 0))
    with pytest.raises(TypeError, match="'head_coef' has dtype torch.float64"):
        ops.aggregate_scaled(m, coef, g, BLOCKS, head_coef=torch.randn(E, 2).double())


@native_only
def test_native_checks_name_the_argument():
    """Called directly (no Python checks in front), the C++ op refuses with messages that name
    the argument instead of reading out of bounds."""
    ei = ragged_edge_index(6)
    g = build_graph(ei, 6, cache=False)
    E = ei.shape[1]
    m, coef = torch.randn(E, F), torch.randn(E, K)
    op = torch.ops.graphattn.scaled_aggregate
    with pytest.raises(ValueError, match="'messages' must have 24 columns"):
        op(m[:, :-1], coef, g.ptr, [5, 0, 3, 2], [1, 3, 3, 5])
    with pytest.raises(ValueError, match="'coef' must have shape"):
        op(m, coef[:-1], g.ptr, [5, 0, 3, 2], [1, 3, 3, 5])
    with pytest.raises(ValueError, match=r"'ptr\[-1\]' must equal the number of edges"):
        op(m, coef, torch.cat([g.ptr[:-1], g.ptr[-1:] - 1]), [5, 0, 3, 2], [1, 3, 3, 5])
    with pytest.raises(ValueError, match="'muls' and 'dims'"):
        op(m, coef, g.ptr, [5, 0, 3, 2], [1, 3, 3])
    # sizes whose sum wraps around int64 to the width of the (empty) inputs
    big = 2**63 - 1
    with pytest.raises(ValueError, match="overflow int64"):
        op(torch.zeros(2, 0), torch.zeros(2, 0), torch.tensor([0, 2]), [big, big, 2], [1, 1, 1])
    with pytest.raises(ValueError, match="'grad_out' must have shape"):
        torch.ops.graphattn.scaled_aggregate_backward(torch.randn(5, F), m, coef, g.ptr,
                                                      [5, 0, 3, 2], [1, 3, 3, 5], True, True)
    with pytest.raises(ValueError, match=r"'head_coef' must have shape \[E=\d+, H >= 1\]"):
        op(m, coef, g.ptr, [5, 0, 3, 2], [1, 3, 3, 5], torch.randn(E, 0))
    with pytest.raises(ValueError, match=r"'head_coef' must have shape"):
        op(m, coef, g.ptr, [5, 0, 3, 2], [1, 3, 3, 5], torch.randn(E + 1, 2))
    with pytest.raises(TypeError, match="'head_coef' must have the messages' dtype"):
        op(m, coef, g.ptr, [5, 0, 3, 2], [1, 3, 3, 5], torch.randn(E, 2).double())
    with pytest.raises(ValueError, match="'need_head' without a 'head_coef'"):
        torch.ops.graphattn.scaled_aggregate_backward(torch.randn(6, F), m, coef, g.ptr,
                                                      [5, 0, 3, 2], [1, 3, 3, 5], True, True,
                                                      None, True)


def test_non_contiguous_inputs(backend):
    """Column-major messages and factors (every block a strided view), destination-sorted
    edges (no reordering copy in front): the same result as contiguous inputs."""
    ei = ragged_edge_index(8)
    ei = ei[:, torch.argsort(ei[1], stable=True)]
    g = build_graph(ei, 8, cache=False)
    m, coef = torch.randn(ei.shape[1], F), torch.randn(ei.shape[1], K)
    m_t, coef_t = m.t().contiguous().t(), coef.t().contiguous().t()
    torch.testing.assert_close(ops.aggregate_scaled(m_t, coef_t, g, BLOCKS),
                               ops.aggregate_scaled(m, coef, g, BLOCKS))


@native_only
@pytest.mark.parametrize("heads", [None, 2])
def test_native_create_graph_backward_third_order_on_the_kernels(heads):
    """Under create_graph the gradients are Functions on the backward kernel (closed under
    differentiation): third-order gradcheck in float64 with and without per-head factors,
    values equal to the torch form, and neither the create_graph backward nor the backward
    through it cuts the messages into block slices (the torch form's cat / split)."""
    ei = ragged_edge_index(8)
    ei = ei[:, torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(1))]
    g = build_graph(ei, 8, cache=False)
    t = dict(dtype=torch.float64, requires_grad=True)
    E = ei.shape[1]
    ins = [torch.randn(E, F, **t), torch.randn(E, K, **t)]
    if heads:
        ins.append(torch.randn(E, heads, **t))
    w = torch.randn(8, F, dtype=torch.float64)

    def grads(*xs):
        out = ops.aggregate_scaled(xs[0], xs[1], g, BLOCKS,
                                   head_coef=xs[2] if heads else None)
        return torch.autograd.grad((out * w).pow(2).sum(), xs, create_graph=True)

    with ops.set_backend("native"):
        assert torch.autograd.gradcheck(grads, ins)
        assert torch.autograd.gradgradcheck(grads, ins)
        with torch.profiler.profile() as prof:
            first = grads(*ins)
            torch.autograd.grad(sum(x.sin().sum() for x in first), ins)
    names = {e.name for e in prof.events()}
    assert "graphattn::scaled_aggregate_backward" in names
    assert not names & {"aten::split_with_sizes", "aten::slice_backward", "aten::cat"}
    with ops.set_backend("reference"):
        ref = grads(*ins)
    for a, b in zip(first, ref):
        torch.testing.assert_close(a, b)


@native_only
def test_native_create_graph_gradients_share_kernel_passes():
    """Under create_graph the three gradients come from one backward kernel pass, and the
    backward through them takes one pass per slot (the two other slots' gradients together),
    plus one for the path through U = d out back to the op itself: 1, then 3 + 1 backward
    calls, where one call per gradient made 3, then 6 + 1."""
    ei = ragged_edge_index(8)
    g = build_graph(ei, 8, cache=False)
    t = dict(dtype=torch.float64, requires_grad=True)
    E = ei.shape[1]
    ins = [torch.randn(E, F, **t), torch.randn(E, K, **t), torch.randn(E, 2, **t)]
    w = torch.randn(8, F, dtype=torch.float64)

    def calls(prof, name):
        return sum(e.name == f"graphattn::{name}" for e in prof.events())

    with ops.set_backend("native"):
        out = ops.aggregate_scaled(*ins[:2], g, BLOCKS, head_coef=ins[2])
        with torch.profiler.profile() as first:
            grads = torch.autograd.grad((out * w).pow(2).sum(), ins, create_graph=True)
        with torch.profiler.profile() as second:
            again = torch.autograd.grad(sum(x.sin().sum() for x in grads), ins)
    assert calls(first, "scaled_aggregate_backward") == 1
    assert calls(second, "scaled_aggregate_backward") == 4
    with ops.set_backend("reference"):
        out = ops.aggregate_scaled(*ins[:2], g, BLOCKS, head_coef=ins[2])
        ref = torch.autograd.grad((out * w).pow(2).sum(), ins, create_graph=True)
        ref_again = torch.autograd.grad(sum(x.sin().sum() for x in ref), ins)
    for a, b in zip((*grads, *again), (*ref, *ref_again)):
        torch.testing.assert_close(a, b)
