import dataclasses

import pytest
import torch

from graphattn import ops
from graphattn.index import build_graph, clear_graph_cache
from tests.conftest import ragged_edge_index


def test_csr_and_csc_views_are_consistent():
    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    E = ei.size(1)
    assert g.ptr.tolist()[0] == 0 and g.ptr.tolist()[-1] == E
    # CSR rows hold exactly the in-edges of each destination, in the caller's order
    assert torch.equal(g.src, ei[0, g.perm]) and torch.equal(g.dst, ei[1, g.perm])
    assert torch.equal(g.in_degree(), torch.bincount(ei[1], minlength=12))
    for i in range(12):
        rows = g.perm[g.ptr[i] : g.ptr[i + 1]]
        assert torch.equal(rows, (ei[1] == i).nonzero().view(-1))
    # CSC: every source's out-edges, pointing back into CSR positions
    assert torch.equal(g.src[g.csc_eid], torch.sort(g.src, stable=True).values)
    assert torch.equal(g.csc_dst, g.dst[g.csc_eid])
    assert torch.equal(g.csc_ptr[1:] - g.csc_ptr[:-1], torch.bincount(ei[0], minlength=12))
    x = torch.randn(E, 3)
    assert torch.equal(g.from_csr(g.to_csr(x)), x)


def test_presorted_edges_skip_the_reorder_and_give_the_same_results():
    from graphattn import ops

    ei = ragged_edge_index(12)
    order = torch.sort(ei[1], stable=True).indices
    sorted_ei = ei[:, order]
    g, gs = build_graph(ei, 12, cache=False), build_graph(sorted_ei, 12, cache=False)
    assert not g.presorted and gs.presorted
    assert torch.equal(gs.perm, torch.arange(ei.size(1)))
    x = torch.randn(ei.size(1), 3, requires_grad=True)
    assert gs.to_csr(x) is x and gs.from_csr(x) is x
    # the same edges in either order: same softmax (per edge) and the same aggregate
    s = torch.randn(ei.size(1), 2, requires_grad=True)
    p, ps = ops.segment_softmax(s, g), ops.segment_softmax(s[order], gs)
    torch.testing.assert_close(ps, p[order])
    a, a_s = ops.aggregate(x, g), ops.aggregate(x[order], gs)
    torch.testing.assert_close(a_s, a)
    w = torch.randn(ei.size(1), 2)
    ga = torch.autograd.grad((a * a).sum() + (p * w).sum(), (x, s))
    gb = torch.autograd.grad((a_s * a_s).sum() + (ps * w[order]).sum(), (x, s))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(v, u)


