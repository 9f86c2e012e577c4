"""MLANet and GDEGAN: equivariance (e3nn), invariances, cutoff continuity, conservative forces,
pooling semantics, Gaussian-kernel properties."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("e3nn")
from e3nn import o3  # noqa: E402
from e3nn.util.test import assert_equivariant  # noqa: E402

from graphattn import ops  # noqa: E402
from graphattn.nn.equivariant import (  # noqa: E402
    GDEGAN,
    EdgeGeometry,
    GaussianDynamicAttention,
    GDEGANInteraction,
    MLANet,
    MLANetInteraction,
    PolynomialCutoff,
    default_irreps,
)
from graphattn.nn.equivariant.mlanet import _ptr  # noqa: E402
from tests.conftest import BACKENDS  # noqa: E402

IRREPS = o3.Irreps(default_irreps(8, 4, 2))


pytestmark = pytest.mark.usefixtures("float64")


def _radius(pos: torch.Tensor, r: float, batch: torch.Tensor | None = None) -> torch.Tensor:
    d = torch.cdist(pos, pos)
    keep = (d < r) & ~torch.eye(len(pos), dtype=torch.bool)
    if batch is not None:
        keep &= batch[:, None] == batch[None, :]
    dst, src = keep.nonzero(as_tuple=True)
    return torch.stack([src, dst])


def _molecule(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, 3, generator=g) * 1.3
    z = torch.randint(1, 9, (n,), generator=g)
    return z, pos


@pytest.mark.parametrize("kind", ["mlanet", "mlanet-degree", "gdegan"])
def test_interaction_is_e3_equivariant(kind):
    cutoff = 4.0
    geo = EdgeGeometry(cutoff, lmax=2, num_basis=6)
    if kind.startswith("mlanet"):
        layer = MLANetInteraction(IRREPS, lmax=2, num_basis=6, heads=2,
                                  degree_scaling=kind == "mlanet-degree")
    else:
        layer = GDEGANInteraction(IRREPS, lmax=2, num_basis=6, heads=2, head_dim=4)
    pos = torch.randn(6, 3)
    x = IRREPS.randn(6, -1)

    def f(x, pos):
        ei = _radius(pos, cutoff)
        return layer(x, ei, geo(pos, ei))

    # rotations, translations and reflections (parity) of the inputs
    assert_equivariant(f, args_in=[x, pos], irreps_in=[IRREPS, "cartesian_points"],
                       irreps_out=[IRREPS], tolerance=1e-8)


@pytest.mark.parametrize("conservative", [False, True])
def test_mlanet_energy_invariant_forces_equivariant(conservative):
    model = MLANet(num_species=10, channels=8, l_channels=4, num_layers=2, heads=2,
                   cutoff=4.0, conservative=conservative)
    z, pos = _molecule()

    def f(pos):
        out = model(z, pos, edge_index=_radius(pos, 4.0))
        return out["energy"], out["forces"]

    assert_equivariant(f, args_in=[pos], irreps_in=["cartesian_points"],
                       irreps_out=["0e", "1o"], tolerance=1e-8)
    # permutation: energy invariant, forces permute with the atoms
    P = torch.randperm(len(z))
    e0, f0 = f(pos)
    out = model(z[P], pos[P], edge_index=_radius(pos[P], 4.0))
    torch.testing.assert_close(out["energy"], e0)
    torch.testing.assert_close(out["forces"], f0[P])


def test_reflection_flips_forces_and_keeps_energy():
    """The model is E(3)-, not only SE(3)-equivariant: a mirror image has the same energy and
    mirrored forces (parity-respecting e3nn tensor products; stated in conv.py)."""
    model = MLANet(num_species=10, channels=8, l_channels=4, num_layers=2, heads=2, cutoff=4.0)
    z, pos = _molecule(seed=3)
    M = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    a = model(z, pos, edge_index=_radius(pos, 4.0))
    b = model(z, pos @ M.T, edge_index=_radius(pos @ M.T, 4.0))
    torch.testing.assert_close(b["energy"], a["energy"])
    torch.testing.assert_close(b["forces"], a["forces"] @ M.T)


def _energy_of_distance(model, z, pos, atom, direction, r, cutoff):
    p = pos.clone()
    p[atom] = pos[0] + direction * r
    return model(z, p, edge_index=_radius(p, cutoff))["energy"].item()


@pytest.mark.parametrize("degree_scaling", [False, True])
def test_cutoff_continuity(degree_scaling):
    cutoff = 3.0
    model = MLANet(num_species=10, channels=8, l_channels=4, num_layers=2, heads=2,
                   cutoff=cutoff, degree_scaling=degree_scaling)
    z = torch.tensor([6, 8])
    pos = torch.zeros(2, 3)
    u = torch.tensor([0.6, 0.0, 0.8])
    e_in = _energy_of_distance(model, z, pos, 1, u, cutoff - 1e-5, cutoff)
    e_out = _energy_of_distance(model, z, pos, 1, u, cutoff + 1e-5, cutoff)
    e_far = _energy_of_distance(model, z, pos, 1, u, cutoff - 0.8, cutoff)
    assert abs(e_in - e_out) < 1e-8  # continuous across r_c ...
    assert abs(e_far - e_out) > 1e-4  # ... although the neighbour matters inside
    # a single neighbour: the softmax gives it weight 1, only the envelope factor fades it out
    layer = model.layers[0]
    p = torch.stack([pos[0], u * (cutoff - 1e-3)])
    ei = _radius(p, cutoff)
    _, att = layer(torch.cat([model.embed(z), torch.zeros(2, model.irreps.dim - 8)], -1), ei,
                   model.geometry(p, ei), return_attention=True)
    torch.testing.assert_close(att, torch.ones_like(att))
    assert PolynomialCutoff(cutoff)(torch.tensor([cutoff - 1e-3])) < 1e-8


def test_conservative_forces_are_minus_gradient_and_closed_path_work_vanishes():
    cutoff = 4.0
    model = MLANet(num_species=10, channels=8, l_channels=4, num_layers=2, heads=2,
                   cutoff=cutoff, conservative=True).eval()
    z, pos = _molecule(n=5, seed=1)
    ei = _radius(pos, 6.0)  # fixed graph covers every pair: no edges appear on the path
    out = model(z, pos.clone(), edge_index=ei)
    h = 1e-5
    for a, c in [(0, 0), (2, 1), (4, 2)]:
        p1, p2 = pos.clone(), pos.clone()
        p1[a, c] += h
        p2[a, c] -= h
        e1, e2 = model(z, p1, edge_index=ei)["energy"], model(z, p2, edge_index=ei)["energy"]
        fd = (e1 - e2) / (2 * h)
        torch.testing.assert_close(out["forces"][a, c], -fd[0], atol=1e-7, rtol=1e-5)

    def work(m):
        # W = integral of F . r'(t) dt over a circle (periodic trapezoid rule). The max branch
        # of the pooling puts kinks in E, so the quadrature error is ~1e-3, not round-off
        n, rad = 48, 0.4
        w = scale = 0.0
        for tt in torch.arange(n) * (2 * math.pi / n):
            p = pos.clone()
            p[0] = pos[0] + rad * torch.stack([torch.cos(tt), torch.sin(tt), 0 * tt])
            f = m(z, p, edge_index=ei)["forces"][0].detach()
            tangent = rad * torch.stack([-torch.sin(tt), torch.cos(tt), 0 * tt])
            w += float(f @ tangent) * 2 * math.pi / n
            scale += float(f.norm() * tangent.norm()) * 2 * math.pi / n
        return w, scale

    w, scale = work(model)
    assert abs(w) < 5e-3 * scale
    direct = MLANet(num_species=10, channels=8, l_channels=4, num_layers=2, heads=2,
                    cutoff=cutoff, conservative=False)
    wd, sd = work(direct)
    assert abs(wd) > 2e-2 * sd  # a direct force head is not conservative


def test_pooling_semantics_two_far_copies():
    model = MLANet(num_species=10, channels=8, l_channels=4, num_layers=2, heads=2, cutoff=4.0)
    z, pos = _molecule(n=4, seed=2)
    h = {}
    model.layers[-1].register_forward_hook(lambda m, i, o: h.update(x=o))
    model(z, pos, edge_index=_radius(pos, 4.0))
    one = model.pool(h["x"][:, :8], _ptr(torch.zeros(4, dtype=torch.long), 1))
    z2, pos2 = torch.cat([z, z]), torch.cat([pos, pos + 100.0])
    model(z2, pos2, edge_index=_radius(pos2, 4.0))
    two = model.pool(h["x"][:, :8], _ptr(torch.zeros(8, dtype=torch.long), 1))
    torch.testing.assert_close(two[:, :8], 2 * one[:, :8])  # sum doubles
    torch.testing.assert_close(two[:, 8:], one[:, 8:])  # mean and max do not
    e1 = model(z, pos, edge_index=_radius(pos, 4.0))["energy"]
    e2 = model(z2, pos2, edge_index=_radius(pos2, 4.0))["energy"]
    assert not torch.allclose(e2, 2 * e1)  # not size-extensive, as the paper's pooling implies


def test_readout_shortcut_keeps_gradients_when_the_pooling_mlp_is_dead():
    """E = MLP(P) + w^T P: with every SiLU unit of the MLP far negative (the failure seen on
    QM9 at a high learning rate), the energy still responds to the atoms' features and the
    embedding still receives a gradient; without the shortcut it is a constant."""
    z, pos = _molecule(n=6, seed=3)
    ei = _radius(pos, 4.0)
    grads = {}
    for shortcut in (True, False):
        torch.manual_seed(0)
        model = MLANet(num_species=10, channels=8, l_channels=4, num_layers=1, heads=2,
                       cutoff=4.0, readout_shortcut=shortcut)
        with torch.no_grad():
            model.head[0].bias.fill_(-60.0)  # every hidden unit dead
        out = model(z, pos, edge_index=ei)["energy"]
        out.sum().backward()
        grads[shortcut] = model.embed.weight.grad.abs().max().item()
        pooled = torch.randn(3, 24)
        want = model.head(pooled).squeeze(-1) + (
            model.head_shortcut(pooled).squeeze(-1) if shortcut else 0.0)
        torch.testing.assert_close(model.readout(pooled), want)
    assert grads[True] > 1e-3
    assert grads[False] < 1e-12


def test_attention_normalised_and_paths_off_is_cutoff_weighted_mean():
    cutoff = 4.0
    geo = EdgeGeometry(cutoff, 2, 6)
    pos = torch.randn(7, 3)
    ei = _radius(pos, cutoff)
    x = IRREPS.randn(7, -1)
    layer = MLANetInteraction(IRREPS, num_basis=6, heads=2)
    _, p = layer(x, ei, geo(pos, ei), return_attention=True)
    graph = ops.build_graph(ei, 7)
    deg = torch.bincount(ei[1], minlength=7)
    torch.testing.assert_close(ops.aggregate(p, graph, "sum")[deg > 0],
                               torch.ones(int((deg > 0).sum()), 2))
    off = MLANetInteraction(IRREPS, num_basis=6, heads=2, chemical=False, geometric=False)
    g = geo(pos, ei)
    _, p = off(x, ei, g, return_attention=True)
    fc = g["fc"]
    want = fc / ops.aggregate(fc, graph, "sum")[ei[1]]
    torch.testing.assert_close(p, want.unsqueeze(-1).expand_as(p))


def test_degree_scaling_with_paths_off_is_an_envelope_squared_sum():
    r"""Both attention paths off: :math:`p_{ij} = f_c(r_{ij}) / \sum_k f_c(r_{ik})`, so
    with the smooth in-degree :math:`D_i = \sum_k f_c(r_{ik})` the weights
    :math:`f_c\,p\,D` are :math:`f_c(r_{ij})^2`: a sum over neighbours, not a mean (a
    neighbour count instead of the smooth degree, or no scaling, fails this)."""
    cutoff = 4.0
    geo = EdgeGeometry(cutoff, 2, 6)
    pos = torch.randn(8, 3) * 1.2
    ei = _radius(pos, cutoff)
    x = IRREPS.randn(8, -1)
    g = geo(pos, ei)
    layer = MLANetInteraction(IRREPS, num_basis=6, heads=2, chemical=False, geometric=False,
                              degree_scaling=True)
    fc2 = (g["fc"] ** 2).unsqueeze(-1).expand(-1, 2)
    want = layer.conv(x, fc2, g["graph"], ei[0], ei[1], g["radial"], g["sh"])
    torch.testing.assert_close(layer(x, ei, g), want)
    plain = MLANetInteraction(IRREPS, num_basis=6, heads=2, chemical=False, geometric=False)
    plain.load_state_dict(layer.state_dict())
    assert not torch.allclose(plain(x, ei, g), want)


def test_geometry_carries_the_graph_and_a_mismatch_raises():
    """EdgeGeometry builds the CSR once for all interactions; the layer gives the same output
    with it and with a hand-made geometry dict without it, and refuses a geometry computed
    from another edge set instead of reading the wrong rows."""
    geo = EdgeGeometry(4.0, 2, 6)
    pos = torch.randn(7, 3)
    ei = _radius(pos, 4.0)
    x = IRREPS.randn(7, -1)
    layer = MLANetInteraction(IRREPS, num_basis=6, heads=2)
    g = geo(pos, ei)
    assert torch.equal(g["graph"].ptr, ops.build_graph(ei, 7).ptr)
    torch.testing.assert_close(layer(x, ei, g),
                               layer(x, ei, {k: v for k, v in g.items() if k != "graph"}))
    with pytest.raises(ValueError, match="'geom' holds the graph of"):
        layer(x, ei[:, :-1], g)


def test_charge_embedding_and_bad_inputs():
    model = MLANet(num_species=10, channels=8, l_channels=4, num_layers=1, heads=2, charge=True)
    z, pos = _molecule(n=4)
    ei = _radius(pos, 5.0)
    e0 = model(z, pos, edge_index=ei, charge=torch.tensor([0]))["energy"]
    e1 = model(z, pos, edge_index=ei, charge=torch.tensor([1]))["energy"]
    assert not torch.allclose(e0, e1)
    with pytest.raises(ValueError, match="charge"):
        model(z, pos, edge_index=ei, charge=torch.tensor([9]))
    with pytest.raises(TypeError, match="'charge' must be an integer"):  # not cut to 0
        model(z, pos, edge_index=ei, charge=torch.tensor([0.7]))
    with pytest.raises(TypeError, match="'z'"):
        model(z.double(), pos)
    with pytest.raises(ValueError, match="'pos'"):
        model(z, pos[:, :2])
    with pytest.raises(ValueError, match="'z'"):
        model(z + 20, pos)
    with pytest.raises(ValueError, match="sorted"):
        model(z, pos, batch=torch.tensor([1, 0, 0, 0]), edge_index=ei)
    with pytest.raises(TypeError, match="'pos' must have the model's dtype"):
        model(z, pos.float(), edge_index=ei)
    with pytest.raises(ValueError, match=r"edge_index\[0\]"):  # before gathers
        model(z, pos, edge_index=torch.tensor([[0, 7], [1, 0]]))
    with pytest.raises(TypeError, match="'charge' must be an integer"):
        model(z, pos, edge_index=ei, charge=torch.tensor([True]))
    # an edge between two structures would let one change the other's energy
    with pytest.raises(ValueError, match="joins atoms of different structures"):
        model(z, pos, batch=torch.tensor([0, 0, 1, 1]), edge_index=torch.tensor([[0, 2], [1, 1]]))
    layer = model.layers[0]
    geom = model.geometry(pos, ei)
    x = torch.randn(4, layer.irreps_node.dim)
    with pytest.raises(ValueError, match=rf"'x' must have shape \[N, {x.shape[1]}\]"):
        layer(x[:, :10], ei, geom)
    with pytest.raises(TypeError, match="'x' must have the layer's dtype"):
        layer(x.float(), ei, geom)


def test_conservative_model_leaves_the_callers_positions_alone():
    """F = -dE/dr needs positions that require grad: the model takes a new leaf, so the
    caller's tensor does not start requiring grad (its later in-place edits would fail)."""
    model = MLANet(num_species=10, channels=8, l_channels=4, num_layers=1, heads=2,
                   conservative=True)
    z, pos = _molecule(n=5)
    out = model(z, pos)
    assert not pos.requires_grad and pos.grad is None
    assert torch.isfinite(out["forces"]).all() and out["forces"].abs().sum() > 0


