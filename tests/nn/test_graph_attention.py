"""GraphAttention: equality with PyG's GATConv / GATv2Conv / TransformerConv (outputs,
attention weights, gradients), permutation equivariance, compile, bad input."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GATConv, GATv2Conv, TransformerConv

from graphattn import ops
from graphattn.index import build_graph
from graphattn.nn import GraphAttention
from tests.conftest import ragged_edge_index

PYG = {"gat": GATConv, "gatv2": GATv2Conv, "transformer": TransformerConv}


def pair(mode, in_channels, out_channels, **kw):
    ref = PYG[mode](in_channels, out_channels, **kw)
    ours = GraphAttention(in_channels, out_channels, mode=mode, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
@pytest.mark.parametrize("edge_dim", [None, 3])
@pytest.mark.parametrize("concat", [True, False])
def test_equals_pyg_outputs_weights_and_gradients(backend, mode, edge_dim, concat):
    N = 14
    ei = ragged_edge_index(N)
    x = torch.randn(N, 16)
    ea = torch.randn(ei.size(1), 3) if edge_dim else None
    kw = dict(heads=4, edge_dim=edge_dim, concat=concat)
    if mode == "transformer":
        kw["beta"] = True
    ref, ours = pair(mode, 16, 8, **kw)
    a_out, (a_ei, a_w) = ref(x, ei, ea, return_attention_weights=True)
    b_out, (b_ei, b_w) = ours(x, ei, ea, return_attention_weights=True)
    torch.testing.assert_close(b_out, a_out, atol=1e-5, rtol=1e-4)
    assert torch.equal(b_ei, a_ei)
    torch.testing.assert_close(b_w, a_w, atol=1e-5, rtol=1e-4)
    gout = torch.randn_like(a_out)
    (a_out * gout).sum().backward()
    (b_out * gout).sum().backward()
    named = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(named[name].grad, p.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("fill_value", ["mean", "max", "add"])
def test_loop_features_equal_pyg_without_forming_the_edge_list(backend, fill_value):
    """Self-loop edge features reduced from the kept edges (string ``fill_value``) equal PyG's,
    and the prebuilt graph's loop-added ``[2, E']`` list is not formed (nor kept) for them."""
    N = 14
    ei = ragged_edge_index(N)
    x, ea = torch.randn(N, 16), torch.randn(ei.size(1), 3)
    ref, ours = pair("gat", 16, 8, heads=2, edge_dim=3, fill_value=fill_value)
    graph = build_graph(ei, N, self_loops=True)
    formed = "edge_index" in graph.__dict__  # the torch builder (reference backend) forms it
    torch.testing.assert_close(ours(x, graph, ea), ref(x, ei, ea), atol=1e-5, rtol=1e-4)
    assert ("edge_index" in graph.__dict__) == formed


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("extra", [False, True])
def test_training_step_without_weights_equals_pyg(backend, mode, concat, extra):
    """The plain call (no returned weights, no edge features): the transformer's projected
    attention and the in-place skip / residual / bias, gradients included, with and without
    the input's gradient; `extra` = residual for GAT/GATv2, root weight off for Transformer."""
    N = 14
    ei = ragged_edge_index(N)
    x = torch.randn(N, 16, requires_grad=True)
    kw = dict(heads=4, concat=concat)
    if extra:
        kw.update(root_weight=False) if mode == "transformer" else kw.update(residual=True)
    ref = PYG[mode](16, 8, **kw)
    ours = GraphAttention(16, 8, mode=mode, **kw)
    names = list(dict(ours.named_parameters()))  # PyG keeps an unused lin_skip without root
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if k in names})
    gout = torch.randn(N, 32 if concat else 8)
    grads = []
    for layer in (ref, ours):
        params = dict(layer.named_parameters())
        out = layer(x, ei)
        grads.append((out, *torch.autograd.grad((out * gout).sum(), [x, *map(params.get, names)])))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
