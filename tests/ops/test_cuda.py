"""The CUDA kernels of the core (csrc/cuda/): native on the GPU against the reference on the
CPU (forward, returned weights and every gradient), gradcheck, degenerate graphs, masking,
large logits, determinism, bad indices, opcheck, torch.compile and the layers.

Skipped where there is no GPU or the extension was built without CUDA (CI has neither); run
on a GPU machine after ``python setup.py build_ext --inplace`` with a CUDA build of torch.
"""

from __future__ import annotations

import pytest
import torch

from graphattn import ops
from graphattn.index import build_graph
from graphattn.ops import _native
from tests.conftest import GRAPHS, ragged_edge_index
from tests.ops.test_edge_attention import TOL, TOL_GRAD, make_inputs
from tests.ops.test_edge_attention import _run as run_op

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.native_available() and _native.CUDA_VERSION > 0),
    reason="needs a GPU and graphattn._C built with CUDA",
)
CUDA = torch.device("cuda")


def _to(inputs, device):
    return [None if t is None else t.detach().to(device).requires_grad_(t.requires_grad)
            for t in inputs]


def _run(kind, ei, n, inputs, gout, weights_in_loss, device, backend_name):
    """test_edge_attention's forward + gradients on ``device``, results back on the CPU."""
    g = build_graph(ei.to(device), n, cache=False)
    out, w, grads = run_op(kind, g, _to(inputs, device), weights_in_loss, backend_name,
                           gout.to(device))
    return [t.cpu() for t in (out, w, *grads)]


def _compare(kind, ei, n, H, D, Dv, dtype, n_src=None):
    n_src = n if n_src is None else n_src
    inputs = make_inputs(kind, n_src, n, ei.size(1), H, D, Dv=Dv, dtype=dtype)
    gout = torch.randn(n, H, Dv, dtype=dtype)
    nodes = n if n_src == n else (n_src, n)
    for weights_in_loss in (False, True):
        got = _run(kind, ei, nodes, inputs, gout, weights_in_loss, CUDA, "native")
        ref = _run(kind, ei, nodes, inputs, gout, weights_in_loss, "cpu", "reference")
        torch.testing.assert_close(got[0], ref[0], **TOL[dtype])
        torch.testing.assert_close(got[1], ref[1], **TOL[dtype])
        for a, b in zip(got[2:], ref[2:]):
            torch.testing.assert_close(a, b, **TOL_GRAD[dtype])


# head dims across every register width of the kernel (T = 1, 2, 4, 8 chunks of 32 lanes)
KIND_DIMS = [("dot", d) for d in (1, 7, 32, 64, 100, 256)] + [
    ("v2", d) for d in (1, 7, 32, 64, 200)
] + [("additive", 1)]