def test_gdegan_bad_inputs_and_structures_without_edges():
    """GDEGAN refuses an unsorted batch (its readout's segments would mix structures), an
    out-of-range edge and features of another width or dtype, each with a message naming the
    argument; a structure whose residues are all beyond the cutoff (no edges) still gives
    finite logits and centres."""
    model = GDEGAN(in_channels=5, channels=8, l_channels=4, lmax=1, num_layers=1, heads=2,
                   cutoff=4.0, readout="top_site")
    x, pos = torch.randn(4, 5), torch.randn(4, 3)
    with pytest.raises(ValueError, match="sorted"):
        model(x, pos, batch=torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"batch must have shape \[N\] = \[4\]"):
        model(x, pos, batch=torch.tensor([0, 0, 1]))
    with pytest.raises(TypeError, match="batch must be an integer tensor"):
        model(x, pos, batch=torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"edge_index\[0\]"):
        model(x, pos, edge_index=torch.tensor([[0, 9], [1, 0]]))
    with pytest.raises(ValueError, match=r"'x' must be \[N, 5\]"):
        model(torch.randn(4, 6), pos)
    with pytest.raises(ValueError, match="joins atoms of different structures"):
        model(x, pos, batch=torch.tensor([0, 0, 1, 1]), edge_index=torch.tensor([[1, 2], [0, 0]]))
    with pytest.raises(TypeError, match="model's dtype"):
        model(x.float(), pos.float())
    for variant in (dict(), dict(variance="per_channel")):
        lonely = GDEGAN(in_channels=5, channels=8, l_channels=4, lmax=1, num_layers=1,
                        heads=2, cutoff=4.0, **variant)
        out = lonely(x, pos * 100)  # no two residues within the cutoff
        assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["center"]).all()


