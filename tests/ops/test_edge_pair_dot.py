"""ops.edge_pair_dot: per-head dot products of destination and source rows along the edges,
against an explicit loop on both backends (bipartite, ragged, caller's edge order); gradients
of first and second order; no gathered [E, H, F] tensor on the native path; bad input."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from graphattn import ops
from graphattn.index import build_graph
from tests.conftest import ragged_edge_index

H, F = 3, 5


def _bipartite(n_src=6, n_dst=8, E=30):
    g = torch.Generator().manual_seed(2)
    ei = torch.stack([torch.randint(0, n_src, (E,), generator=g),
                      torch.randint(0, n_dst - 2, (E,), generator=g)])  # two empty rows
    return ei, build_graph(ei, (n_src, n_dst), cache=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_loop(backend, dtype):
    ei, g = _bipartite()
    a, b = torch.randn(8, H, F, dtype=dtype), torch.randn(6, H, F, dtype=dtype)
    want = torch.zeros(ei.shape[1], H, dtype=dtype)
    for e in range(ei.shape[1]):
        for h in range(H):
            want[e, h] = a[ei[1, e], h] @ b[ei[0, e], h]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ops.edge_pair_dot(a, b, g), want, atol=tol, rtol=tol)


@pytest.mark.skipif(not ops.native_available(), reason="graphattn._C not built")
@pytest.mark.parametrize("heads", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("width", [8, 24, 32])
def test_native_float_vector_paths(heads, width):
    """Float32 rows whose width is a multiple of 8 take the kernel's vector path (16 or 8
    lanes, four heads at a time, then the rest one by one): equal to the float64 reference."""
    ei, g = _bipartite()
    a, b = torch.randn(8, heads, width), torch.randn(6, heads, width)
    with ops.set_backend("reference"):
        want = ops.edge_pair_dot(a.double(), b.double(), g)
    with ops.set_backend("native"):
        got = ops.edge_pair_dot(a, b, g)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


def test_gradients_first_and_second_order(backend):
    """float64 gradcheck and gradgradcheck; unsorted edges, duplicates, zero in-degree."""
    ei = ragged_edge_index(9)
    ei = ei[:, torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(0))]
    g = build_graph(ei, 9, cache=False)
    t = dict(dtype=torch.float64, requires_grad=True)
    a, b = torch.randn(9, H, F, **t), torch.randn(9, H, F, **t)

    def f(a, b):
        return ops.edge_pair_dot(a, b, g)

    assert torch.autograd.gradcheck(f, (a, b))
    assert torch.autograd.gradgradcheck(f, (a, b))


@pytest.mark.skipif(not ops.native_available(), reason="graphattn._C not built")
def test_native_path_gathers_no_rows_to_the_edges():
    """Forward and backward of the native path form no [E, H, F] (or [E, H * F]) tensor: the
    rows stay where they lie (the reference path gathers both)."""
    ei, g = _bipartite(40, 50, 400)
    a = torch.randn(50, H, F, requires_grad=True)
    b = torch.randn(40, H, F, requires_grad=True)
    E = ei.shape[1]

    class Spy(TorchDispatchMode):
        big = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.numel() >= E * H * F:
                    self.big.append((func, tuple(t.shape)))
            return out

    for backend, formed in (("native", False), ("reference", True)):
        Spy.big = []
        with ops.set_backend(backend), Spy():
            torch.autograd.grad(ops.edge_pair_dot(a, b, g).square().sum(), (a, b))
        assert bool(Spy.big) == formed, (backend, Spy.big)


def test_bad_input_raises(backend):
    ei, g = _bipartite()
    a, b = torch.randn(8, H, F), torch.randn(6, H, F)
    with pytest.raises(ValueError,
                       match=r"'a' must have shape \[num_dst=8, H, F\], got \[6, 3, 5\]"):
        ops.edge_pair_dot(b, b, g)
    with pytest.raises(ValueError, match=r"'b' must have shape \[num_src=6, H=3, F=5\], got "
                                         r"\[6, 3, 4\]"):
        ops.edge_pair_dot(a, b[..., :4], g)
    with pytest.raises(TypeError, match="'graph' must be a graphattn EdgeGraph"):
        ops.edge_pair_dot(a, b, ei)
    with pytest.raises((TypeError, ValueError), match="'b'"):
        ops.edge_pair_dot(a, b.double(), g)
