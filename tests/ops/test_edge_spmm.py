"""The bilinear kernels behind edge attention's higher derivatives (edge_pair_dot, edge_spmm):
values against explicit formulas, derivatives of every order, no [E, H, Dv] tensor in the
double backward of the fused op, opcheck and bad input."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from graphattn import ops
from graphattn.index import build_graph
from tests.conftest import ragged_edge_index

pytestmark = pytest.mark.skipif(not ops.native_available(), reason="graphattn._C not built")

N_SRC, N_DST, H, D = 7, 9, 2, 3


def _graph():
    g = torch.Generator().manual_seed(5)
    ei = torch.stack([torch.randint(0, N_SRC, (40,), generator=g),
                      torch.randint(0, N_DST - 2, (40,), generator=g)])  # two empty rows
    ei = torch.cat([ei, torch.tensor([[1, 1], [4, 4]])], 1)  # a duplicate edge
    return ei, build_graph(ei, (N_SRC, N_DST), cache=False)


def _family():
    from graphattn.ops import _native

    return _native._PairDot, _native._Spmm, _native._Rows


def _rows(g):
    *_, Rows = _family()
    return Rows(g.ptr, g.src, g.csc_ptr, g.csc_eid, g.csc_dst, g.dst, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_against_explicit_sums(dtype):
    ei, g = _graph()
    a, b = torch.randn(N_DST, H, D, dtype=dtype), torch.randn(N_SRC, H, D, dtype=dtype)
    w = torch.randn(ei.size(1), H, dtype=dtype)
    csr_w = g.to_csr(w)
    s = torch.ops.graphattn.edge_pair_dot(a, b, g.ptr, g.src)
    torch.testing.assert_close(g.from_csr(s), (a[ei[1]] * b[ei[0]]).sum(-1))
    out = torch.ops.graphattn.edge_spmm(csr_w, b, g.ptr, g.src)
    ref = torch.zeros(N_DST, H, D, dtype=dtype).index_add_(0, ei[1], w.unsqueeze(-1) * b[ei[0]])
    torch.testing.assert_close(out, ref)
    # the transposed view: by sources, through the CSC positions
    out_t = torch.ops.graphattn.edge_spmm(csr_w, a, g.csc_ptr, g.csc_dst, g.csc_eid)
    ref_t = torch.zeros(N_SRC, H, D, dtype=dtype).index_add_(0, ei[0], w.unsqueeze(-1) * a[ei[1]])
    torch.testing.assert_close(out_t, ref_t)
    assert bool((out[N_DST - 2:] == 0).all())  # rows without edges


def test_every_order_by_gradcheck():
    """gradcheck, gradgradcheck and a third order on each member; each derivative is another
    member (a wrong orientation or a missing factor fails here)."""
    PairDot, Spmm, _ = _family()
    ei, g = _graph()
    rows = _rows(g)
    t = dict(dtype=torch.float64, requires_grad=True)
    a, b = torch.randn(N_DST, H, D, **t), torch.randn(N_SRC, H, D, **t)
    w = torch.randn(ei.size(1), H, **t)
    cases = [
        (lambda a, b: PairDot.apply(a, b, rows), (a, b)),
        (lambda w, b: Spmm.apply(w, b, rows, False), (w, b)),
        (lambda w, a: Spmm.apply(w, a, rows, True), (w, a)),
    ]
    for f, args in cases:
        assert torch.autograd.gradcheck(f, args)
        assert torch.autograd.gradgradcheck(f, args)

        def first(*xs, f=f):
            out = f(*xs)
            return torch.autograd.grad(out.square().sum(), xs, create_graph=True)

        assert torch.autograd.gradgradcheck(first, args)


class _Shapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_double_backward_forms_no_edge_by_value_tensor(kind):
    """A force-style second derivative through the fused op on the CPU: the same numbers as
    the reference path, and no tensor of [E, H, Dv] is created on the way (Dv = 5 differs
    from every other width here; GATv2's [E, H, D] pre-activation is its score's own)."""
    ei = ragged_edge_index(10)
    g = build_graph(ei, 10, cache=False)
    E, Dv = g.num_edges, 5
    torch.manual_seed(0)
    x = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    Dq = 1 if kind == "additive" else 4
    att = torch.randn(H, Dq, dtype=torch.float64) if kind == "v2" else None
    wq = torch.randn(8, H * Dq, dtype=torch.float64)
    wk = torch.randn(8, H * Dq, dtype=torch.float64)
    wv = torch.randn(8, H * Dv, dtype=torch.float64)

    def force_loss():
        q = (x @ wq).tanh().view(10, H, Dq)
        k = (x @ wk).view(10, H, Dq)
        v = (x @ wv).view(10, H, Dv)
        out = ops.edge_attention(q, k, v, g, kind, att=att)
        (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), x)[0]

    with ops.set_backend("reference"):
        ref = force_loss()
    with ops.set_backend("native"), _Shapes() as spy:
        got = force_loss()
    torch.testing.assert_close(got, ref)
    assert (E, H, Dv) not in spy.shapes and any(s == (E, H) for s in spy.shapes)


def test_bad_input_is_refused_with_named_errors():
    ei, g = _graph()
    a, b = torch.randn(N_DST, H, D), torch.randn(N_SRC, H, D)
    w = torch.randn(ei.size(1), H)
    pair, spmm = torch.ops.graphattn.edge_pair_dot, torch.ops.graphattn.edge_spmm
    with pytest.raises(ValueError, match="'src' holds 7 at position 0"):
        pair(a, b, g.ptr, torch.full_like(g.src, 7))
    with pytest.raises(ValueError, match=r"'a' and 'b' must have the same heads and width"):
        pair(a, b[..., :2], g.ptr, g.src)
    with pytest.raises(ValueError, match="'ptr' must have N_dst \\+ 1 = 10 entries"):
        pair(a, b, g.ptr[:-1], g.src)
    with pytest.raises(ValueError, match=r"'w' must have shape \[E=42, H=2\]"):
        spmm(w[:, :1], b, g.ptr, g.src)
    with pytest.raises(ValueError, match="'col' holds"):
        spmm(w, b[:3], g.ptr, g.src)
    with pytest.raises(ValueError, match="'eid' holds 42"):
        spmm(w, a, g.csc_ptr, g.csc_dst, torch.full_like(g.csc_eid, 42))
    with pytest.raises(TypeError, match="'x' must be float32 or float64, got Long"):
        spmm(w, b.long(), g.ptr, g.src)


def test_opcheck():
    ei, g = _graph()
    a, b = torch.randn(N_DST, H, D), torch.randn(N_SRC, H, D)
    w = torch.randn(ei.size(1), H)
    torch.library.opcheck(torch.ops.graphattn.edge_pair_dot.default, (a, b, g.ptr, g.src))
    torch.library.opcheck(torch.ops.graphattn.edge_spmm.default, (w, b, g.ptr, g.src))
    torch.library.opcheck(torch.ops.graphattn.edge_spmm.default,
                          (w, a, g.csc_ptr, g.csc_dst, g.csc_eid))