# ---- Gaussian dynamic attention -------------------------------------------------------------
def _graph(N=6):
    src = torch.tensor([1, 2, 3, 0, 2, 4, 5, 5, 3])
    dst = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 4])
    return torch.stack([src, dst]), N  # node 5 has no in-edges


@pytest.mark.parametrize("variant", [dict(), dict(stats="features"),
                                     dict(stats="features", variance="per_channel")])
def test_gaussian_attention_on_no_nodes_and_bad_edge_attr(variant):
    """Every variant runs on a graph of no nodes (an empty [0, H * D] output); an edge_attr of
    another dtype than x raises naming it."""
    att = GaussianDynamicAttention(8, heads=2, head_dim=4, **variant)
    out = att(torch.randn(0, 8), torch.empty(2, 0, dtype=torch.long))
    assert out.shape == (0, 8)
    weighted = GaussianDynamicAttention(8, heads=2, head_dim=4, edge_dim=3, edge_weighted=True,
                                        **variant)
    ei, N = _graph()
    with pytest.raises(TypeError, match="'edge_attr' must have the dtype of 'x'"):
        weighted(torch.randn(N, 8), ei, torch.ones(ei.shape[1], 3, dtype=torch.long))

def test_gaussian_scale_invariance():
    ei, N = _graph()
    att = GaussianDynamicAttention(8, heads=2, head_dim=4, eps=1e-12)
    graph = ops.build_graph(ei, N)
    q, k = torch.randn(N, 2, 4), torch.randn(N, 2, 4)
    a = ops.segment_softmax(att.scores(q, k, graph, ei[0], ei[1]), graph)
    b = ops.segment_softmax(att.scores(7.5 * q, 7.5 * k, graph, ei[0], ei[1]), graph)
    torch.testing.assert_close(a, b)
    # a fixed-bandwidth RBF (what the variance bandwidth replaces) is not scale invariant
    rbf = lambda q, k: -(q[ei[1]] - k[ei[0]]).pow(2).sum(-1)  # noqa: E731
    assert not torch.allclose(ops.segment_softmax(rbf(q, k), graph),
                              ops.segment_softmax(rbf(7.5 * q, 7.5 * k), graph))