def test_bipartite_equals_pyg(backend, mode):
    n_src, n_dst = 9, 6
    ei = torch.stack([torch.randint(0, n_src, (30,)), torch.randint(0, n_dst, (30,))])
    xs, xd = torch.randn(n_src, 10), torch.randn(n_dst, 7)
    kw = dict(heads=2) if mode == "transformer" else dict(heads=2, add_self_loops=False)
    ref, ours = pair(mode, (10, 7), 5, **kw)
    torch.testing.assert_close(ours((xs, xd), ei), ref((xs, xd), ei), atol=1e-5, rtol=1e-4)


def test_residual_and_no_bias_gat_equal_pyg(backend):
    ei = ragged_edge_index(10)
    x = torch.randn(10, 6)
    for mode in ("gat", "gatv2"):
        ref, ours = pair(mode, 6, 4, heads=3, residual=True, bias=False)
        torch.testing.assert_close(ours(x, ei), ref(x, ei), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
def test_node_permutation_equivariance(backend, mode):
    N = 16
    ei = ragged_edge_index(N)
    x = torch.randn(N, 8, dtype=torch.float64)
    layer = GraphAttention(8, 4, heads=2, mode=mode).double()
    perm = torch.randperm(N)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(N)
    out = layer(x, ei)
    out_p = layer(x[perm], inv[ei])
    torch.testing.assert_close(out_p, out[perm])


def test_empty_graph_gives_finite_output(backend):
    layer = GraphAttention(4, 3, heads=2, add_self_loops=False)
    out = layer(torch.randn(5, 4), torch.empty(2, 0, dtype=torch.long))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, layer.bias.expand(5, -1))


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
@pytest.mark.parametrize("edge_dim", [None, 3])
@pytest.mark.parametrize("concat", [True, False])
def test_no_nodes_gives_empty_output_and_gradients(backend, mode, edge_dim, concat):
    """A graph without nodes (an empty batch): a [0, H * C] (or [0, C]) output, as PyG's
    layers give, and zero gradients (the head reshape of an empty tensor is explicit)."""
    ref, ours = pair(mode, 5, 4, heads=2, edge_dim=edge_dim, concat=concat)
    x = torch.randn(0, 5, requires_grad=True)
    ei = torch.empty(2, 0, dtype=torch.long)
    ea = None if edge_dim is None else torch.randn(0, edge_dim)
    out = ours(x, ei, edge_attr=ea)
    assert out.shape == ref(x, ei, edge_attr=ea).shape == (0, 8 if concat else 4)
    grads = torch.autograd.grad(out.sum(), [x, *ours.parameters()], allow_unused=True,
                                materialize_grads=True)
    assert all(not g.any() for g in grads)


def test_lazy_repr_and_reset_parameters():
    layer = GraphAttention(-1, 8, heads=2, mode="gatv2")
    out = layer(torch.randn(5, 6), torch.tensor([[0, 1, 2], [1, 2, 3]]))
    assert out.shape == (5, 16)
    assert str(layer) == "GraphAttention(-1, 8, heads=2, mode='gatv2')"
    layer2 = GraphAttention(6, 8, heads=2)
    before = {k: v.clone() for k, v in layer2.state_dict().items()}
    torch.manual_seed(123)
    layer2.reset_parameters()
    after = layer2.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "att" in k)
    assert torch.equal(after["bias"], torch.zeros_like(after["bias"]))


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
def test_torch_func_grad_and_vmap_match_pyg(backend, mode):
    """torch.func (functional_call + grad, vmap over a batch of feature sets) on either
    backend: the native kernels and the Transformer's fused projection node have no functorch
    rules, so the ops take the torch form under the transforms (the fused node raised)."""
    from torch.func import functional_call, grad, vmap

    N = 12
    ei = ragged_edge_index(N)
    ref, ours = pair(mode, 8, 4, heads=2)
    x = torch.randn(N, 8)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    g = grad(lambda p: functional_call(ours, p, (x, ei)).pow(2).sum())(params)
    ref(x, ei).pow(2).sum().backward()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(g[name], p.grad, atol=1e-5, rtol=1e-4)
    xb = torch.randn(3, N, 8)
    out = vmap(lambda xx: functional_call(ours, params, (xx, ei)))(xb)
    torch.testing.assert_close(out, torch.stack([ref(xx, ei) for xx in xb]),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
def test_compile_fullgraph_dynamic(backend, mode):
    torch._dynamo.reset()
    N = 12
    ei = ragged_edge_index(N)
    layer = GraphAttention(8, 4, heads=2, mode=mode).eval()
    x = torch.randn(N, 8)
    graph = build_graph(ei, N, self_loops=layer.add_self_loops)  # loops need a host sync
    explain = torch._dynamo.explain(layer)(x, graph)
    assert explain.graph_break_count == 0
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(x, graph), layer(x, ei), atol=1e-5, rtol=1e-4)
    # a plain edge_index tensor compiles too when no self-loops are added
    plain = GraphAttention(8, 4, heads=2, mode=mode, add_self_loops=False).eval()
    c2 = torch.compile(plain, fullgraph=True, dynamic=True)
    torch.testing.assert_close(c2(x, ei), plain(x, ei), atol=1e-5, rtol=1e-4)