def test_reorders_are_exact_permutations_in_values_and_every_derivative():
    """to_csr / from_csr (gathers forward and backward through the cached inverse
    permutation) against the plain index_select / index_copy forms: values, gradients,
    second derivatives, torch.func (vmap, grad) and torch.compile."""
    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    E = ei.size(1)
    assert not g.presorted and torch.equal(g.perm[g.iperm], torch.arange(E))
    x = torch.randn(E, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(E, 3, dtype=torch.float64)
    plain_to = x.index_select(0, g.perm)
    plain_from = torch.zeros_like(x).index_copy(0, g.perm, x)
    to, back = g.to_csr(x), g.from_csr(x)
    assert torch.equal(to, plain_to) and torch.equal(back, plain_from)
    for mine, plain in ((to, plain_to), (back, plain_from)):
        (ga,) = torch.autograd.grad((mine * w).sum(), x)
        (gb,) = torch.autograd.grad((plain * w).sum(), x)
        assert torch.equal(ga, gb)
    assert torch.autograd.gradgradcheck(lambda t: g.to_csr(t) ** 2, (x,))
    assert torch.autograd.gradgradcheck(lambda t: g.from_csr(t) ** 2, (x,))
    xb = torch.randn(4, E, 3)
    assert torch.equal(torch.func.vmap(g.to_csr)(xb), xb[:, g.perm])
    gx = torch.func.grad(lambda t: (g.from_csr(t) * w.float()).sum())(xb[0])
    assert torch.equal(gx, w.float()[g.perm])  # from_csr(t)[e] = t[iperm[e]]
    f = torch.compile(lambda t: g.from_csr(g.to_csr(t) * 2.0), fullgraph=True)
    y = torch.randn(E, 3, requires_grad=True)
    f(y).backward(w.float())
    assert torch.equal(y.grad, 2.0 * w.float())


def test_forward_mode_over_a_recorded_backward(backend):
    """jvp of a vjp (forward mode over a backward recorded outside the dual level) through the
    reorders: equal to the plain index_select / index_copy forms (a graph without iperm)."""
    import dataclasses

    from graphattn import ops

    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    plain = dataclasses.replace(g)
    object.__setattr__(plain, "iperm", None)  # the cached property, set: no _Permute
    s = torch.randn(ei.size(1), 2, dtype=torch.float64)
    v, tv = torch.randn_like(s), torch.randn_like(s)
    res = []
    for graph in (g, plain):
        _, vjp_fn = torch.func.vjp(lambda u, graph=graph: ops.segment_softmax(u, graph), s)
        res.append(torch.func.jvp(vjp_fn, (v,), (tv,)))
    for a, b in zip(res[0], res[1]):
        torch.testing.assert_close(a, b)


def test_forward_mode_ad_through_the_ops_matches_the_reference(backend):
    """Forward-mode AD (dual tensors): the native kernels have reverse-mode formulas only, so
    the ops take the torch form; without that the native path dropped the tangent (None,
    i.e. a zero derivative)."""
    import torch.autograd.forward_ad as fwAD

    from graphattn import ops

    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    s = torch.randn(ei.size(1), 2, dtype=torch.float64)
    t = torch.randn_like(s)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(ops.segment_softmax(fwAD.make_dual(s, t), g)).tangent
    # the jvp of the softmax: p * (t - sum_in-edges p t), from the reverse-mode Jacobian
    jac = torch.autograd.functional.jacobian(lambda u: ops.segment_softmax(u, g), s)
    expect = torch.einsum("ehfk,fk->eh", jac, t)
    assert tangent is not None
    torch.testing.assert_close(tangent, expect)


def test_cache_hits_same_tensor_and_misses_after_inplace_change():
    clear_graph_cache()
    ei = ragged_edge_index(12)
    g1 = build_graph(ei, 12)
    assert build_graph(ei, 12) is g1
    assert build_graph(ei.clone(), 12) is not g1
    ei[0, 0] = (ei[0, 0] + 1) % 12
    assert build_graph(ei, 12) is not g1


def test_self_loops_like_pyg():
    from torch_geometric.utils import add_self_loops, remove_self_loops

    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, self_loops=True, cache=False)
    ref, _ = add_self_loops(remove_self_loops(ei)[0], num_nodes=12)
    assert torch.equal(g.edge_index, ref)
    assert torch.equal(ei[:, g.kept], ref[:, : g.kept.numel()])


@pytest.mark.parametrize(
    "bad, num_nodes, exc, match",
    [
        (torch.tensor([[0, 5], [1, 2]]), 5, ValueError, r"edge_index\[0\].*5"),
        (torch.tensor([[0, 1], [1, 9]]), 5, ValueError, r"edge_index\[1\].*9"),
        (torch.tensor([[0, -1], [1, 2]]), 5, ValueError, "non-negative"),
        (torch.tensor([[0.0, 1.0], [1.0, 2.0]]), 5, TypeError, "int64"),
        (torch.tensor([0, 1, 2]), 5, ValueError, r"\[2, num_edges\]"),
        ([[0, 1], [1, 2]], 5, TypeError, "torch.Tensor"),
    ],
)
def test_bad_edge_index_raises_naming_the_argument(bad, num_nodes, exc, match):
    with pytest.raises(exc, match=match):
        build_graph(bad, num_nodes, cache=False)


def test_num_nodes_required():
    with pytest.raises(ValueError, match="num_nodes"):
        build_graph(torch.tensor([[0], [1]]))