def test_gaussian_reduces_to_dot_product_for_equal_norm_keys():
    ei, N = _graph()
    att = GaussianDynamicAttention(8, heads=2, head_dim=4)
    with torch.no_grad():
        att.theta.copy_(torch.tensor([0.3, -0.7]))
    graph = ops.build_graph(ei, N)
    q = torch.randn(N, 2, 4)
    k = torch.nn.functional.normalize(torch.randn(N, 2, 4), dim=-1) * 2.0
    gauss = ops.segment_softmax(att.scores(q, k, graph, ei[0], ei[1]), graph)
    mu = ops.aggregate(k[ei[0]].flatten(1), graph, "mean").view(N, 2, 4)
    var = ops.aggregate((k[ei[0]] - mu[ei[1]]).pow(2).sum(-1), graph, "mean") + att.eps
    dot = (q[ei[1]] * k[ei[0]]).sum(-1) / (att.tau() * var[ei[1]])
    torch.testing.assert_close(gauss, ops.segment_softmax(dot, graph))
    # unequal key norms break the equivalence
    k2 = k * torch.rand(N, 2, 1) * 3
    g2 = ops.segment_softmax(att.scores(q, k2, graph, ei[0], ei[1]), graph)
    var2 = ops.aggregate((k2[ei[0]] - ops.aggregate(k2[ei[0]].flatten(1), graph, "mean")
                          .view(N, 2, 4)[ei[1]]).pow(2).sum(-1), graph, "mean") + att.eps
    d2 = (q[ei[1]] * k2[ei[0]]).sum(-1) / (att.tau() * var2[ei[1]])
    assert not torch.allclose(g2, ops.segment_softmax(d2, graph))