@pytest.mark.parametrize("kind, D", KIND_DIMS)
@pytest.mark.parametrize("H", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_reference_forward_weights_and_all_gradients(kind, D, H, dtype):
    ei = ragged_edge_index(20)  # zero in-degree, a hub, duplicates, self-loops
    Dv = 32 if kind == "additive" else D
    _compare(kind, ei, 20, H, D, Dv, dtype)


@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_cuda_value_width_differs_from_key_width(kind):
    ei = ragged_edge_index(16)
    D = 1 if kind == "additive" else 9
    _compare(kind, ei, 16, 3, D, 70, torch.float64)


@pytest.mark.parametrize("graph", ["empty", "no-nodes", "single"])
@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_cuda_degenerate_graphs(graph, kind):
    ei, n = GRAPHS[graph]()
    _compare(kind, ei, n, 2, 1 if kind == "additive" else 3, 5, torch.float64)


@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_cuda_bipartite_and_hub_of_thousands(kind):
    n_src, n_dst = 3000, 7
    src = torch.randint(0, n_src, (6000,))
    dst = torch.cat([torch.zeros(4000, dtype=torch.long), torch.randint(1, n_dst - 1, (2000,))])
    ei = torch.stack([src, dst])
    _compare(kind, ei, n_dst, 4, 1 if kind == "additive" else 16, 16, torch.float64,
             n_src=n_src)


def test_cuda_non_contiguous_inputs():
    n, H, D = 12, 4, 8
    ei = ragged_edge_index(n)
    g = build_graph(ei.to(CUDA), n, cache=False)
    base = torch.randn(n, D, H, dtype=torch.float64, device=CUDA)
    q, k = base.transpose(1, 2), (2 * base).transpose(1, 2)
    v = torch.randn(H, n, 3, dtype=torch.float64, device=CUDA).transpose(0, 1)
    assert not q.is_contiguous() and not v.is_contiguous()
    out = ops.edge_attention(q, k, v, g, "dot")
    with ops.set_backend("reference"):
        ref = ops.edge_attention(q, k, v, g, "dot")
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_cuda_gradcheck_float64(kind):
    ei = ragged_edge_index(8).to(CUDA)
    g = build_graph(ei, 8, cache=False)
    q, k, v, att, b = _to(make_inputs(kind, 8, 8, ei.size(1), 2, 3, Dv=2), CUDA)
    if kind != "dot":  # keep LeakyReLU pre-activations away from the kink
        with torch.no_grad():
            q.add_(3.0)

    def f(q, k, v, b, *att):
        return ops.edge_attention(q, k, v, g, kind, bias=b, att=att[0] if att else None,
                                  return_weights=True)

    args = (q, k, v, b) + ((att,) if att is not None else ())
    assert torch.autograd.gradcheck(f, args, atol=1e-6)


def test_cuda_masked_and_empty_neighbourhoods_give_zeros_and_finite_gradients():
    ei = torch.tensor([[0, 1, 2, 3], [1, 1, 2, 2]], device=CUDA)  # node 0, 3: no in-edges
    g = build_graph(ei, 4, cache=False)
    q = torch.randn(4, 2, 3, device=CUDA, requires_grad=True)
    k = torch.randn(4, 2, 3, device=CUDA, requires_grad=True)
    v = torch.randn(4, 2, 3, device=CUDA, requires_grad=True)
    bias = torch.tensor([0.0, 0.0, -float("inf"), -float("inf")], device=CUDA)  # node 2 masked
    out, w = ops.edge_attention(q, k, v, g, "dot", bias=bias, return_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert out[[0, 2, 3]].abs().sum() == 0 and w[2:].abs().sum() == 0
    grads = torch.autograd.grad(out.sum() + w.sum(), (q, k, v))
    assert all(torch.isfinite(t).all() for t in grads)
    assert grads[0][[0, 2, 3]].abs().sum() == 0


def test_cuda_large_logits_do_not_overflow():
    ei = ragged_edge_index(10).to(CUDA)
    g = build_graph(ei, 10, cache=False)
    q = torch.randn(10, 2, 4, device=CUDA) * 1e2
    k = torch.randn(10, 2, 4, device=CUDA) * 1e2  # scores ~ 1e4
    v = torch.randn(10, 2, 4, device=CUDA)
    out, w = ops.edge_attention(q, k, v, g, "dot", return_weights=True)
    assert torch.isfinite(out).all()
    sums = torch.zeros(10, 2, device=CUDA).index_add_(0, ei[1], w)
    deg = torch.bincount(ei[1], minlength=10)
    torch.testing.assert_close(sums[deg > 0], torch.ones_like(sums[deg > 0]))


@pytest.mark.parametrize("kind", ["dot", "v2"])
def test_cuda_shared_key_value_and_determinism(kind):
    ei = torch.randint(0, 500, (2, 8000), device=CUDA)
    g = build_graph(ei, 500, cache=False)
    q = torch.randn(500, 4, 16, device=CUDA, requires_grad=True)
    h = torch.randn(500, 4, 16, device=CUDA, requires_grad=True)
    att = torch.randn(4, 16, device=CUDA, requires_grad=True) if kind == "v2" else None
    gout = torch.randn(500, 4, 16, device=CUDA)
    runs = []
    for _ in range(2):
        out = ops.edge_attention(q, h, h, g, kind, att=att)
        params = [t for t in (q, h, att) if t is not None]
        runs.append((out, *torch.autograd.grad((out * gout).sum(), params)))
    for a, b in zip(*runs):  # no atomics anywhere: bit-identical
        assert torch.equal(a, b)
    with ops.set_backend("reference"):
        out = ops.edge_attention(q, h, h, g, kind, att=att)
        params = [t for t in (q, h, att) if t is not None]
        ref = (out, *torch.autograd.grad((out * gout).sum(), params))
    for a, b in zip(runs[0], ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_cuda_head_dims_beyond_the_kernel_take_the_reference_path():
    ei = ragged_edge_index(6).to(CUDA)
    g = build_graph(ei, 6, cache=False)
    q, k, v = (torch.randn(6, 1, 300, device=CUDA, dtype=torch.float64) for _ in range(3))
    out = ops.edge_attention(q, k, v, g, "dot")
    with ops.set_backend("reference"):
        torch.testing.assert_close(out, ops.edge_attention(q, k, v, g, "dot"))


def test_cuda_kernel_checks_indices_never_crashes():
    q, k, v = (torch.randn(3, 1, 2, device=CUDA) for _ in range(3))
    empty = torch.zeros(0, dtype=torch.long, device=CUDA)
    csc = (torch.zeros(4, dtype=torch.long, device=CUDA), empty, empty)
    call = torch.ops.graphattn.edge_attention

    def t(*xs, dtype=torch.long):
        return torch.tensor(xs, dtype=dtype, device=CUDA)

    with pytest.raises(ValueError, match="'src' holds 7"):
        call(q, k, v, None, None, t(0, 1, 1, 1), t(7), *csc, 0, 1.0, 0.2, False)
    with pytest.raises(ValueError, match="'src' holds -1"):
        call(q, k, v, None, None, t(0, 1, 1, 1), t(-1), *csc, 0, 1.0, 0.2, False)
    with pytest.raises(ValueError, match=r"'ptr\[-1\]' must equal the number of edges"):
        call(q, k, v, None, None, t(0, 1, 1, 5), t(0), *csc, 0, 1.0, 0.2, False)
    with pytest.raises(ValueError, match="non-decreasing"):
        call(q, k, v, None, None, t(0, 2, 1, 2), t(0, 1), *csc, 0, 1.0, 0.2, False)
    with pytest.raises(TypeError, match="'src' must be an int64"):
        call(q, k, v, None, None, t(0, 1, 1, 1), t(0, dtype=torch.int32), *csc, 0, 1.0, 0.2,
             False)
    with pytest.raises(ValueError, match="'src' must be on cuda"):
        call(q, k, v, None, None, t(0, 1, 1, 1), torch.tensor([0]), *csc, 0, 1.0, 0.2, False)
    with pytest.raises(ValueError, match="'k' must be on cuda"):
        call(q, k.cpu(), v, None, None, t(0, 1, 1, 1), t(0), *csc, 0, 1.0, 0.2, False)
    wide = torch.randn(3, 1, 300, device=CUDA)
    with pytest.raises(ValueError, match="head dims up to 256"):
        call(wide, wide, wide, None, None, t(0, 1, 1, 1), t(0), *csc, 0, 1.0, 0.2, False)
    g = build_graph(t(0, 1, 1, 2).view(2, 2), 3, cache=False)
    out, lse, _ = call(q, k, v, None, None, g.ptr, g.src, g.csc_ptr, g.csc_eid, g.csc_dst, 0,
                       1.0, 0.2, False)
    with pytest.raises(ValueError, match="'csc_eid' holds"):
        torch.ops.graphattn.edge_attention_backward(
            torch.ones_like(out), None, q, k, v, None, None, lse, g.ptr, g.src, g.csc_ptr,
            t(0, 9), g.csc_dst, 0, 1.0, 0.2)
    # the device is still healthy after the refusals
    assert torch.isfinite(out).all()
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_segment_ops_match_reference(dtype):
    ei = ragged_edge_index(200)
    ei = torch.cat([ei, torch.randint(0, 190, (2, 3000))], dim=1)
    s = torch.randn(ei.size(1), 4, dtype=dtype)
    w = torch.linspace(0, 1, 200 * 4, dtype=dtype).view(200, 4)
    res = {}
    for device, name in ((CUDA, "native"), ("cpu", "reference")):
        g = build_graph(ei.to(device), 200, cache=False)
        x = s.to(device).requires_grad_()
        with ops.set_backend(name):
            outs = [ops.segment_softmax(x, g)] + [ops.aggregate(x, g, r) for r in
                                                 ("sum", "mean", "max")]
            loss = (outs[0] * x).sum() + sum((o * w.to(device)).sum() for o in outs[1:])
            res[name] = [t.cpu() for t in (*outs, torch.autograd.grad(loss, x)[0])]
    tol = TOL_GRAD[dtype]
    for a, b in zip(res["native"], res["reference"]):
        torch.testing.assert_close(a, b, **tol)
    g = build_graph(ei.to(CUDA), 200, cache=False)
    _, arg = ops.segment_max(g.to_csr(s.to(CUDA)), g.ptr)
    assert (arg[198:] == -1).all()  # the two nodes without in-edges


def test_cuda_segment_ops_check_their_input():
    ptr = torch.tensor([0, 2, 1, 3], device=CUDA)
    s = torch.randn(3, 2, device=CUDA)
    with pytest.raises(ValueError, match="non-decreasing"):
        torch.ops.graphattn.segment_softmax(s, ptr)
    with pytest.raises(ValueError, match="'ptr' must be on cuda"):
        torch.ops.graphattn.segment_reduce(s, ptr.cpu(), "sum")
    ok = torch.tensor([0, 1, 3], device=CUDA)
    with pytest.raises(ValueError, match="outside its segment"):
        torch.ops.graphattn.segment_reduce_backward(
            torch.ones(2, 2, device=CUDA), ok, torch.tensor([[0, 2], [0, 2]], device=CUDA),
            "max", 3)


def test_cuda_opcheck():
    ei = ragged_edge_index(10).to(CUDA)
    g = build_graph(ei, 10, cache=False)
    for kind, name in ((0, "dot"), (1, "additive"), (2, "v2")):
        q, k, v, att, b = _to(make_inputs(name, 10, 10, ei.size(1), 2, 3), CUDA)
        bias = g.to_csr(b).detach().requires_grad_()
        for rw, validated in ((False, False), (True, False), (True, True)):
            args = (q, k, v, att, bias, g.ptr, g.src, g.csc_ptr, g.csc_eid, g.csc_dst, kind,
                    0.5, 0.2, rw, validated)
            torch.library.opcheck(torch.ops.graphattn.edge_attention.default, args)
    s = torch.randn(ei.size(1), 3, dtype=torch.float64, device=CUDA, requires_grad=True)
    for validated in (False, True):
        torch.library.opcheck(torch.ops.graphattn.segment_softmax.default, (s, g.ptr, validated))
        for reduce in ("sum", "mean", "max"):
            torch.library.opcheck(torch.ops.graphattn.segment_reduce.default,
                                  (s, g.ptr, reduce, validated))


def test_cuda_compile_fullgraph_dynamic():
    torch._dynamo.reset()
    ei = ragged_edge_index(12).to(CUDA)
    q, k, v, att, b = _to(make_inputs("v2", 12, 12, ei.size(1), 2, 4, dtype=torch.float32,
                                      grad=False), CUDA)

    def f(q, k, v, att, b, ei):
        g = build_graph(ei, q.size(0))
        return ops.edge_attention(q, k, v, g, "v2", bias=b, att=att)

    assert torch._dynamo.explain(f)(q, k, v, att, b, ei).graph_break_count == 0
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(q, k, v, att, b, ei), f(q, k, v, att, b, ei))


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
def test_cuda_graph_attention_layer_matches_cpu(mode):
    from graphattn.nn import GraphAttention

    ei = torch.randint(0, 300, (2, 3000))
    x = torch.randn(300, 24, dtype=torch.float64)
    layer = GraphAttention(24, 8, heads=4, mode=mode).double()
    out_cpu = layer(x, ei)
    g_cpu = torch.autograd.grad(out_cpu.square().sum(), list(layer.parameters()))
    layer_gpu = layer.to(CUDA)
    out_gpu = layer_gpu(x.to(CUDA), ei.to(CUDA))
    g_gpu = torch.autograd.grad(out_gpu.square().sum(), list(layer_gpu.parameters()))
    torch.testing.assert_close(out_gpu.cpu(), out_cpu)
    for a, b in zip(g_gpu, g_cpu):
        torch.testing.assert_close(a.cpu(), b)


@pytest.mark.parametrize("bad", ["key-nan", "bias-inf"])
@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_nan_and_inf_scores_propagate_as_in_the_reference(bad, kind, dtype):
    """A NaN score (from a NaN key) or a +inf one (from the bias) makes its (destination, head)
    NaN in the outputs, weights and gradients exactly where the reference (torch.softmax)
    does; the kernels had taken such a neighbourhood for a masked one and given zeros."""
    torch.manual_seed(0)
    N = 6
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 0], [1, 1, 1, 2, 2, 3, 3]])
    D = 1 if kind == "additive" else 4
    inputs = list(make_inputs(kind, N, N, ei.size(1), 2, D, Dv=4, dtype=dtype))
    with torch.no_grad():
        if bad == "key-nan":
            inputs[1][2, 0, 0] = float("nan")  # source 2 -> destination 1, head 0
        else:
            inputs[4][1, 0] = float("inf")  # edge 1 -> 1, head 0
    gout = torch.randn(N, 2, 4, dtype=dtype)
    got = _run(kind, ei, N, inputs, gout, True, CUDA, "native")
    ref = _run(kind, ei, N, inputs, gout, True, "cpu", "reference")
    assert got[0][1, 0].isnan().all() and not got[0][[0, 2, 3, 4, 5]].isnan().any()
    for a, b in zip(got, ref):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a, b, equal_nan=True, **TOL_GRAD[dtype])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_segment_softmax_propagates_nan_like_torch(bad, dtype):
    ei = ragged_edge_index(12)
    g = build_graph(ei.to(CUDA), 12, cache=False)
    s = torch.randn(ei.size(1), 4, dtype=dtype)
    s[0, 1] = bad
    s[ei[1] == int(ei[1, 3]), 2] = float("-inf")  # a fully masked (row, head): zeros
    out = ops.segment_softmax(s.to(CUDA), g).cpu()
    for i in ei[1].unique():
        row = ei[1] == i
        ref = torch.softmax(s[row], 0)
        if int(i) == int(ei[1, 3]):
            ref[:, 2] = 0.0
        torch.testing.assert_close(out[row], ref, equal_nan=True)
    assert out[ei[1] == int(ei[1, 0]), 1].isnan().all()
    assert out[:, [0, 2, 3]].isfinite().all()


