"""The fused attention op: reference vs a naive loop, native vs reference, gradients,
opcheck, compile, numerics and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from graphattn import ops
from graphattn.index import build_graph
from tests.conftest import GRAPHS, ragged_edge_index

native_only = pytest.mark.skipif(not ops.native_available(), reason="graphattn._C not built")
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}
# gradients sum over many edges (a hub of 20+ in-edges here): float32 needs a looser bound
TOL_GRAD = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: TOL[torch.float64]}


def make_inputs(kind, n_src, n_dst, E, H, D, Dv=5, dtype=torch.float64, grad=True, bias=True):
    Dq = 1 if kind == "additive" else D
    t = dict(dtype=dtype, requires_grad=grad)
    q = torch.randn(n_dst, H, Dq, **t)
    k = torch.randn(n_src, H, Dq, **t)
    v = torch.randn(n_src, H, Dv, **t)
    att = torch.randn(H, D, **t) if kind == "v2" else None
    b = torch.randn(E, H, **t) if bias else None
    return q, k, v, att, b


def naive(q, k, v, att, bias, ei, n_dst, kind, scale, slope=0.2):
    """Per-destination python loop: the textbook definition."""
    H, Dv = v.size(1), v.size(2)
    out = torch.zeros(n_dst, H, Dv, dtype=v.dtype)
    w = torch.zeros(ei.size(1), H, dtype=v.dtype)
    for i in range(n_dst):
        idx = (ei[1] == i).nonzero().view(-1)
        if idx.numel() == 0:
            continue
        j = ei[0, idx]
        b = bias[idx] if bias is not None else 0.0
        if kind == "dot":
            s = (q[i].unsqueeze(0) * k[j]).sum(-1) * scale + b
        elif kind == "additive":
            s = F.leaky_relu(q[i, :, 0] + k[j, :, 0] + b, slope)
        else:
            s = (F.leaky_relu(q[i] + k[j], slope) * att).sum(-1) + b
        a = torch.softmax(s, dim=0)
        w[idx] = a
        out[i] = (a.unsqueeze(-1) * v[j]).sum(0)
    return out, w


@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
@pytest.mark.parametrize("graph", ["ragged", "empty", "single"])
def test_matches_naive_definition(backend, kind, graph):
    ei, n = GRAPHS[graph]()
    g = build_graph(ei, n, cache=False)
    q, k, v, att, b = make_inputs(kind, n, n, ei.size(1), 4, 7, grad=False)
    out, w = ops.edge_attention(q, k, v, g, kind, bias=b, att=att, return_weights=True)
    ref_out, ref_w = naive(q, k, v, att, b, ei, n, kind, 7**-0.5)
    torch.testing.assert_close(out, ref_out, **TOL[torch.float64])
    torch.testing.assert_close(w, ref_w, **TOL[torch.float64])


def _run(kind, g, inputs, weights_in_loss, backend_name, gout):
    q, k, v, att, b = inputs
    with ops.set_backend(backend_name):
        out, w = ops.edge_attention(q, k, v, g, kind, bias=b, att=att, return_weights=True)
    loss = (out * gout).sum() + ((w * w).sum() if weights_in_loss else 0.0)
    params = [t for t in (q, k, v, att, b) if t is not None]
    return out, w, torch.autograd.grad(loss, params)


# additive (GAT) attention takes per-head scalars q, k: head dim 1 only
KIND_DIMS = [("dot", d) for d in (1, 7, 32, 64)] + [("v2", d) for d in (1, 7, 32, 64)] + [
    ("additive", 1)
]


@native_only
@pytest.mark.parametrize("kind, D", KIND_DIMS)
@pytest.mark.parametrize("H", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_matches_reference_forward_and_all_gradients(kind, D, H, dtype):
    ei = ragged_edge_index(20)
    g = build_graph(ei, 20, cache=False)
    Dv = 32 if kind == "additive" else D  # GAT values keep their channels
    inputs = make_inputs(kind, 20, 20, ei.size(1), H, D, Dv=Dv, dtype=dtype)
    gout = torch.randn(20, H, Dv, dtype=dtype)
    for weights_in_loss in (False, True):
        a = _run(kind, g, inputs, weights_in_loss, "native", gout)
        r = _run(kind, g, inputs, weights_in_loss, "reference", gout)
        torch.testing.assert_close(a[0], r[0], **TOL[dtype])
        torch.testing.assert_close(a[1], r[1], **TOL[dtype])
        for ga, gr in zip(a[2], r[2]):
            torch.testing.assert_close(ga, gr, **TOL_GRAD[dtype])


@native_only
@pytest.mark.parametrize("graph", ["empty", "no-nodes", "single"])
@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_native_matches_reference_on_degenerate_graphs(graph, kind):
    ei, n = GRAPHS[graph]()
    g = build_graph(ei, n, cache=False)
    inputs = make_inputs(kind, n, n, ei.size(1), 2, 3)
    gout = torch.randn(n, 2, 5, dtype=torch.float64)
    a = _run(kind, g, inputs, True, "native", gout)
    r = _run(kind, g, inputs, True, "reference", gout)
    for x, y in zip([a[0], a[1], *a[2]], [r[0], r[1], *r[2]]):
        torch.testing.assert_close(x, y)


@native_only
def test_native_bipartite_and_non_contiguous_inputs():
    n_src, n_dst, E, H, D = 9, 6, 40, 4, 8
    ei = torch.stack([torch.randint(0, n_src, (E,)), torch.randint(0, n_dst - 1, (E,))])
    g = build_graph(ei, (n_src, n_dst), cache=False)
    base_q = torch.randn(n_dst, D, H, dtype=torch.float64, requires_grad=True)
    base_k = torch.randn(n_src, D, H, dtype=torch.float64, requires_grad=True)
    base_v = torch.randn(H, n_src, 3, dtype=torch.float64, requires_grad=True)
    gout = torch.randn(n_dst, H, 3, dtype=torch.float64)
    res = {}
    for name in ("native", "reference"):
        q, k, v = base_q.transpose(1, 2), base_k.transpose(1, 2), base_v.transpose(0, 1)
        assert not q.is_contiguous() and not v.is_contiguous()
        with ops.set_backend(name):
            out = ops.edge_attention(q, k, v, g, "dot")
        res[name] = (out, *torch.autograd.grad((out * gout).sum(), (base_q, base_k, base_v)))
    for x, y in zip(res["native"], res["reference"]):
        torch.testing.assert_close(x, y)
    assert res["native"][0][n_dst - 1].abs().sum() == 0  # destination without in-edges


# Losses whose gradient reaches the op in each layout the native backward reads differently:
# broadcast rows (stride 0; the fully broadcast one has non-contiguous rows), rows of a wider
# tensor (row stride > H * Dv), and rows that are not contiguous (copied).
GRAD_LAYOUTS = {
    "sum": lambda out, c: out.sum(),
    "broadcast-row": lambda out, c: (out.sum(0) * c["row"]).sum(),
    "wider-rows": lambda out, c: (torch.cat([out.flatten(1), c["extra"]], 1) * c["wide"]).sum(),
    "transposed-rows": lambda out, c: (out.transpose(1, 2) * c["t"]).sum(),
}


@native_only
@pytest.mark.parametrize("layout", sorted(GRAD_LAYOUTS))
@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_native_backward_reads_grad_out_in_any_layout(kind, layout):
    ei = ragged_edge_index(20)
    g = build_graph(ei, 20, cache=False)
    H, Dv = 4, 6
    inputs = make_inputs(kind, 20, 20, ei.size(1), H, 3, Dv=Dv)
    c = {
        "row": torch.randn(H, Dv, dtype=torch.float64),
        "extra": torch.randn(20, 5, dtype=torch.float64),
        "wide": torch.randn(20, H * Dv + 5, dtype=torch.float64),
        "t": torch.randn(20, Dv, H, dtype=torch.float64),
    }
    params = [t for t in inputs if t is not None]
    grads = {}
    for name in ("native", "reference"):
        q, k, v, att, b = inputs
        with ops.set_backend(name):
            out = ops.edge_attention(q, k, v, g, kind, bias=b, att=att)
        grads[name] = torch.autograd.grad(GRAD_LAYOUTS[layout](out, c), params)
    for x, y in zip(grads["native"], grads["reference"]):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_gradcheck_float64(backend, kind):
    ei = ragged_edge_index(8)
    g = build_graph(ei, 8, cache=False)
    q, k, v, att, b = make_inputs(kind, 8, 8, ei.size(1), 2, 3, Dv=2)
    # keep LeakyReLU pre-activations away from the kink, where finite differences break
    if kind == "additive":
        with torch.no_grad():
            q.add_(3.0)
    args = [q, k, v, b] + ([att] if att is not None else [])

    def fn(q, k, v, b, att=None):
        out, w = ops.edge_attention(q, k, v, g, kind, bias=b, att=att, return_weights=True)
        return out, w

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5)


def test_empty_neighbourhood_gives_zeros_not_nan(backend):
    ei = torch.tensor([[0, 1], [1, 1]])
    g = build_graph(ei, 3, cache=False)
    for kind in ("dot", "additive", "v2"):
        q, k, v, att, _ = make_inputs(kind, 3, 3, 2, 2, 4, bias=False)
        out, w = ops.edge_attention(q, k, v, g, kind, att=att, return_weights=True)
        assert torch.isfinite(out).all() and torch.isfinite(w).all()
        assert out[0].abs().sum() == 0 and out[2].abs().sum() == 0
        out.sum().backward()
        for t in (q, k, v):
            assert torch.isfinite(t.grad).all()


def test_fully_masked_neighbourhood_gives_zeros(backend):
    ei = torch.tensor([[0, 1, 2], [1, 1, 2]])
    g = build_graph(ei, 3, cache=False)
    q, k, v, _, _ = make_inputs("dot", 3, 3, 3, 2, 4, bias=False)
    bias = torch.tensor([[0.0, 0.0], [0.0, 0.0], [float("-inf")] * 2], dtype=torch.float64)
    out, w = ops.edge_attention(q, k, v, g, "dot", bias=bias, return_weights=True)
    assert torch.isfinite(out).all() and out[2].abs().sum() == 0 and w[2].abs().sum() == 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(v.grad).all()


def test_large_logits_do_not_overflow(backend):
    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    q, k, v, _, b = make_inputs("dot", 12, 12, ei.size(1), 2, 4, dtype=torch.float32)
    with torch.no_grad():
        b.mul_(1e4)
    out, w = ops.edge_attention(q, k, v, g, "dot", bias=b, return_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    sums = torch.zeros(12, 2).index_add_(0, ei[1], w.detach())
    has_in = torch.bincount(ei[1], minlength=12) > 0
    torch.testing.assert_close(sums[has_in], torch.ones_like(sums[has_in]))
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(b.grad).all()


@native_only
@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_one_and_two_threads_agree(kind):
    ei = torch.randint(0, 300, (2, 3000))
    g = build_graph(ei, 300, cache=False)
    inputs = make_inputs(kind, 300, 300, 3000, 4, 16, Dv=16, dtype=torch.float32)
    gout = torch.randn(300, 4, 16)
    before = torch.get_num_threads()
    try:
        res = []
        for n in (1, 2):
            torch.set_num_threads(n)
            res.append(_run(kind, g, inputs, True, "native", gout))
    finally:
        torch.set_num_threads(before)
    a, b = res
    for x, y in zip([a[0], a[1], *a[2]], [b[0], b[1], *b[2]]):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


def test_dropout_falls_back_and_keeps_expectation(backend):
    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    q, k, v, _, _ = make_inputs("dot", 12, 12, ei.size(1), 2, 4, grad=False, bias=False)
    plain = ops.edge_attention(q, k, v, g, "dot")
    assert torch.equal(ops.edge_attention(q, k, v, g, "dot", dropout=0.5, training=False), plain)
    runs = torch.stack([ops.edge_attention(q, k, v, g, "dot", dropout=0.5) for _ in range(800)])
    assert not torch.equal(runs[0], runs[1])
    torch.testing.assert_close(runs.mean(0), plain, atol=0.15, rtol=0)


def test_weights_sum_to_one_per_destination(backend):
    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    q, k, v, att, b = make_inputs("v2", 12, 12, ei.size(1), 3, 4, grad=False)
    _, w = ops.edge_attention(q, k, v, g, "v2", bias=b, att=att, return_weights=True)
    sums = torch.zeros(12, 3, dtype=w.dtype).index_add_(0, ei[1], w)
    deg = torch.bincount(ei[1], minlength=12)
    torch.testing.assert_close(sums[deg > 0], torch.ones_like(sums[deg > 0]))
    assert (sums[deg == 0] == 0).all()


# ---- bad input --------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors(backend):
    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    q, k, v, att, b = make_inputs("dot", 12, 12, ei.size(1), 2, 4, grad=False)
    with pytest.raises(ValueError, match="'q' must have one row per destination"):
        ops.edge_attention(q[:5], k, v, g)
    with pytest.raises(ValueError, match="'k' and 'v'"):
        ops.edge_attention(q, k[:5], v, g)
    with pytest.raises(ValueError, match="head count"):
        ops.edge_attention(q, k, v[:, :1], g)
    with pytest.raises(ValueError, match="give 'scale' explicitly"):  # 1/sqrt(0)
        ops.edge_attention(q[..., :0], k[..., :0], v, g, bias=q.new_zeros(ei.size(1), 2))
    with pytest.raises(ValueError, match="'k' must have head dim"):
        ops.edge_attention(q, k[..., :2], v, g)
    with pytest.raises(TypeError, match="'k' has dtype"):
        ops.edge_attention(q, k.float(), v, g)
    with pytest.raises(TypeError, match="'v' must be a floating-point"):
        ops.edge_attention(q, k, v.long(), g)
    with pytest.raises(ValueError, match="'bias' must have shape"):
        ops.edge_attention(q, k, v, g, bias=b[:3])
    with pytest.raises(ValueError, match="'kind' must be one of"):
        ops.edge_attention(q, k, v, g, kind="cosine")
    with pytest.raises(ValueError, match="needs the attention vector 'att'"):
        ops.edge_attention(q, k, v, g, kind="v2")
    with pytest.raises(ValueError, match="'att' is the attention vector of kind 'v2' only"):
        ops.edge_attention(q, k, v, g, att=torch.randn(2, 4, dtype=q.dtype))  # not ignored
    with pytest.raises(ValueError, match="heads"):
        ops.split_heads(q.flatten(1), True)  # a bool is not a head count
    with pytest.raises(TypeError, match="'graph' must be a graphattn EdgeGraph"):
        ops.edge_attention(q, k, v, ei)
    with pytest.raises(ValueError, match="'dropout'"):
        ops.edge_attention(q, k, v, g, dropout=1.5)
    if torch.device("meta") != q.device:
        with pytest.raises(ValueError, match="'k' is on meta"):
            ops.edge_attention(q, k.to("meta"), v, g)


@native_only
def test_native_kernel_checks_indices_never_crashes():
    q = torch.randn(3, 1, 2)
    k = torch.randn(3, 1, 2)
    v = torch.randn(3, 1, 2)
    empty = torch.zeros(0, dtype=torch.long)
    call = torch.ops.graphattn.edge_attention
    csc = (torch.zeros(4, dtype=torch.long), empty, empty)
    with pytest.raises(ValueError, match="'src' holds 7"):
        call(q, k, v, None, None, torch.tensor([0, 1, 1, 1]), torch.tensor([7]), *csc, 0, 1.0,
             0.2, False)
    with pytest.raises(ValueError, match="'src' holds -1"):
        call(q, k, v, None, None, torch.tensor([0, 1, 1, 1]), torch.tensor([-1]), *csc, 0, 1.0,
             0.2, False)
    with pytest.raises(ValueError, match=r"'ptr\[-1\]' must equal the number of edges"):
        call(q, k, v, None, None, torch.tensor([0, 1, 1, 5]), torch.tensor([0]), *csc, 0, 1.0,
             0.2, False)
    with pytest.raises(ValueError, match="non-decreasing"):
        call(q, k, v, None, None, torch.tensor([0, 2, 1, 2]), torch.tensor([0, 1]), *csc, 0,
             1.0, 0.2, False)
    with pytest.raises(TypeError, match="'src' must be an int64"):
        call(q, k, v, None, None, torch.tensor([0, 1, 1, 1]), torch.tensor([0], dtype=torch.int32),
             *csc, 0, 1.0, 0.2, False)
    with pytest.raises(ValueError, match="'kind' must be"):
        call(q, k, v, None, None, torch.tensor([0, 0, 0, 0]), empty, *csc, 9, 1.0, 0.2, False)
    g = build_graph(torch.tensor([[0, 1], [1, 2]]), 3, cache=False)
    out, lse, _ = call(q, k, v, None, None, g.ptr, g.src, g.csc_ptr, g.csc_eid, g.csc_dst, 0,
                       1.0, 0.2, False)
    with pytest.raises(ValueError, match="'csc_eid' holds"):
        torch.ops.graphattn.edge_attention_backward(
            torch.ones_like(out), None, q, k, v, None, None, lse, g.ptr, g.src, g.csc_ptr,
            torch.tensor([0, 9]), g.csc_dst, 0, 1.0, 0.2)


# ---- registration: opcheck and torch.compile ---------------------------------------------------
@native_only
@pytest.mark.parametrize("kind", ["dot", "v2", "additive"])
def test_native_shared_key_value_gradient(kind):
    """k is v (GATv2, one projection): the backward returns one summed gradient (no second
    [N, H, D] buffer), equal to the reference's (create_graph: test_segment.py)."""
    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    q, h, _, att, b = make_inputs(kind, 12, 12, ei.size(1), 2, 4, Dv=4)
    gout = torch.randn(12, 2, h.size(2), dtype=torch.float64)
    res = {}
    for name in ("native", "reference"):
        with ops.set_backend(name):
            out = ops.edge_attention(q, h, h, g, kind, bias=b, att=att)
            res[name] = torch.autograd.grad((out * gout).sum(), (q, h, b))
    for x, y in zip(res["native"], res["reference"]):
        torch.testing.assert_close(x, y)
    # the kernel: kv_shared gives grad k + grad v in one tensor and an empty grad v
    out, lse, _ = torch.ops.graphattn.edge_attention(
        q, h, h, att, g.to_csr(b), g.ptr, g.src, g.csc_ptr, g.csc_eid, g.csc_dst,
        ops.KINDS[kind], 0.5, 0.2, False)
    args = (gout, None, q, h, h, att, g.to_csr(b), lse, g.ptr, g.src, g.csc_ptr, g.csc_eid,
            g.csc_dst, ops.KINDS[kind], 0.5, 0.2)
    sep = torch.ops.graphattn.edge_attention_backward(*args, False)
    fused = torch.ops.graphattn.edge_attention_backward(*args, True)
    torch.testing.assert_close(fused[1], sep[1] + sep[2])
    assert fused[2].numel() == 0
    if kind == "additive":  # k [N, H, 1]: a narrower v cannot be made
        return
    with pytest.raises(ValueError, match="kv_shared"):
        torch.ops.graphattn.edge_attention_backward(
            gout, None, q, h, h[:, :, :3], att, None, lse, g.ptr, g.src, g.csc_ptr, g.csc_eid,
            g.csc_dst, ops.KINDS[kind], 0.5, 0.2, True)