@pytest.mark.parametrize("variant", [dict(), dict(variance="per_channel"),
                                     dict(stats="features"), dict(kernel="dot")])
def test_gaussian_degenerate_neighbourhoods_and_normalisation(variant):
    # node 0: one neighbour; node 1: two identical neighbours; node 2: none
    ei = torch.tensor([[3, 4, 5], [0, 1, 1]])
    x = torch.randn(6, 8)
    x[5] = x[4]
    att = GaussianDynamicAttention(8, heads=2, head_dim=4, **variant)
    out, alpha = att(x, ei, return_attention_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(alpha).all()
    torch.testing.assert_close(alpha[0], torch.ones(2))
    torch.testing.assert_close(alpha[1:], torch.full((2, 2), 0.5))
    assert out[2].abs().max() == 0
    assert (att.tau() > 0).all()


def test_gaussian_attention_edge_attr_must_have_one_row_per_edge():
    """An edge_attr of one row (or of another row count) is refused, not broadcast over the
    edges."""
    ei, N = _graph()
    att = GaussianDynamicAttention(8, heads=2, head_dim=4, edge_dim=3, edge_weighted=True)
    x = torch.randn(N, 8)
    assert att(x, ei, torch.randn(ei.shape[1], 3)).shape == (N, 8)
    with pytest.raises(TypeError, match="'x' must have the layer's dtype"):
        att(x.float(), ei, torch.randn(ei.shape[1], 3))
    for bad in (torch.randn(1, 3), torch.randn(ei.shape[1] + 1, 3), torch.randn(ei.shape[1], 2)):
        with pytest.raises(ValueError, match=r"'edge_attr' must have shape \[E=9, edge_dim=3\]"):
            att(x, ei, bad)


def test_gaussian_attention_permutation_equivariant_and_gradcheck():
    ei, N = _graph()
    x = torch.randn(N, 8)
    att = GaussianDynamicAttention(8, heads=2, head_dim=4, variance="per_channel",
                                   edge_dim=3, edge_weighted=True)
    e = torch.randn(ei.shape[1], 3)
    out = att(x, ei, e)
    P = torch.randperm(N)
    inv = torch.empty_like(P)
    inv[P] = torch.arange(N)
    torch.testing.assert_close(att(x[P], inv[ei], e), out[P])
    xs = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: att(x, ei, e), (xs,))
    with pytest.raises(ValueError, match="edge_attr"):
        att(x, ei)
    with pytest.raises(ValueError, match="kernel"):
        GaussianDynamicAttention(8, kernel="rbf")