@pytest.mark.parametrize("backend_name", ["reference", "native"])
def test_cache_never_skips_a_requested_validation(backend_name):
    """A graph cached from an unvalidated build is not handed to a call that asks for the
    check: the bad destination raises there, not later from some op's pointer check."""
    if backend_name == "native" and not ops.native_available():
        pytest.skip("graphattn._C not built")
    clear_graph_cache()
    bad = torch.tensor([[0, 1], [1, 7]])
    with ops.set_backend(backend_name):
        try:
            build_graph(bad, 3, validate=False)
        except ValueError:
            pass  # the native builder checks its indices itself
        with pytest.raises(ValueError, match=r"edge_index\[1\].*7"):
            build_graph(bad, 3)
    good = ragged_edge_index(6)
    g = build_graph(good, 6, validate=False)
    assert build_graph(good, 6, validate=False) is g  # hits when no check is asked
    assert build_graph(good, 6).validated  # a validated build replaces it


@pytest.mark.parametrize("num_nodes, exc", [
    (3.9, TypeError), ("3", TypeError), (True, TypeError), (torch.tensor(3.0), TypeError),
    ((3, False), TypeError), (-1, ValueError), ((3, -2), ValueError),
])
def test_num_nodes_must_be_a_non_negative_int(num_nodes, exc):
    """Not cut to an int (3.9 -> 3), not read from a string or a bool, never negative; NumPy
    ints and 0-d integer tensors are ints."""
    import numpy as np

    ei = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(exc, match="'num_nodes' must be"):
        build_graph(ei, num_nodes, cache=False, validate=False)
    for ok in (3, np.int64(3), torch.tensor(3), (3, 3)):
        assert build_graph(ei, ok, cache=False).num_dst == 3

def test_validated_graphs_are_trusted_until_an_index_changes_in_place():
    """build_graph's validation lets the kernels skip their index scans (on the GPU, a host sync
    each); a graph built without it, or whose index tensors were written since, is checked."""
    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False)
    assert g.validated and g.indices_trusted()
    assert build_graph(ei, 12, cache=False, self_loops=True).indices_trusted()
    assert not build_graph(ei, 12, cache=False, validate=False).indices_trusted()
    for name in ("ptr", "src", "csc_ptr", "csc_eid", "csc_dst"):
        g = build_graph(ei, 12, cache=False)
        # a swapped tensor (even with equal contents and version 0) is not the checked one
        assert not dataclasses.replace(g, **{name: getattr(g, name).clone()}).indices_trusted()
        getattr(g, name).add_(0)  # an in-place write bumps the version counter
        assert not g.indices_trusted(), name
    # node counts swapped by replace: the indices were checked against the old ones
    g = build_graph(ei, 12, cache=False)
    for sizes in ({"num_src": 3}, {"num_dst": 3}):
        assert not dataclasses.replace(g, **sizes).indices_trusted()


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_graph_with_replaced_node_counts_raises_instead_of_reading_past_the_features(backend):
    """A validated graph whose num_src was shrunk by dataclasses.replace addresses source
    4,999 of one feature row: the ops raise (the kernels check the indices again) instead of
    reading out of bounds."""
    if backend == "native" and not ops.native_available():
        pytest.skip("needs graphattn._C")
    g = build_graph(torch.tensor([[4999], [0]]), (5000, 1), cache=False)
    g = dataclasses.replace(g, num_src=1)
    k = torch.randn(1, 1, 2)
    # the kernels name the index; the reference path's gathers raise torch's IndexError
    err = (ValueError, "'src' holds 4999") if backend == "native" else (IndexError, "range")
    with ops.set_backend(backend), pytest.raises(err[0], match=err[1]):
        ops.edge_attention(k, k, k, g, "dot")
    with ops.set_backend(backend), pytest.raises(err[0], match=err[1]):
        ops.edge_pair_dot(k, k, g)


