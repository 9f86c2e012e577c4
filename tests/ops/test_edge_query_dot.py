"""ops.edge_query_dot: per-node queries against per-edge keys, against an explicit loop on both
backends; gradients (first and second order), opcheck, bad input."""

from __future__ import annotations

import pytest
import torch

from graphattn import ops
from graphattn.index import build_graph
from tests.conftest import GRAPHS, ragged_edge_index

native_only = pytest.mark.skipif(not ops.native_available(), reason="graphattn._C not built")

H, F = 3, 7


@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_loop(backend, graph, dtype):
    ei, n = GRAPHS[graph]()
    q, k = torch.randn(n, H, F, dtype=dtype), torch.randn(ei.shape[1], F, dtype=dtype)
    s = ops.edge_query_dot(q, k, build_graph(ei, n, cache=False))
    want = torch.zeros(ei.shape[1], H, dtype=dtype)
    for e in range(ei.shape[1]):
        for h in range(H):
            want[e, h] = q[ei[1, e], h] @ k[e]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(s, want, atol=tol, rtol=tol)


def test_gradients_first_and_second_order(backend):
    """float64 gradcheck and gradgradcheck; edges not sorted by destination, zero in-degree
    nodes (zero gradient for their queries), a hub, duplicates."""
    ei = ragged_edge_index(9)
    ei = ei[:, torch.randperm(ei.shape[1])]
    g = build_graph(ei, 9, cache=False)
    t = dict(dtype=torch.float64, requires_grad=True)
    q, k = torch.randn(9, H, F, **t), torch.randn(ei.shape[1], F, **t)

    def f(q, k):
        return ops.edge_query_dot(q, k, g)

    assert torch.autograd.gradcheck(f, (q, k))
    assert torch.autograd.gradgradcheck(f, (q, k))
    (gq,) = torch.autograd.grad(f(q, k).sum(), (q,))
    isolated = torch.bincount(ei[1], minlength=9) == 0
    assert bool(isolated.any()) and bool((gq[isolated] == 0).all())


@native_only
def test_native_equals_reference_and_opcheck():
    ei = ragged_edge_index(14)
    g = build_graph(ei, 14, cache=False)
    q = torch.randn(14, H, F, requires_grad=True)
    k = torch.randn(ei.shape[1], F, requires_grad=True)
    w = torch.randn(ei.shape[1], H)
    res = []
    for name in ("native", "reference"):
        with ops.set_backend(name):
            s = ops.edge_query_dot(q, k, g)
            res.append((s, *torch.autograd.grad((s * w).sum(), (q, k))))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    kc = g.to_csr(k.detach())
    torch.library.opcheck(torch.ops.graphattn.edge_query_dot.default,
                          (q.detach().requires_grad_(), kc.requires_grad_(), g.ptr))
    f = torch.compile(lambda q, k: ops.edge_query_dot(q, k, g), fullgraph=True)
    torch.testing.assert_close(f(q, k), ops.edge_query_dot(q, k, g))


@native_only
@pytest.mark.parametrize("heads", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("width", [1, 32])
def test_native_backward_by_head_count(heads, width):
    """The native backward equals the reference's gradients of q and k together and of each
    alone (the kernel's branches for both, grad k only and grad q only), for head counts from
    one to more than the queries' usual four and for widths 1 and 32."""
    ei = ragged_edge_index(12)
    ei = ei[:, torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(2))]
    g = build_graph(ei, 12, cache=False)
    t = dict(dtype=torch.float64, requires_grad=True)
    q, k = torch.randn(12, heads, width, **t), torch.randn(ei.shape[1], width, **t)
    w = torch.randn(ei.shape[1], heads, dtype=torch.float64)
    with ops.set_backend("reference"):
        want = torch.autograd.grad((ops.edge_query_dot(q, k, g) * w).sum(), (q, k))
    with ops.set_backend("native"):
        both = torch.autograd.grad((ops.edge_query_dot(q, k, g) * w).sum(), (q, k))
        (gq,) = torch.autograd.grad((ops.edge_query_dot(q, k.detach(), g) * w).sum(), (q,))
        (gk,) = torch.autograd.grad((ops.edge_query_dot(q.detach(), k, g) * w).sum(), (k,))
    for got in (both, (gq, gk)):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@native_only