@pytest.mark.parametrize("readout", ["softmax", "top_site"])
def test_gdegan_center_equivariant_logits_invariant(readout):
    model = GDEGAN(in_channels=5, channels=8, l_channels=4, num_layers=2, heads=2, cutoff=4.0,
                   readout=readout, site_radius=2.0)
    x = torch.randn(9, 5)
    pos = torch.randn(9, 3) * 1.5

    def f(pos):
        out = model(x, pos, edge_index=_radius(pos, 4.0))
        return out["logits"], out["center"]

    assert_equivariant(f, args_in=[pos], irreps_in=["cartesian_points"],
                       irreps_out=["9x0e", "cartesian_points"], tolerance=1e-8)


def test_gdegan_top_site_readout_semantics():
    """The top-site readout's set is the residues within site_radius of each structure's
    argmax-logit residue: an infinite radius gives the softmax readout, a vanishing one (with
    zero offsets) the argmax residue's position; batching equals running each structure."""
    torch.manual_seed(0)
    kw = dict(in_channels=5, channels=8, l_channels=4, num_layers=2, heads=2, cutoff=4.0)
    x, pos = torch.randn(14, 5), torch.randn(14, 3) * 2.0
    batch = torch.tensor([0] * 8 + [1] * 6)
    ei = _radius(pos, 4.0, batch)
    soft = GDEGAN(**kw)
    wide = GDEGAN(**kw, readout="top_site", site_radius=1e6)
    wide.load_state_dict(soft.state_dict())
    a, b = soft(x, pos, batch, ei), wide(x, pos, batch, ei)
    torch.testing.assert_close(b["center"], a["center"])
    tight = GDEGAN(**kw, readout="top_site", site_radius=1e-6)
    tight.load_state_dict(soft.state_dict())
    with torch.no_grad():
        for p in tight.offset.parameters():
            p.zero_()
    out = tight(x, pos, batch, ei)
    top = torch.stack([out["logits"][:8].argmax(), 8 + out["logits"][8:].argmax()])
    torch.testing.assert_close(out["center"], pos[top])
    logits = torch.tensor([0.0, 3.0, 1.0, 5.0, 2.0])
    p5 = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [9.0, 0, 0], [0.0, 0, 0], [0.5, 0, 0]])
    sel = wide.top_site(logits, p5, torch.tensor([0, 0, 0, 1, 1]), 2)
    assert sel.tolist() == [0, 1, 2, 3, 4]
    wide.site_radius = 1.5
    sel = wide.top_site(logits, p5, torch.tensor([0, 0, 0, 1, 1]), 2)
    assert sel.tolist() == [0, 1, 3, 4]  # residue 2 is 8 A from structure 0's top residue 1
    # each structure alone gives the batched centre
    batched = wide(x, pos, batch, ei)["center"]
    for g, idx in ((0, slice(0, 8)), (1, slice(8, 14))):
        sub = _radius(pos[idx], 4.0)
        torch.testing.assert_close(wide(x[idx], pos[idx], edge_index=sub)["center"][0],
                                   batched[g])
    with pytest.raises(ValueError, match="readout"):
        GDEGAN(**kw, readout="mean")
    with pytest.raises(ValueError, match="site_radius"):
        GDEGAN(**kw, readout="top_site", site_radius=0.0)