@pytest.mark.skipif(not ops.native_available(), reason="needs graphattn._C")
def test_unvalidated_graphs_still_get_their_indices_checked_by_the_kernels():
    """With validate=False the graph is not trusted, so the kernel's own range check still
    stands between a bad index and an out-of-bounds read; a trusted call still checks dtypes,
    devices and sizes."""
    ei = torch.tensor([[0, 7], [1, 2]])  # source 7 of 3 nodes
    # the C++ builder reads every index, so it refuses this one whatever 'validate' says;
    # the torch builder (backend "reference") builds it unchecked
    if ops.native_available():
        with pytest.raises(ValueError, match=r"'edge_index\[0\]' \(sources\) holds 7"):
            build_graph(ei, 3, cache=False, validate=False)
    with ops.set_backend("reference"):
        g = build_graph(ei, 3, cache=False, validate=False)
    q = torch.randn(3, 1, 2)
    with ops.set_backend("native"), pytest.raises(ValueError, match="'src' holds 7"):
        ops.edge_attention(q, q, q, g, "dot")
    with ops.set_backend("native"), pytest.raises(ValueError, match="'ptr.*must equal"):
        torch.ops.graphattn.segment_softmax(torch.randn(2, 1), torch.tensor([0, 1, 1, 3]))
    good = build_graph(torch.tensor([[0, 1], [1, 2]]), 3, cache=False)
    call = torch.ops.graphattn.edge_attention
    with pytest.raises(TypeError, match="'src' must be an int64"):
        call(q, q, q, None, None, good.ptr, good.src.int(), good.csc_ptr, good.csc_eid,
             good.csc_dst, 0, 1.0, 0.2, False, True)
    with pytest.raises(ValueError, match="'ptr\\[-1\\]' must equal the number of edges"):
        torch.ops.graphattn.segment_reduce(torch.randn(3, 1), good.ptr, "sum", True)


# ---- the C++ builder (graphattn::edge_csr) -----------------------------------------------------
native_only = pytest.mark.skipif(not ops.native_available(), reason="graphattn._C not built")


def _builder_cases():
    g = torch.Generator().manual_seed(3)
    ragged = ragged_edge_index(12)
    bip = torch.stack([torch.randint(0, 7, (40,), generator=g),
                       torch.randint(0, 11, (40,), generator=g)])
    return [
        ("ragged", ragged, 12, 12),
        ("sorted", ragged[:, torch.sort(ragged[1], stable=True).indices], 12, 12),
        ("empty", torch.empty(2, 0, dtype=torch.long), 5, 5),
        ("no-nodes", torch.empty(2, 0, dtype=torch.long), 0, 0),
        ("only-loops", torch.tensor([[1, 1, 2], [1, 1, 2]]), 4, 4),
        ("bipartite", bip, 7, 11),  # more destinations than sources: loops on 7 of 11
        ("bipartite-t", bip.flip(0), 11, 7),
        ("non-contiguous", ragged.t().contiguous().t(), 12, 12),
    ]