@pytest.mark.parametrize("where", [0, 1, 2])  # first, middle, last in-edge of node 1
def test_cuda_segment_max_propagates_nan_like_torch(where):
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 0], [1, 1, 1, 2, 2, 3, 3]])
    g = build_graph(ei.to(CUDA), 6, cache=False)
    x = torch.randn(7, 3)
    x[where, 0] = float("nan")
    out, arg = ops.segment_max(g.to_csr(x.to(CUDA)), g.ptr)
    expect = torch.full((6, 3), float("-inf")).scatter_reduce(
        0, ei[1].view(-1, 1).expand(-1, 3), x, "amax")
    expect[torch.bincount(ei[1], minlength=6) == 0] = 0
    torch.testing.assert_close(out.cpu(), expect, equal_nan=True)
    assert int(arg[1, 0]) == where


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_cuda_segment_reduce_backward_writes_every_row(reduce):
    """The CUDA backward allocates its [E, F] gradient without a zero fill: each row must
    still be written (zeros off the argmax). A NaN-filled block of the same size is freed just
    before, so that stale memory handed back by the caching allocator would show."""
    ei = ragged_edge_index(12)
    g = build_graph(ei.to(CUDA), 12, cache=False)
    E, F = ei.size(1), 64
    x = torch.randn(E, F, dtype=torch.float64, device=CUDA)
    _, arg = ops._segment(x, g.ptr, reduce)
    grad = torch.randn(12, F, dtype=torch.float64, device=CUDA)
    xr = x.clone().requires_grad_(True)
    with ops.set_backend("reference"):
        ops._segment(xr, g.ptr, reduce)[0].backward(grad)
    for _ in range(3):
        junk = torch.full((E, F), float("nan"), dtype=torch.float64, device=CUDA)
        del junk
        gin = torch.ops.graphattn.segment_reduce_backward(grad, g.ptr, arg, reduce, E)
        torch.testing.assert_close(gin, xr.grad)