@native_only
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_opcheck(kind):
    ei = ragged_edge_index(10)
    g = build_graph(ei, 10, cache=False)
    name = {0: "dot", 1: "additive", 2: "v2"}[kind]
    q, k, v, att, b = make_inputs(name, 10, 10, ei.size(1), 2, 3)
    bias = g.to_csr(b).detach().requires_grad_()
    for rw, validated in ((False, False), (True, False), (True, True)):
        args = (q, k, v, att, bias, g.ptr, g.src, g.csc_ptr, g.csc_eid, g.csc_dst, kind, 0.5,
                0.2, rw, validated)
        torch.library.opcheck(torch.ops.graphattn.edge_attention.default, args)


@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_compile_fullgraph_dynamic_no_graph_break(backend, kind):
    torch._dynamo.reset()
    ei = ragged_edge_index(12)
    q, k, v, att, b = make_inputs(kind, 12, 12, ei.size(1), 2, 4, dtype=torch.float32, grad=False)

    def f(q, k, v, att, b, ei):
        g = build_graph(ei, q.size(0))
        return ops.edge_attention(q, k, v, g, kind, bias=b, att=att)

    explain = torch._dynamo.explain(f)(q, k, v, att, b, ei)
    assert explain.graph_break_count == 0
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(q, k, v, att, b, ei), f(q, k, v, att, b, ei))
    # a different graph size reuses the dynamic graph
    ei2 = ragged_edge_index(15, seed=1)
    q2, k2, v2, _, b2 = make_inputs(kind, 15, 15, ei2.size(1), 2, 4, dtype=torch.float32,
                                    grad=False)
    torch.testing.assert_close(compiled(q2, k2, v2, att, b2, ei2), f(q2, k2, v2, att, b2, ei2))