@native_only
@pytest.mark.parametrize("self_loops", [False, True])
@pytest.mark.parametrize("case", _builder_cases(), ids=lambda c: c[0])
def test_native_builder_equals_the_torch_builder(case, self_loops):
    """The counting sorts give the torch builder's tensors exactly (both sorts stable), every
    attribute, the lazily formed ones (dst, iperm, edge_index) included; before they are asked
    for, a native graph holds none of them."""
    _, ei, ns, nd = case
    with ops.set_backend("reference"):
        ref = build_graph(ei, (ns, nd), cache=False, self_loops=self_loops)
    g = build_graph(ei, (ns, nd), cache=False, self_loops=self_loops)
    assert not {"dst", "iperm", "edge_index"} & set(vars(g)) and "dst" in vars(ref)
    for name in ("ptr", "src", "perm", "csc_ptr", "csc_eid", "csc_dst", "kept", "dst", "iperm",
                 "edge_index", "input_index"):
        a, b = getattr(g, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        assert a is None or torch.equal(a, b), name
    assert g.presorted == ref.presorted and g.indices_trusted() and ref.indices_trusted()
    assert g.input_index is ei


@native_only
@pytest.mark.parametrize("self_loops", [False, True])
@pytest.mark.parametrize("shape", [(2_000, 2_000), (300, 5_000), (5_000, 300)])
def test_native_builder_in_parallel_chunks_equals_the_torch_builder(shape, self_loops):
    """Graphs large enough for the builder to cut its two counting sorts into one chunk per
    thread (2^17 edges and twice the node count per chunk): the tensors are the torch
    builder's exactly, with 1 and 2 threads; duplicates, self-loops and empty rows included."""
    ns, nd = shape
    g = torch.Generator().manual_seed(5)
    E = 300_000
    ei = torch.stack([torch.randint(0, ns, (E,), generator=g),
                      torch.randint(0, nd, (E,), generator=g)])
    ei[1][ei[1] % 7 == 3] = 0  # a hub and empty rows
    ei[0, :500] = ei[1, :500] % ns  # some loops where the ids match
    with ops.set_backend("reference"):
        ref = build_graph(ei, (ns, nd), cache=False, self_loops=self_loops)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            out = torch.ops.graphattn.edge_csr(ei, ns, nd, self_loops)
            for name, a in zip(("ptr", "perm", "src", "csc_ptr", "csc_eid", "csc_dst"), out):
                assert torch.equal(a, getattr(ref, name)), (t, name)
            assert torch.equal(out[6], ref.kept if self_loops else ei.new_empty(0))
            # the first bad position is named, whichever chunk holds it
            bad = ei.clone()
            bad[1, E - 10], bad[0, E // 2 + 7] = nd, -4
            with pytest.raises(ValueError, match=f"'edge_index\\[0\\]' \\(sources\\) holds -4 "
                                                   f"at position {E // 2 + 7},"):
                torch.ops.graphattn.edge_csr(bad, ns, nd, self_loops)
    finally:
        torch.set_num_threads(threads)


@native_only
def test_native_builder_refuses_bad_indices_with_named_errors():
    csr = torch.ops.graphattn.edge_csr
    good = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"'edge_index\[1\]' \(destinations\) holds 3 at "
                                           r"position 1, outside the valid range \[0, 3\)"):
        csr(torch.tensor([[0, 1], [1, 3]]), 3, 3)
    with pytest.raises(ValueError, match=r"'edge_index\[0\]' \(sources\) holds -1"):
        csr(torch.tensor([[-1, 1], [1, 2]]), 3, 3)
    with pytest.raises(TypeError, match="'edge_index' must be an int64 tensor, got Int"):
        csr(good.int(), 3, 3)
    with pytest.raises(ValueError, match=r"shape \[2, num_edges\], got \[3, 2\]"):
        csr(torch.zeros(3, 2, dtype=torch.long), 3, 3)
    with pytest.raises(ValueError, match="node counts must be non-negative"):
        csr(good, -1, 3)
    # through build_graph, validation names the problem first
    with pytest.raises(ValueError, match="out of range for 3 destination nodes"):
        build_graph(torch.tensor([[0, 1], [1, 3]]), 3, cache=False)


@native_only
def test_native_builder_opcheck():
    ei = ragged_edge_index(12)
    for loops in (False, True):
        torch.library.opcheck(torch.ops.graphattn.edge_csr.default, (ei, 12, 12, loops))


@native_only
def test_lazy_attributes_under_compile_pickle_and_deepcopy():
    """A native graph's dst / iperm / edge_index are formed on first use: inside a compiled
    region too (fullgraph, nothing kept on the graph object there), and a pickled or
    deep-copied graph carries whatever was formed."""
    import copy
    import pickle

    ei = ragged_edge_index(12)
    g = build_graph(ei, 12, cache=False, self_loops=True)
    s = torch.randn(g.num_edges, 2)

    def f(s):
        return ops.segment_softmax(s, g), g.edge_index.sum(), g.iperm.sum()

    with ops.set_backend("reference"):  # its softmax reads graph.dst
        got = torch.compile(f, fullgraph=True, dynamic=True)(s)
        assert not {"dst", "iperm", "edge_index"} & set(vars(g))
        want = f(s)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    for h in (pickle.loads(pickle.dumps(g)), copy.deepcopy(g)):
        for name in ("ptr", "src", "perm", "kept", "dst", "iperm", "edge_index"):
            assert torch.equal(getattr(h, name), getattr(g, name)), name