def _sync_free_step(g, backend="native"):
    """The ops' forward + backward on a prebuilt graph, with every host sync an error."""
    q, k, v, att, b = _to(make_inputs("v2", g.num_src, g.num_dst, g.num_edges, 2, 8,
                                      dtype=torch.float32), CUDA)
    s = torch.randn(g.num_edges, 2, device=CUDA, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with ops.set_backend(backend):
            outs = [ops.edge_attention(q, k, v, g, kind, bias=b, att=att, return_weights=True)[0]
                    for kind in ("dot", "v2")]
            outs.append(ops.edge_attention(q[..., :1], k[..., :1], v, g, "additive"))
            outs.append(ops.segment_softmax(s, g))
            outs += [ops.aggregate(s, g, r) for r in ("sum", "mean", "max")]
            torch.autograd.grad(sum(o.sum() for o in outs), (q, k, v, att, b, s))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_ops_on_a_validated_graph_never_sync_with_the_host():
    """A graph from build_graph(validate=True) is trusted: the kernels skip the range checks
    whose results the host must read (seven syncs per attention forward + backward), so a
    training step queues on the GPU without waiting. An unvalidated graph still gets every
    index checked, which shows here as a sync."""
    ei = ragged_edge_index(40).to(CUDA)
    _sync_free_step(build_graph(ei, 40, cache=False))
    with pytest.raises(RuntimeError, match="synchroniz"):
        _sync_free_step(build_graph(ei, 40, cache=False, validate=False))


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
def test_cuda_graph_attention_training_step_never_syncs(mode):
    from graphattn.nn import GraphAttention

    ei = torch.randint(0, 300, (2, 3000), device=CUDA)
    x = torch.randn(300, 24, device=CUDA)
    layer = GraphAttention(24, 8, heads=4, mode=mode).to(CUDA)
    layer(x, ei).sum().backward()  # builds and caches the graph (one validation sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x, ei).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