def test_backend_switch():
    assert ops.backend() in ("native", "reference")
    with ops.set_backend("reference"):
        assert ops.backend() == "reference"
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.set_backend("cuda-magic")
    if not ops.native_available():
        with pytest.raises(RuntimeError, match="not built"):
            ops.set_backend("native")


@native_only
def test_extension_reports_the_cuda_head_dim_bound():
    """graphattn.ops routes CUDA heads wider than this to the reference path; the bound comes
    from the extension (csrc/attention_shapes.h), built with CUDA or not."""
    from graphattn.ops import _native

    assert _native.CUDA_MAX_HEAD_DIM == 256


@native_only
@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_scores_propagate_as_in_the_reference(kind, dtype):
    """A NaN in a source's key makes the scores of its edges NaN: the native forward gives NaN
    for those (destination, head) outputs and weights, exactly where the reference (torch)
    does, and its backward NaN gradients in the same places (the kernel had taken a NaN
    neighbourhood for a masked one: zeros forward and backward)."""
    torch.manual_seed(0)
    N = 6
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 0], [1, 1, 1, 2, 2, 3, 3]])
    g = build_graph(ei, N, cache=False)
    D = 1 if kind == "additive" else 4
    q0, k0, v0 = (torch.randn(N, 2, d, dtype=dtype) for d in (D, D, 4))
    att = torch.randn(2, 4, dtype=dtype) if kind == "v2" else None
    k0[2, 0, 0] = float("nan")  # source 2 -> destination 1, head 0
    res = {}
    for b in ("native", "reference"):
        q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
        with ops.set_backend(b):
            out, w = ops.edge_attention(q, k, v, g, kind, att=att, return_weights=True)
        out.backward(torch.ones_like(out))
        res[b] = [t.isnan() for t in (out, w, q.grad, k.grad, v.grad)]
    assert res["native"][0][1, 0].all() and not res["native"][0][[0, 2, 3, 4, 5]].any()
    for a, b in zip(res["native"], res["reference"]):
        assert torch.equal(a, b)


