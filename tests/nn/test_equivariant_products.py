"""The block-wise tensor product (native kernel and torch form) and linear map equal e3nn's
modules they replace (values and gradients, float64), and stay equivariant."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("e3nn")
from e3nn import o3  # noqa: E402
from e3nn.util.test import assert_equivariant  # noqa: E402

from graphattn import ops  # noqa: E402
from graphattn.nn.equivariant.products import (  # noqa: E402
    DepthwiseTensorProduct,
    IrrepsGate,
    IrrepsLinear,
    depthwise_tensor_product,
)

CASES = [("32x0e+8x1o+4x2e", 2), ("6x0e+4x0e+5x1o+3x2e", 2), ("8x0e+3x1o", 1),
         ("4x0e+2x1o+2x2e+1x3o", 3), ("5x0e+2x1e+3x1o", 2)]


pytestmark = pytest.mark.usefixtures("float64")


def _grads(out, inputs, probe):
    return torch.autograd.grad((out * probe).sum(), inputs)


@pytest.mark.parametrize("irreps,lmax", CASES)
def test_depthwise_tensor_product_equals_e3nn(backend, irreps, lmax):
    irreps, sh = o3.Irreps(irreps), o3.Irreps.spherical_harmonics(lmax)
    ref, mid = depthwise_tensor_product(irreps, sh, irreps)
    tp = DepthwiseTensorProduct(irreps, sh, irreps)
    assert tp.irreps_out == mid and tp.weight_numel == ref.weight_numel
    E = 9
    x = torch.randn(E, irreps.dim, requires_grad=True)
    y = o3.spherical_harmonics(sh, torch.randn(E, 3), True, "component").requires_grad_(True)
    w = torch.randn(E, ref.weight_numel, requires_grad=True)
    a, b = ref(x, y, w), tp(x, y, w)
    torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)
    probe = torch.randn_like(a)
    for ga, gb in zip(_grads(a, (x, y, w), probe), _grads(b, (x, y, w), probe)):
        torch.testing.assert_close(gb, ga, atol=1e-12, rtol=1e-12)
    # harmonics without a gradient (energy-only training): the native kernel where built
    a, b = ref(x, y.detach(), w), tp(x, y.detach(), w)
    torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)
    for ga, gb in zip(_grads(a, (x, w), probe), _grads(b, (x, w), probe)):
        torch.testing.assert_close(gb, ga, atol=1e-12, rtol=1e-12)
    # a wrong Clebsch-Gordan contraction (e.g. a transposed w3j) would break this
    assert_equivariant(lambda x_, y_: tp(x_, y_, w.detach()), args_in=[x.detach(), y.detach()],
                       irreps_in=[irreps, sh], irreps_out=[mid], tolerance=1e-9)


@pytest.mark.parametrize("irreps,lmax", CASES)
def test_irreps_linear_equals_e3nn(irreps, lmax):
    _, mid = depthwise_tensor_product(o3.Irreps(irreps), o3.Irreps.spherical_harmonics(lmax),
                                      o3.Irreps(irreps))
    out_irreps = o3.Irreps("8x0e+4x1o+4x2e+2x1e")
    lin, ref = IrrepsLinear(mid, out_irreps), o3.Linear(mid, out_irreps)
    with torch.no_grad():
        lin.weight.normal_()
        ref.weight.copy_(lin.weight)
    x = torch.randn(2, 5, mid.dim, requires_grad=True)
    a, b = ref(x), lin(x)
    torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)
    probe = torch.randn_like(a)
    ga = _grads(a, (x, ref.weight), probe)
    gb = _grads(b, (x, lin.weight), probe)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(v, u, atol=1e-12, rtol=1e-12)
    assert_equivariant(lin, irreps_in=[mid], irreps_out=[out_irreps], tolerance=1e-9)


SILU, TANH = torch.nn.functional.silu, torch.tanh
GATES = [  # scalars, their activations, gates, gated, whether the input is in e3nn's order
    ("32x0e", [SILU], "8x0e", "8x1o", True),  # MLANet's update gate at l_max = 1
    ("16x0e", [SILU], "3x0e+5x0e", "3x1o+5x2e", True),  # two gate blocks, two gated blocks
    ("6x0e", [SILU], "", "", True),  # scalars only
    ("6x0e+4x0o", [SILU, TANH], "2x0e", "2x1o", False),  # e3nn sorts it: its module runs
]


@pytest.mark.parametrize("scalars,acts,gates,gated,in_order", GATES)
def test_irreps_gate_equals_e3nn(scalars, acts, gates, gated, in_order):
    from e3nn import nn as enn

    gate_acts = [torch.sigmoid] * len(o3.Irreps(gates))
    ref = enn.Gate(scalars, acts, gates, gate_acts, gated)
    fast = IrrepsGate(scalars, acts, gates, gate_acts, gated)
    assert fast.irreps_in == ref.irreps_in and fast.irreps_out == ref.irreps_out
    assert fast.in_order == in_order
    x = torch.randn(3, 4, ref.irreps_in.dim, requires_grad=True)
    a, b = ref(x), fast(x)
    torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)
    probe = torch.randn_like(a)
    torch.testing.assert_close(_grads(b, (x,), probe)[0], _grads(a, (x,), probe)[0],
                               atol=1e-12, rtol=1e-12)
    assert_equivariant(fast, irreps_in=[fast.irreps_in], irreps_out=[fast.irreps_out],
                       tolerance=1e-9)


def test_bad_sh_irreps_raise():
    with pytest.raises(ValueError, match="irreps_sh"):
        DepthwiseTensorProduct("4x0e+2x1o", "2x0e+1x1o", "4x0e+2x1o")


def test_tensor_product_inputs_of_other_widths_raise_on_both_backends(backend):
    """Extra columns of x or y (the kernel read past them silently) and one weight row for
    all edges (the torch path broadcast it) are refused the same way on both paths."""
    tp = DepthwiseTensorProduct("4x0e+2x1o", "1x0e+1x1o", "4x0e+2x1o")
    E = 5
    x, y, w = torch.randn(E, 10), torch.randn(E, 4), torch.randn(E, tp.weight_numel)
    assert tp(x, y, w).shape == (E, tp.dim_out)
    for args, name in (((torch.randn(E, 11), y, w), "x"), ((x, torch.randn(E, 5), w), "y"),
                       ((x, y, w[:1]), "weight"), ((x, y[:4], w), "y")):
        with pytest.raises(ValueError, match=rf"'{name}' must have shape \[E=5, "):
            tp(*args)


native_only = pytest.mark.skipif(not ops.native_available(), reason="graphattn._C not built")


@native_only
@pytest.mark.parametrize("irreps,lmax", [("3x0e+2x1o+1x2e", 2), ("2x0e+1x1o+1x2e+1x3o", 3)])
def test_native_tensor_product_second_order_and_opcheck(irreps, lmax):
    """Second and third derivatives through the native op (its backward under create_graph
    is autograd Functions on the backward kernel): gradgradcheck in float64, the Hessian-vector
    products of the torch form, and torch.library.opcheck of the op (fake, autograd
    registration)."""
    irreps, sh = o3.Irreps(irreps), o3.Irreps.spherical_harmonics(lmax)
    tp = DepthwiseTensorProduct(irreps, sh, irreps)
    E = 3
    x = torch.randn(E, irreps.dim, requires_grad=True)
    y = torch.randn(E, sh.dim, requires_grad=True)
    w = torch.randn(E, tp.weight_numel, requires_grad=True)

    def native(x, y, w):
        return torch.ops.graphattn.depthwise_tp(x, y, w * tp.path_const, tp.coupling, tp.meta,
                                                tp.dim_out)

    torch.testing.assert_close(native(x, y, w), tp.forward_torch(x, y, w))
    assert torch.autograd.gradgradcheck(native, (x, y, w))
    # the eager fast path (graphattn.ops._native.call) has the same derivatives
    eager = lambda *a: tp(*a)  # noqa: E731
    assert torch.autograd.gradgradcheck(eager, (x, y, w))
    # each gradient alone, differentiated again: the torch form's second derivatives
    # the module takes the kernel also when the harmonics carry a gradient (forces)
    assert tp(x, y, w).grad_fn.name() == "DepthwiseTPBackward"
    probe, vs = torch.randn(E, tp.dim_out), [torch.randn_like(t) for t in (x, y, w)]
    for j in range(3):
        hv = []
        for f in (tp, tp.forward_torch):
            (g,) = torch.autograd.grad((f(x, y, w) * probe).sum(), (x, y, w)[j],
                                       create_graph=True)
            hv.append(torch.autograd.grad((g * vs[j]).sum(), (x, y, w), allow_unused=True))
        for a, b in zip(*hv):
            if b is None:  # linear in its own slot: no second derivative there
                assert a is None or not a.abs().any()
            else:
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    # third order: gradgradcheck of one gradient
    gx = lambda x, y, w: torch.autograd.grad(  # noqa: E731
        (native(x, y, w) * probe).sum(), x, create_graph=True)[0]
    assert torch.autograd.gradgradcheck(gx, (x, y, w))
    wc = w * tp.path_const
    torch.library.opcheck(torch.ops.graphattn.depthwise_tp.default,
                          (x, y, wc.detach().requires_grad_(), tp.coupling, tp.meta, tp.dim_out))


@native_only
@pytest.mark.parametrize("irreps,lmax", [("5x0e+3x1o+2x2e", 1), ("4x0e+3x1o+2x2e", 2),
                                         ("2x0e+2x1o+1x2e+2x3o", 3)])
def test_native_tensor_product_first_order_gradients(irreps, lmax):
    """The kernel's own backward (first order, as in training) gives the torch form's
    gradients of x, y and the weights, for irreps whose widths the kernel specialises (1, 3,
    5) and l = 3 (its run-time widths), each gradient alone or all three."""
    irreps, sh = o3.Irreps(irreps), o3.Irreps.spherical_harmonics(lmax)
    tp = DepthwiseTensorProduct(irreps, sh, irreps)
    E = 7
    args = [torch.randn(E, irreps.dim), torch.randn(E, sh.dim), torch.randn(E, tp.weight_numel)]
    probe = torch.randn(E, tp.dim_out)

    def native(x, y, w):
        return torch.ops.graphattn.depthwise_tp(x, y, w * tp.path_const, tp.coupling, tp.meta,
                                                tp.dim_out)

    for wanted in ((0, 1, 2), (0,), (1,), (2,)):
        inputs = [a.clone().requires_grad_(i in wanted) for i, a in enumerate(args)]
        got = torch.autograd.grad((native(*inputs) * probe).sum(),
                                  [inputs[i] for i in wanted])
        want = torch.autograd.grad((tp.forward_torch(*inputs) * probe).sum(),
                                   [inputs[i] for i in wanted])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@native_only
def test_native_tensor_product_refuses_bad_tables():
    """Called directly, the C++ op checks its path table against the inputs and names what is
    wrong instead of reading out of bounds."""
    tp = DepthwiseTensorProduct("4x0e+2x1o", "1x0e+1x1o", "4x0e+2x1o")
    E = 3
    x, y = torch.randn(E, tp.irreps_in.dim), torch.randn(E, tp.irreps_sh.dim)
    w = torch.randn(E, tp.weight_numel)
    op = torch.ops.graphattn.depthwise_tp
    bad = tp.meta.clone()
    bad[0, 0] = 1000  # x offset past the features
    with pytest.raises(ValueError, match="'meta' row 0 addresses outside the inputs"):
        op(x, y, w, tp.coupling, bad, tp.dim_out)
    with pytest.raises(ValueError, match="'meta' covers"):
        op(x, y, w, tp.coupling, tp.meta, tp.dim_out + 1)
    with pytest.raises(ValueError, match="'y' must have shape"):
        op(x, y[:2], w, tp.coupling, tp.meta, tp.dim_out)
    with pytest.raises(TypeError, match="'weight' must have dtype Double, got Float"):
        op(x, y, w.float(), tp.coupling, tp.meta, tp.dim_out)
    huge = torch.tensor([[0, 0, 0, 2**62, 0, 2**62, 4, 1, 4]])  # offsets that would wrap
    with pytest.raises(ValueError, match="addresses outside the inputs"):
        op(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(100), huge, 0)
    shared = tp.meta.clone()
    shared[1, 3] = shared[0, 3]  # two paths reading the same weights
    with pytest.raises(ValueError, match="share weight column"):
        op(x, y, w, tp.coupling, shared, tp.dim_out)


def test_high_degrees_take_the_torch_form():
    """Irreps beyond the kernel's l <= 7 (coupling held on the stack) fall back to the torch
    form instead of failing."""
    tp = DepthwiseTensorProduct("2x8e", "1x0e+1x1o", "8e+8o+7o")
    assert not tp.native_ok
    x, y = torch.randn(3, tp.irreps_in.dim), torch.randn(3, 4)
    w = torch.randn(3, tp.weight_numel)
    torch.testing.assert_close(tp(x, y, w), tp.forward_torch(x, y, w))