def test_channel_broadcasts_match_explicit_column_maps():
    """heads_to_channels / scale_channels / MLANet's per-head key sums equal the explicit
    per-component maps (channel u of an irreps entry -> head u mod H)."""
    from graphattn.nn.equivariant.conv import irreps_blocks
    from graphattn.ops import heads_to_channels
    from graphattn.ops._reference import scale_channels

    irreps, H, E = o3.Irreps("6x0e+4x0e+5x1o+3x2e"), 4, 11
    channel, head, c = [], [], 0
    for mul, ir in irreps:
        for u in range(mul):
            channel += [c] * ir.dim
            head += [u % H] * ir.dim
            c += 1
    alpha, g, m = torch.randn(E, H), torch.randn(E, irreps.num_irreps), torch.randn(E, irreps.dim)
    blocks = irreps_blocks(irreps)
    coef = heads_to_channels(alpha, blocks) * g
    torch.testing.assert_close(scale_channels(m, coef, blocks),
                               m * g[:, channel] * alpha[:, head])
    m_t = m.t().contiguous().t()  # column-major: every block a strided view
    torch.testing.assert_close(scale_channels(m_t, coef, blocks), scale_channels(m, coef, blocks))
    # MLANet's geometric logits: the key map folded into per-node queries gives the per-head
    # sums of q_i * (W^k m_ij) over the components of each head's key irreps
    layer = MLANetInteraction(IRREPS, lmax=2, heads=2)
    key_head = []
    for mul, ir in layer.irreps_key:
        for u in range(mul):
            key_head += [u % 2] * ir.dim
    N = 5
    ei = torch.randint(0, N, (2, E))
    x, feats = torch.randn(N, layer.irreps_node.dim), torch.randn(E, layer.conv.irreps_mid.dim)
    qk = layer.q_geo(x)[ei[1]] * layer.k_geo(feats)
    want = torch.zeros(E, 2).index_add_(1, torch.tensor(key_head), qk)
    for name in BACKENDS:
        with ops.set_backend(name):
            got = ops.edge_query_dot(layer.geo_queries(x), feats, ops.build_graph(ei, N))
        torch.testing.assert_close(got, want)


def test_mlanet_chemical_logits_are_scaled_per_head_dot_products():
    """The chemical path's logits (one edge_pair_dot of scaled queries against the keys)
    are <W_q s_i, W_k s_j>_h / (tau_h sqrt d), per head, on both backends."""
    layer = MLANetInteraction(IRREPS, lmax=1, heads=3, key_dim=4, geometric=False)
    with torch.no_grad():
        layer.temperature.copy_(torch.tensor([-1.0, 0.0, 2.0]))  # distinct tau per head
    N, E = 6, 17
    ei = torch.randint(0, N, (2, E))
    x = torch.randn(N, layer.irreps_node.dim)
    s = x[:, : layer.conv.n_scalars]
    q, k = layer.wq(s).view(N, 3, 4), layer.wk(s).view(N, 3, 4)
    want = (q[ei[1]] * k[ei[0]]).sum(-1) / (layer.tau() * 2.0)
    geom = {"graph": ops.build_graph(ei, N)}
    for name in BACKENDS:
        with ops.set_backend(name):
            torch.testing.assert_close(layer.logits(x, ei, geom), want)


def test_mlanet_attention_sums_both_paths_and_the_log_envelope():
    """With both paths on (the default model), the logits are the chemical dot products plus
    the geometric per-head invariant products <W^q x_i, W^k m_ij>_h, each over its own tau_h,
    and the attention is their softmax with log f_c over each neighbourhood: a layer that
    dropped either path, mixed the heads or left out the envelope gives other numbers."""
    H, d, cutoff = 3, 4, 4.0
    layer = MLANetInteraction(IRREPS, lmax=2, num_basis=6, heads=H, key_dim=d)
    with torch.no_grad():
        layer.temperature.copy_(torch.tensor([-1.0, 0.0, 2.0]))  # distinct tau per head
    z, pos = _molecule(n=8, seed=3)
    ei = _radius(pos, cutoff)
    src, dst = ei
    geom = EdgeGeometry(cutoff, 2, 6)(pos, ei)
    x = IRREPS.randn(8, -1)
    tau = layer.tau()
    s = x[:, : layer.conv.n_scalars]
    q, k = layer.wq(s).view(-1, H, d), layer.wk(s).view(-1, H, d)
    chem = (q[dst] * k[src]).sum(-1) / (tau * math.sqrt(d))
    # copy u of every key irrep belongs to head u mod H; the invariant product of two irreps
    # of one copy is the sum of their components' products
    key_head = torch.tensor([u % H for mul, ir in layer.irreps_key for u in range(mul)
                             for _ in range(ir.dim)])
    feats = layer.conv.tp(x[src], geom["sh"], layer.conv.radial(geom["radial"]))
    qk = layer.q_geo(x)[dst] * layer.k_geo(feats)
    geo = torch.zeros(len(src), H, dtype=x.dtype).index_add_(1, key_head, qk)
    geo = geo / (math.sqrt(layer.irreps_key.dim / H) * tau)
    logits = chem + geo + torch.log(geom["fc"]).unsqueeze(-1)
    want = torch.empty_like(logits)
    for i in dst.unique():
        sel = dst == i
        want[sel] = torch.softmax(logits[sel], 0)
    assert geo.abs().max() > 0.1 and chem.abs().max() > 0.1  # both paths matter here
    for name in BACKENDS:
        with ops.set_backend(name):
            torch.testing.assert_close(layer.logits(x, ei, geom), chem + geo)
            _, p = layer(x, ei, geom, return_attention=True)
            torch.testing.assert_close(p, want)