@native_only
@pytest.mark.parametrize("kind", ["dot", "v2"])
@pytest.mark.parametrize("H, D", [(4, 32), (8, 32), (4, 64), (8, 64), (6, 32), (4, 48)])
def test_four_head_reductions_match_the_reference(kind, H, D):
    """float32 rows whose head width is a compile-time multiple of 16 reduce four heads at
    once (csrc/cpu/head_sums.h; H = 8: two groups, D = 64: four vectors per head, H = 6: one
    group and two heads reduced alone; D = 48, a width not dispatched at compile time: the
    per-head loop). Forward, weights and every gradient equal the reference; a NaN in one
    lane of one key row and an infinite bias stay where the reference puts them (NaN lanes
    survive the vector LeakyReLU of 'v2')."""
    torch.manual_seed(0)
    ei = ragged_edge_index(20)
    g = build_graph(ei, 20, cache=False)
    q, k, v, att, b = make_inputs(kind, 20, 20, ei.size(1), H, D, Dv=D, dtype=torch.float32,
                                  grad=False)
    gout = torch.randn(20, H, D)
    inputs = [t if t is None else t.requires_grad_() for t in (q, k, v, att, b)]
    a = _run(kind, g, inputs, True, "native", gout)
    r = _run(kind, g, inputs, True, "reference", gout)
    for x, y in zip((a[0], a[1], *a[2]), (r[0], r[1], *r[2])):
        torch.testing.assert_close(x, y, **TOL_GRAD[torch.float32])
    with torch.no_grad():
        k[3, H - 1, D - 5] = float("nan")  # the last head (H = 6: one reduced alone), a high lane
        b[0, 1] = float("-inf")  # a masked edge
    res = {}
    for name in ("native", "reference"):
        out, w, grads = _run(kind, g, inputs, False, name, gout)
        res[name] = [t.isnan() for t in (out, w, *grads)]
    assert res["native"][0].any()
    for x, y in zip(res["native"], res["reference"]):
        assert torch.equal(x, y)


