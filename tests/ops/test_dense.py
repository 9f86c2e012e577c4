"""ops.linear: F.linear through oneDNN on the CPU (forward, gradients, double backward, gating),
and the attention layers that project through it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from graphattn import ops
from graphattn.index import build_graph
from graphattn.nn import GraphAttention
from graphattn.ops import dense

onednn = pytest.mark.skipif(not dense.onednn_available(), reason="torch built without oneDNN")

# rows x in x out above dense.MIN_MACS, with in != out so that a transposed weight fails
R, IN, OUT = 1024, 48, 80


@pytest.fixture
def counted(monkeypatch):
    """Counts the calls that reach oneDNN's kernel (so a test knows the path it covered)."""
    calls = []
    real = dense._onednn_product

    def spy(x, w, b):
        calls.append(tuple(x.shape))
        return real(x, w, b)

    monkeypatch.setattr(dense, "_onednn_product", spy)
    return calls


def _operands(requires_grad=True, bias=True, strided=False):
    x = torch.randn(R, IN + 16 if strided else IN)
    x = x[:, 8: 8 + IN] if strided else x  # a non-contiguous view
    w = torch.randn(OUT, IN)
    b = torch.randn(OUT) if bias else None
    for t in (x, w, b):
        if t is not None:
            t.requires_grad_(requires_grad)
    return x, w, b


@onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("strided", [False, True])
def test_linear_equals_f_linear_with_gradients(counted, bias, strided):
    x, w, b = _operands(bias=bias, strided=strided)
    assert dense.use_onednn(x, w, b)
    out = ops.linear(x, w, b)
    go = torch.randn(R, OUT)
    grads = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None], go)
    ref = F.linear(x, w, b)
    ref_grads = torch.autograd.grad(ref, [t for t in (x, w, b) if t is not None], go)
    assert counted == [(R, IN), (R, OUT)]  # forward, and grad x as grad @ W
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


@onednn
def test_linear_double_backward_matches_f_linear(counted):
    x, w, b = _operands()

    def second_order(fn):
        out = fn(x, w, b)
        (gx,) = torch.autograd.grad((out * out).sum(), [x], create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), [x, w, b])

    got, ref = second_order(ops.linear), second_order(F.linear)
    assert counted  # the forward ran on oneDNN
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-2)