@pytest.mark.slow
def test_mlanet_runs_under_torch_compile():
    """MLANet compiles (dynamic shapes; e3nn Irreps never reach dynamo's guards) and gives the
    eager energies, forces and parameter gradients; conservative forces in eval mode (training
    them needs a double backward, which compiled graphs do not support)."""
    torch.set_default_dtype(torch.float32)
    for conservative in (False, True):
        torch.manual_seed(0)
        model = MLANet(num_species=10, channels=8, l_channels=4, lmax=1, num_layers=1, heads=2,
                       cutoff=4.0, conservative=conservative).train(not conservative)
        compiled = torch.compile(model, dynamic=True)
        for n in (6, 9):
            z, pos = _molecule(n=n, seed=n)
            pos = pos.float()
            ei = _radius(pos, 4.0)
            res = []
            for f in (model, compiled):
                model.zero_grad()
                out = f(z, pos.clone(), edge_index=ei)
                grads = []
                if not conservative:
                    (out["energy"].sum() + out["forces"].square().sum()).backward()
                    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
                res.append((out["energy"].detach(), out["forces"].detach(), grads))
            (e0, f0, g0), (e1, f1, g1) = res
            torch.testing.assert_close(e1, e0, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(f1, f0, rtol=1e-4, atol=1e-5)
            assert len(g1) == len(g0)
            for a, b in zip(g1, g0):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_tp_weights_equal_radial_network_times_path_constants():
    """The radial network evaluated with e3nn's constants and the tensor product's path
    constants folded into its weights is the e3nn network's output times the constants (values
    and gradients), and the messages built from it are the unfolded ones."""
    from graphattn.nn.equivariant.conv import EquivariantAttentionConv

    conv = EquivariantAttentionConv(IRREPS, lmax=2, num_basis=6, heads=2)
    radial = torch.randn(20, 6, requires_grad=True)
    got = conv.tp_weights(radial)
    want = conv.radial(radial) * conv.tp.path_const
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    params = [radial, *conv.radial.parameters()]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b)
    x, sh = torch.randn(7, conv.irreps_node.dim), torch.randn(20, conv.irreps_sh.dim)
    src = torch.randint(0, 7, (20,))
    torch.testing.assert_close(conv.edge_features(x, src, radial, sh),
                               conv.tp(x[src], sh, conv.radial(radial)))


@pytest.mark.parametrize("out_act", [False, True])
def test_folded_layers_compute_the_e3nn_network(out_act):
    """folded_layers on e3nn FullyConnectedNets of three layers, with and without an output
    activation (its constant then comes back as the output scale)."""
    from e3nn.nn import FullyConnectedNet

    from graphattn.nn.equivariant.radial import apply_folded, folded_layers

    net = FullyConnectedNet([4, 9, 7, 5], torch.nn.functional.silu, variance_in=2.0,
                            variance_out=3.0, out_act=out_act)
    x = torch.randn(11, 4)
    layers, scale = folded_layers(net)
    h = apply_folded(layers, x)
    assert (scale != 1.0) == out_act
    torch.testing.assert_close(h * scale, net(x))


def test_message_gate_equals_gate_mlp_on_concatenated_pair():
    """The split first layer of the message gate computes e3nn's FullyConnectedNet on
    [s_i, s_j, R] (values and gradients): a change of e3nn's layer layout fails here."""
    from graphattn.nn.equivariant.conv import EquivariantAttentionConv

    conv = EquivariantAttentionConv(IRREPS, lmax=2, num_basis=6, heads=2)
    s = torch.randn(7, conv.n_scalars, requires_grad=True)
    radial = torch.randn(20, 6, requires_grad=True)
    src, dst = torch.randint(0, 7, (20,)), torch.randint(0, 7, (20,))
    got = conv.message_gate(s, src, dst, radial)
    want = torch.sigmoid(conv.msg_gate(torch.cat([s[dst], s[src], radial], -1)))
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    params = [s, radial, *conv.msg_gate.parameters()]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b)


def test_mlanet_interaction_without_atoms_or_edges(backend):
    """An interaction over no atoms, and one over atoms without edges (both attention paths
    over empty edge sets), gives the right shapes without error or NaN."""
    layer = MLANetInteraction(IRREPS, lmax=2, heads=2, key_dim=4)
    geometry = EdgeGeometry(4.0, 2, 8)
    ei = torch.empty(2, 0, dtype=torch.long)
    for n in (0, 3):
        x = torch.randn(n, IRREPS.dim)
        out = layer(x, ei, geometry(torch.randn(n, 3), ei))
        assert out.shape == (n, IRREPS.dim) and bool(torch.isfinite(out).all())