@native_only
@pytest.mark.parametrize("kind", ["dot", "additive", "v2"])
def test_eager_fast_autograd_path_equals_the_registered_op(kind):
    """In eager mode ops.edge_attention records a plain autograd.Function (torch.library's
    wrapper costs ~3x its Python overhead); its gradients, with returned weights in the loss,
    a bias and k shared with v, equal those of the registered op called directly."""
    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    q, h, _, att, b = make_inputs(kind, 12, 12, ei.size(1), 2, 4, Dv=4)
    bias = g.to_csr(b).detach().requires_grad_()
    gout = torch.randn(12, 2, h.size(2), dtype=torch.float64)
    params = [t for t in (q, h, att, bias) if t is not None]
    k_ = {"dot": 0, "additive": 1, "v2": 2}[kind]
    args = (q, h, h, att, bias, g.ptr, g.src, g.csc_ptr, g.csc_eid, g.csc_dst, k_, 0.5, 0.2,
            True, True)
    res = []
    for path in ("fast", "registered"):
        with ops.set_backend("native"):
            if path == "fast":
                out, _, w = ops._native.call("edge_attention", *args)
                assert type(out.grad_fn).__name__ == "EdgeAttentionBackward"
            else:
                out, _, w = torch.ops.graphattn.edge_attention(*args)
                assert type(out.grad_fn).__name__ != "EdgeAttentionBackward"
        loss = (out * gout).sum() + (w * w).sum()
        res.append((out, w, *torch.autograd.grad(loss, params)))
    for a, c in zip(*res):
        assert torch.equal(a, c)