def test_bad_input_raises(backend):
    with pytest.raises(ValueError, match="'mode' must be one of"):
        GraphAttention(4, 4, mode="gin")
    with pytest.raises(ValueError, match="'heads' must be a positive int"):
        GraphAttention(4, 4, heads=0)
    with pytest.raises(ValueError, match="'out_channels' must be a positive int"):
        GraphAttention(4, True)
    for bad in (-5, 0, (4, 0), True, 2.0):  # only -1 is lazy
        with pytest.raises(ValueError, match="'in_channels' must be a positive int, -1"):
            GraphAttention(bad, 4)
    import numpy as np

    assert GraphAttention(np.int64(4), 3).in_channels == 4  # a size from np.max(...) + 1
    assert GraphAttention((np.int64(4), 6), 3).in_channels == (4, 6)
    with pytest.raises(ValueError, match=r"built bipartite \(in_channels=\(4, 6\)\)"):
        GraphAttention((4, 6), 3)(torch.randn(5, 4), torch.tensor([[0], [1]]))
    layer = GraphAttention(4, 3, heads=2)
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"edge_index\[0\]"):
        layer(x, torch.tensor([[0, 7], [1, 2]]))
    with pytest.raises(ValueError, match="non-negative"):
        layer(x, torch.tensor([[0, -1], [1, 2]]))
    with pytest.raises(TypeError, match="int64"):
        layer(x, torch.tensor([[0.0, 1.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="'x' must be a 2-D tensor"):
        layer(torch.randn(5), torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="edge_dim=None"):
        layer(x, torch.tensor([[0], [1]]), edge_attr=torch.randn(1, 2))
    with pytest.raises(ValueError, match=r"'heads' \(3\) must divide"):
        ops.split_heads(torch.randn(4, 16), 3)
    assert ops.split_heads(torch.randn(4, 16), 4).shape == (4, 4, 4)


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
def test_features_and_edge_attr_of_another_shape_or_dtype_raise(backend, mode):
    """Features of another width or dtype, and edge_attr with a row count other than the
    edge_index's (more rows were silently cut when self-loops are added; fewer raised an
    IndexError) or another width, raise errors that name the argument."""
    ei = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    layer = GraphAttention(4, 3, heads=2, mode=mode, edge_dim=2)
    x = torch.randn(5, 4)
    assert layer(x, ei, torch.randn(4, 2)).shape == (5, 6)
    for rows in (7, 3):
        with pytest.raises(ValueError, match=r"'edge_attr' must have one row per edge"):
            layer(x, ei, torch.randn(rows, 2))
    with pytest.raises(ValueError, match=r"'edge_attr' must have 2 features \(the layer's "
                       r"edge_dim\), got \[4, 3\]"):  # as given, before self-loops are added
        layer(x, ei, torch.randn(4, 3))
    with pytest.raises(TypeError, match="'edge_attr' must have the layer's dtype"):
        layer(x, ei, torch.ones(4, 2, dtype=torch.long))  # every mode, loops or not
    with pytest.raises(ValueError, match="'x' must have 4 features"):
        layer(torch.randn(5, 6), ei)
    with pytest.raises(TypeError, match="'x' must have the layer's dtype"):
        layer(x.double(), ei)
    with pytest.raises(ValueError, match="'x_dst' must have 4 features"):
        layer((x, torch.randn(5, 3)), ei)
    with pytest.raises(ValueError, match=r"'size' \(5, 6\) does not match"):
        layer((x, x), ei, size=(5, 6))


@pytest.mark.parametrize("mode", ["gatv2", "transformer"])
def test_edge_attr_with_a_graph_built_without_its_edge_list(backend, mode):
    """Edge features enter per edge in the caller's order also for an EdgeGraph that holds no
    edge_index (a hand-built one): same output as with the edge list itself."""
    import dataclasses

    N = 9
    ei = ragged_edge_index(N)
    x, ea = torch.randn(N, 4), torch.randn(ei.size(1), 2)
    layer = GraphAttention(4, 3, heads=2, mode=mode, edge_dim=2, add_self_loops=False)
    g = dataclasses.replace(build_graph(ei, N, cache=False), input_index=None)
    assert g.input_index is None  # no edge list of its own
    torch.testing.assert_close(layer(x, g, ea), layer(x, ei, ea))


@pytest.mark.parametrize("mode", ["gat", "gatv2"])
def test_bipartite_loops_with_more_destinations_than_sources(backend, mode):
    """Self-loops of a bipartite graph join the first min(num_src, num_dst) nodes; with
    fill_value='mean' each loop's edge attribute is the mean over that destination's
    in-edges, also when destinations outnumber sources (PyG's scatter fails there)."""
    ei = torch.tensor([[0, 1, 1, 0, 0], [4, 0, 2, 1, 1]])  # 2 sources, 5 destinations
    xs, xd, ea = torch.randn(2, 4), torch.randn(5, 4), torch.randn(5, 2)
    layer = GraphAttention(4, 3, heads=2, mode=mode, edge_dim=2, add_self_loops=True)
    out = layer((xs, xd), ei, ea)
    loops = torch.tensor([[0, 1], [0, 1]])
    loop_attr = torch.stack([ea[1], ea[3:].mean(0)])  # node 0: edge 1; node 1: edges 3, 4
    plain = GraphAttention(4, 3, heads=2, mode=mode, edge_dim=2, add_self_loops=False)
    plain.load_state_dict(layer.state_dict())
    want = plain((xs, xd), torch.cat([ei, loops], 1), torch.cat([ea, loop_attr]))
    torch.testing.assert_close(out, want)


def test_lazy_bipartite_gat_equals_pyg_after_init():
    ei = torch.stack([torch.randint(0, 9, (30,)), torch.randint(0, 6, (30,))])
    xs, xd = torch.randn(9, 10), torch.randn(6, 7)
    ours = GraphAttention((-1, -1), 5, heads=2, add_self_loops=False)
    out = ours((xs, xd), ei)
    ref = GATConv((10, 7), 5, heads=2, add_self_loops=False)
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(out, ref((xs, xd), ei), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["gat", "gatv2", "transformer"])
def test_second_derivatives_equal_the_reference_path(mode):
    """A gradient penalty through the layer (create_graph=True): the native path's first and
    second derivatives equal the pure-torch path's. (The Transformer's and GAT's lean nodes
    recompute their forward for it; with x_dst is x_src the recomputation counted x's paths
    twice before 2026-12-07.)"""
    if not ops.native_available():
        pytest.skip("graphattn._C not built")
    torch.manual_seed(0)
    layer = GraphAttention(5, 3, heads=2, mode=mode).double()
    ei = ragged_edge_index(10)
    res = []
    for be in ("native", "reference"):
        with ops.set_backend(be):
            x = torch.randn(10, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            x.requires_grad_()
            (gx,) = torch.autograd.grad(layer(x, ei).pow(2).sum(), x, create_graph=True)
            res.append((gx, *torch.autograd.grad(gx.pow(2).sum(), [x, *layer.parameters()],
                                                 allow_unused=True, materialize_grads=True)))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b)