@onednn
def test_linear_only_takes_onednn_where_it_applies(counted):
    x, w, b = _operands(requires_grad=False)
    assert dense.use_onednn(x, w, b)
    assert not dense.use_onednn(x.double(), w.double(), b.double())  # float64: F.linear
    assert not dense.use_onednn(x[:8], w, b)  # below MIN_MACS
    assert not dense.use_onednn(x.view(2, R // 2, IN), w, b)  # not 2-D
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own F.linear (bfloat16)
        assert not dense.use_onednn(x, w, b)
        assert ops.linear(x, w, b).dtype == torch.bfloat16
    with ops.set_backend("reference"):  # the pure-torch backend stays pure torch
        assert not dense.use_onednn(x, w, b)
        torch.testing.assert_close(ops.linear(x, w, b), F.linear(x, w, b), rtol=0, atol=0)
    assert counted == []
    torch.testing.assert_close(ops.linear(x.double(), w.double(), b.double()),
                               F.linear(x.double(), w.double(), b.double()))


def test_linear_under_torch_func_transforms():
    # vmap and grad of torch.func take F.linear (its batching and derivative rules)
    x, w, b = _operands(requires_grad=False)
    g = torch.func.grad(lambda w: ops.linear(x, w, b).square().sum())(w)
    torch.testing.assert_close(g, torch.func.grad(lambda w: F.linear(x, w, b).square().sum())(w))
    xb = torch.randn(4, R, IN)  # each vmapped [R, IN] sample is above MIN_MACS on its own
    assert not dense.onednn_available() or dense.use_onednn(xb[0], w, b)
    torch.testing.assert_close(torch.vmap(lambda t: ops.linear(t, w, b))(xb), F.linear(xb, w, b))


@onednn
def test_linear_reads_strided_and_expanded_bias(counted):
    x, w, _ = _operands(requires_grad=False)
    for b in (torch.randn(2 * OUT)[::2], torch.randn(1).expand(OUT)):
        assert not b.is_contiguous()
        torch.testing.assert_close(ops.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    assert len(counted) == 2


def test_linear_leaves_sparse_layouts_to_f_linear(counted):
    x, w, b = _operands(requires_grad=False)
    assert not dense.use_onednn(x.to_sparse(), w, b)
    assert not dense.use_onednn(x, w.to_sparse(), b)
    assert not dense.use_onednn(x, w, b.to_sparse())
    torch.testing.assert_close(ops.linear(x.to_sparse(), w, b), F.linear(x, w, b),
                               rtol=1e-5, atol=1e-4)
    assert counted == []


def test_linear_under_forward_mode_ad(counted):
    import torch.autograd.forward_ad as fwAD

    x, w, b = _operands(requires_grad=False)
    tx, tw = torch.randn_like(x), torch.randn_like(w)
    with fwAD.dual_level():
        out = ops.linear(fwAD.make_dual(x, tx), fwAD.make_dual(w, tw), b)
        primal, tangent = fwAD.unpack_dual(out)
    torch.testing.assert_close(primal, F.linear(x, w, b))
    torch.testing.assert_close(tangent, F.linear(tx, w) + F.linear(x, tw), rtol=1e-5, atol=1e-4)
    assert counted == []


@onednn
@pytest.mark.parametrize("frozen", ["weight", "input"])
def test_linear_saves_only_what_its_backward_reads(counted, frozen):
    x, w, b = _operands(requires_grad=False)
    (w if frozen == "input" else x).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t,
                                                  lambda t: t):
        out = ops.linear(x, w, b)
    out.sum().backward()
    assert counted
    # a frozen weight: grad x needs W only; a constant input: grad W needs x only
    assert saved == ([w.shape] if frozen == "weight" else [x.shape])


def test_linear_rejects_bad_shapes_like_f_linear():
    x, w, b = _operands(requires_grad=False)
    with pytest.raises(RuntimeError):
        ops.linear(x, w.t().contiguous(), None)  # [in, out]: in mismatch, as F.linear says
    with pytest.raises(RuntimeError):
        ops.linear(x, w, torch.randn(OUT + 1))


@onednn
@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
def test_layers_project_through_onednn_with_the_reference_numbers(counted, mode):
    N = 2048  # N x 64 x 64 above MIN_MACS
    ei = torch.randint(0, N, (2, 8 * N))
    layer = GraphAttention(64, 16, heads=4, mode=mode)
    x = torch.randn(N, 64, requires_grad=True)

    def run():
        out = layer(x, ei)
        go = torch.ones_like(out) / out.numel()
        return (out, *torch.autograd.grad(out, [x, *layer.parameters()], go,
                                          allow_unused=True))

    got = run()
    assert counted, f"{mode}: no projection reached oneDNN"
    with ops.set_backend("reference"):
        ref = run()
    for g, r in zip(got, ref):
        if r is None:
            assert g is None
            continue
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


@onednn
def test_projected_attention_lean_backward_through_onednn(counted):
    N = 2048
    g = build_graph(torch.randint(0, N, (2, 8 * N)), N, cache=False)
    x = torch.randn(N, 64, requires_grad=True)
    # weights ~ 1/sqrt(in) (as initialised), so that the logits are O(1): large random ones
    # make the softmax amplify the float32 rounding of either product
    params = [(torch.randn(64, 64) / 8 if i % 2 == 0 else torch.randn(64)).requires_grad_()
              for i in range(6)]

    def run():
        out = ops.projected_attention(x, x, *params, g, 4)
        return (out, *torch.autograd.grad(out.square().sum(), [x, *params]))

    got = run()
    assert len(counted) >= 3 + 3  # q, k, v forward; grad x from grad q, grad k, grad v
    with ops.set_backend("reference"):
        ref = run()
    # float32 sums over 2048 rows in another order; grad b_k is zero up to that rounding (a
    # constant added to every key of a row leaves its softmax unchanged), so the tolerance is
    # relative to the largest gradient
    scale = max(float(r.detach().abs().max()) for r in ref)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
def test_layers_run_forward_hooks_of_their_projections(mode):
    # a hook that doubles a projection's output is a projection with doubled W and b: a layer
    # that read lin.weight directly (past the hook) would give the undoubled numbers
    N = 2048
    ei = torch.randint(0, N, (2, 8 * N))
    torch.manual_seed(0)
    hooked = GraphAttention(64, 16, heads=4, mode=mode)
    doubled = GraphAttention(64, 16, heads=4, mode=mode)
    doubled.load_state_dict(hooked.state_dict())
    lins = {n: m for n, m in hooked.named_modules() if type(m).__name__ == "Linear"}
    calls = []
    for n, lin in lins.items():
        lin.register_forward_hook(lambda m, i, o, n=n: calls.append(n) or 2 * o)
    with torch.no_grad():
        for n, m in doubled.named_modules():
            if n in lins:
                m.weight.mul_(2)
                if m.bias is not None:
                    m.bias.mul_(2)
    x = torch.randn(N, 64)
    torch.testing.assert_close(hooked(x, ei), doubled(x, ei), rtol=1e-4, atol=1e-4)
    assert calls  # the hooks ran


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
@pytest.mark.parametrize("scope", ["module", "global"])
def test_layers_run_backward_hooks_of_their_projections(mode, scope):
    # full backward hooks fire only when the module itself is called: a layer that read
    # lin.weight directly would skip them
    N = 2048
    ei = torch.randint(0, N, (2, 8 * N))
    layer = GraphAttention(64, 16, heads=4, mode=mode)
    lins = [m for m in layer.modules() if type(m).__name__ == "Linear"]
    calls = []
    if scope == "module":
        handles = [lin.register_full_backward_hook(lambda m, gi, go: calls.append(m))
                   for lin in lins]
    else:
        handles = [torch.nn.modules.module.register_module_full_backward_hook(
            lambda m, gi, go: calls.append(m) if m in lins else None)]
    try:
        x = torch.randn(N, 64, requires_grad=True)
        layer(x, ei).sum().backward()
    finally:
        for h in handles:
            h.remove()
    assert {id(m) for m in calls} == {id(m) for m in lins}


@onednn
def test_broadcast_gradient_takes_the_outer_product(monkeypatch):
    """The gradient of ``out.sum()`` is one row broadcast over R rows: grad W is then
    g_0 (sum_r x_r)^T, without copying the broadcast into an [R, out] matrix for ``mm``."""
    x, w, b = _operands()
    out = ops.linear(x, w, b)
    copies = []
    real = torch.Tensor.t

    def spy(self):
        if self.dim() == 2 and self.size(0) == R and self.stride(0) == 0:
            copies.append(self.shape)
        return real(self)

    monkeypatch.setattr(torch.Tensor, "t", spy)
    grads = torch.autograd.grad(out.sum(), [x, w, b])
    monkeypatch.undo()
    ref = torch.autograd.grad(F.linear(x, w, b).sum(), [x, w, b])
    assert copies == []  # the broadcast gradient never reached grad.t() @ x
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)