@pytest.mark.parametrize("heads", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("width", [8, 24, 32, 160])
def test_native_float_vector_paths(heads, width):
    """Float32 rows whose width is a multiple of 8 take the kernels' vector paths (16 lanes,
    or 8 where the width is an odd multiple of 8; four heads at a time, then the rest one by
    one): the scores and the gradients of q and k, together and each alone, equal the
    float64 reference's to float32 rounding, zero in-degree rows included."""
    ei = ragged_edge_index(12)
    ei = ei[:, torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(3))]
    g = build_graph(ei, 12, cache=False)
    q, k = torch.randn(12, heads, width), torch.randn(ei.shape[1], width)
    w = torch.randn(ei.shape[1], heads)
    q64, k64 = q.double().requires_grad_(), k.double().requires_grad_()
    with ops.set_backend("reference"):
        s64 = ops.edge_query_dot(q64, k64, g)
        want = (s64, *torch.autograd.grad((s64 * w.double()).sum(), (q64, k64)))
    q32, k32 = q.clone().requires_grad_(), k.clone().requires_grad_()
    with ops.set_backend("native"):
        s = ops.edge_query_dot(q32, k32, g)
        got = (s, *torch.autograd.grad((s * w).sum(), (q32, k32)))
        (gq,) = torch.autograd.grad((ops.edge_query_dot(q32, k, g) * w).sum(), (q32,))
        (gk,) = torch.autograd.grad((ops.edge_query_dot(q, k32, g) * w).sum(), (k32,))
    for a, b in zip((*got, gq, gk), (*want, *want[1:])):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-5)
    isolated = torch.bincount(ei[1], minlength=12) == 0
    assert bool(isolated.any()) and bool((gq[isolated] == 0).all())


def test_bad_input(backend):
    ei = ragged_edge_index(6)
    g = build_graph(ei, 6, cache=False)
    q, k = torch.randn(6, H, F), torch.randn(ei.shape[1], F)
    with pytest.raises(ValueError, match=r"'q' must have shape \[num_dst=6, H, F\]"):
        ops.edge_query_dot(q[:5], k, g)
    with pytest.raises(ValueError, match=r"'k' must have shape \[E=\d+, F=7\]"):
        ops.edge_query_dot(q, k[:, :-1], g)
    with pytest.raises(TypeError, match="'q' has dtype torch.float64"):
        ops.edge_query_dot(q.double(), k, g)


@native_only
def test_native_checks_name_the_argument():
    ei = ragged_edge_index(6)
    g = build_graph(ei, 6, cache=False)
    q, k = torch.randn(6, H, F), torch.randn(ei.shape[1], F)
    op = torch.ops.graphattn.edge_query_dot
    with pytest.raises(ValueError, match="'ptr' must have N_dst \\+ 1 = 6 entries"):
        op(q[:5], k, g.ptr)
    with pytest.raises(ValueError, match="'q' must have F = 6"):
        op(q, k[:, :-1], g.ptr)
    with pytest.raises(ValueError, match="'grad_out' must have shape"):
        torch.ops.graphattn.edge_query_dot_backward(torch.randn(2, H), q, k, g.ptr, True, True)


@native_only
def test_native_create_graph_backward_is_exact_to_third_order_without_ehf():
    """Under create_graph the backward runs on the kernels (grad q and grad k are themselves
    differentiable Functions on them): third-order gradcheck in float64, and no [E, H, F]
    tensor enters any op of the create_graph backward or of the backward through it."""
    ei = ragged_edge_index(9)
    ei = ei[:, torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(0))]
    g = build_graph(ei, 9, cache=False)
    E = ei.shape[1]
    assert E != 9
    t = dict(dtype=torch.float64, requires_grad=True)
    q, k = torch.randn(9, H, F, **t), torch.randn(E, F, **t)
    w = torch.randn(E, H, dtype=torch.float64)

    def grads(q, k):  # first-order gradients, differentiable
        s = ops.edge_query_dot(q, k, g)
        return torch.autograd.grad((s * w).pow(2).sum(), (q, k), create_graph=True)

    with ops.set_backend("native"):
        assert torch.autograd.gradcheck(grads, (q, k))
        assert torch.autograd.gradgradcheck(grads, (q, k))
        with torch.profiler.profile(record_shapes=True) as prof:
            gq, gk = grads(q, k)
            torch.autograd.grad((gq.sin().sum() + gk.cos().sum()), (q, k))
    shapes = {tuple(s) for e in prof.events() for s in (e.input_shapes or []) if s}
    assert (E, H, F) not in shapes
    assert (9, H, F) in shapes  # the profile did record the op inputs
    with ops.set_backend("reference"):
        ref = grads(q, k)
    for a, b in zip((gq, gk), ref):
        torch.testing.assert_close(a, b)
