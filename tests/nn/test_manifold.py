"""DyMRL faithfulness: Poincaré ops, Givens maps, messages, relational MP, TF, decoder."""

from __future__ import annotations

import geoopt
import pytest
import torch

from graphattn.nn.manifold import (
    DyMRL,
    FusionAttention,
    PoincareBall,
    RelationalGraph,
    RelationalLayer,
    complex_message,
    givens_reflection,
    givens_rotation,
    sqdist_to_all,
)

pytestmark = pytest.mark.usefixtures("float64")


def _points(n=6, d=4, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_poincare_matches_geoopt_away_from_boundary(c: float) -> None:
    ball = PoincareBall(c).double()
    ref = geoopt.PoincareBall(c=c)
    u, v = _points(seed=1), _points(seed=2)
    x, y = ball.expmap0(u), ball.expmap0(v)
    torch.testing.assert_close(x, ref.expmap0(u))
    torch.testing.assert_close(ball.logmap0(x), u, atol=1e-10, rtol=1e-8)  # inverse
    torch.testing.assert_close(ball.logmap0(x), ref.logmap0(x))
    torch.testing.assert_close(ball.mobius_add(x, torch.zeros_like(x)), x)  # identity
    torch.testing.assert_close(ball.mobius_add(x, y), ref.mobius_add(x, y))
    torch.testing.assert_close(ball.dist(x, y), ref.dist(x, y))
    torch.testing.assert_close(ball.dist(x, y), ball.dist(y, x))  # symmetric
    # all-pairs decoder distance equals the pairwise one
    d2 = sqdist_to_all(ball, x, y)
    torch.testing.assert_close(d2, ref.dist(x.unsqueeze(1), y.unsqueeze(0)).square())


def test_small_curvature_limit() -> None:
    ball = PoincareBall(1e-7).double()
    x, y = _points(seed=3), _points(seed=4)
    torch.testing.assert_close(ball.mobius_add(x, y, project=False), x + y, atol=1e-6, rtol=0)
    torch.testing.assert_close(ball.dist(x, y), 2 * (x - y).norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sqdist_to_all(ball, x, y),
                               4 * torch.cdist(x, y).square(), atol=1e-5, rtol=1e-5)


def test_finite_gradients_near_boundary_and_tiny_curvature() -> None:
    for c in (1.0, 1e-6):
        ball = PoincareBall(c).double()
        u = (_points(seed=5) * 50).requires_grad_()  # tanh saturates: points at the boundary
        x = ball.expmap0(u)
        y = ball.expmap0(_points(seed=6) * 50)
        out = ball.logmap0(x).sum() + ball.dist(x, y).sum() + sqdist_to_all(ball, x, y).sum()
        (gu,) = torch.autograd.grad(out, u)
        assert torch.isfinite(out) and torch.isfinite(gu).all()


def test_givens_maps() -> None:
    g, x = _points(5, 6, 1.0, 7), _points(5, 6, 1.0, 8)
    torch.testing.assert_close(givens_rotation(g, x).norm(dim=-1), x.norm(dim=-1))
    ref = givens_reflection(g, x)
    torch.testing.assert_close(ref.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(givens_reflection(g, ref), x)  # involution
    # a rotation by theta of (1, 0) is (cos, sin)
    theta = torch.tensor([0.7])
    gg = torch.stack([torch.cos(theta), torch.sin(theta)], -1) * 3.0
    torch.testing.assert_close(givens_rotation(gg, torch.tensor([[1.0, 0.0]])),
                               torch.stack([torch.cos(theta), torch.sin(theta)], -1))
    with pytest.raises(ValueError, match="even last dimension"):
        givens_rotation(torch.ones(3), torch.ones(3))


def test_complex_message_is_complex_product() -> None:
    h, hi, rr, ri = (_points(4, 5, 1.0, s) for s in range(10, 14))
    expected = (torch.complex(h, hi) * torch.complex(rr, ri)).real
    torch.testing.assert_close(complex_message(h, hi, rr, ri), expected)
    torch.testing.assert_close(complex_message(h, torch.zeros_like(h), rr, ri), h * rr)  # DistMult


def _graph(N=6, R=3):
    s = torch.tensor([0, 1, 2, 2, 3])
    r = torch.tensor([0, 1, 2, 0, 1])
    o = torch.tensor([1, 2, 0, 3, 1])
    return RelationalGraph.from_triples(s, r, o, N, R)


def test_relational_mean_hand_built() -> None:
    g = _graph()
    h = _points(6, 4, 1.0, 20)
    rel = _points(6, 4, 1.0, 21)
    layer = RelationalLayer("euclidean", 6, 4)
    out = layer(h, g, rel)
    # node 1 receives (0 -r0-> 1), (3 -r1-> 1) and the inverse of (1 -r1-> 2): (2 -r1+3-> 1)
    expected = ((h[0] + rel[0]) + (h[3] + rel[1]) + (h[2] + rel[4])) / 3
    torch.testing.assert_close(out[1], expected)
    # nodes 4 and 5 have no edges: they keep their vectors
    torch.testing.assert_close(out[4:], h[4:])


@pytest.mark.parametrize("kind", RelationalLayer.KINDS)
def test_relational_layer_equivariant_to_relabelling(kind: str) -> None:
    torch.manual_seed(0)
    N, d = 6, 4
    g = _graph(N)
    ball = PoincareBall().double()
    layer = RelationalLayer(kind, N, d, ball).double()
    torch.nn.init.normal_(layer.bias)
    h = _points(N, d, 0.5, 22)
    rels = [_points(6, d, 0.5, 23 + i) for i in range({"euclidean": 1, "complex": 2,
                                                        "hyperbolic": 4}[kind])]
    out = layer(h, g, *rels)
    perm = torch.randperm(N)
    inv = torch.argsort(perm)
    if layer.imag is not None:  # the per-entity imaginary table moves with the entities
        layer.imag.data = layer.imag.data[inv]
    out_p = layer(h[inv], g.relabel(perm), *rels)
    torch.testing.assert_close(out_p, out[inv])


def test_union_of_snapshots_equals_separate_runs() -> None:
    torch.manual_seed(1)
    N, d = 6, 4
    g1 = _graph(N)
    g2 = RelationalGraph.from_triples(torch.tensor([4, 5]), torch.tensor([2, 0]),
                                      torch.tensor([5, 0]), N, 3)
    layer = RelationalLayer("complex", N, d).double()
    h = _points(N, d, 0.5, 30)
    rr, ri = _points(6, d, 0.5, 31), _points(6, d, 0.5, 32)
    u = RelationalGraph.union([g1, g2])
    both = layer(torch.cat([h, h]), u, rr, ri)
    torch.testing.assert_close(both[:N], layer(h, g1, rr, ri))
    torch.testing.assert_close(both[N:], layer(h, g2, rr, ri))
    cg, nodes = u.compact()
    torch.testing.assert_close(layer(torch.cat([h, h])[nodes], cg, rr, ri), both[nodes])


def test_fusion_attention_order_invariant_and_single_key() -> None:
    torch.manual_seed(2)
    tf = FusionAttention(6, heads=2).double()
    e0 = _points(5, 6, 1.0, 40)
    keys = _points(15, 6, 1.0, 41).view(5, 3, 6)
    out = tf(e0, keys)
    torch.testing.assert_close(tf(e0, keys[:, [2, 0, 1]]), out)
    out1, w = tf(e0, keys[:, :1], return_weights=True)
    torch.testing.assert_close(w, torch.ones_like(w))
    # single key: the attention output is W_o W_v z
    z = keys[:, 0]
    u = tf.w_o(tf.w_v(z)) + e0
    torch.testing.assert_close(out1, tf.w_2(torch.relu(tf.w_1(u + e0))))


def _tiny_model(seed=0, words=True):
    torch.manual_seed(seed)
    N, R = 8, 3
    we = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 0, 1], [5, 1, 2]]) if words else None
    m = DyMRL(N, R, dim=4, word_edges=we, num_words=3, num_static_relations=2,
              modality_dims={"text": 5}, init_scale=0.3).double()
    gs = [RelationalGraph.from_triples(torch.tensor(s), torch.tensor(r), torch.tensor(o), N, R)
          for s, r, o in (([0, 1], [0, 1], [1, 2]), ([2, 3, 3], [2, 0, 1], [4, 0, 5]),
                          ([6], [1], [7]))]
    mods = {"text": _points(N, 5, 1.0, 50)}
    return m, gs, mods


def test_encode_shortcut_equals_per_snapshot_reference() -> None:
    m, gs, mods = _tiny_model()
    e0 = m.entity
    h_static = m.static_entities()
    modal = m.gru(e0, e0, mods)[1:]
    ms = []
    for g in gs:  # the released code's loop: full branches and TF per snapshot
        s = m.tf(e0, torch.stack(m.branches(g, h_static, e0), 1))
        ms.append(m.tf(e0, torch.stack([m.gru.gru(s, e0), *modal], 1)))
    z_ref = m.tf(e0, torch.stack(ms, 1))
    torch.testing.assert_close(m.encode(gs, mods), z_ref)
    # TF has no positional encoding: the history order does not matter
    torch.testing.assert_close(m.encode(gs[::-1], mods), z_ref)


def test_score_gate_at_initialisation_is_the_mean() -> None:
    m, gs, mods = _tiny_model(words=False)
    s, r = torch.tensor([0, 3, 5]), torch.tensor([0, 4, 2])
    z = m.encode(gs, mods)
    torch.testing.assert_close(m.gate(s, r), torch.full((3,), 0.5))
    expected = 0.5 * (m._phi(z, s, r) + m._phi(m.entity, s, r))
    torch.testing.assert_close(m.score(z, s, r), expected)
    with pytest.raises(ValueError, match="relation ids"):
        m.score(z, s, torch.tensor([0, 6, 1]))


def test_euclidean_and_complex_messages_read_a_detached_relation_table() -> None:
    m, gs, mods = _tiny_model()
    z = m.encode(gs, mods)
    assert torch.autograd.grad(z.sum(), m.rel, allow_unused=True)[0] is None
    (g,) = torch.autograd.grad(m.score(z, torch.tensor([0]), torch.tensor([1])).sum(), m.rel)
    assert g.abs().sum() > 0  # the decoder trains it


def test_decoder_gradcheck_float64() -> None:
    m, gs, mods = _tiny_model(words=False)
    x = (_points(3, 4, 0.4, 60)).requires_grad_()
    y = (_points(5, 4, 0.4, 61)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: sqdist_to_all(m.ball, x, y), (x, y))
    emb = (_points(8, 4, 0.4, 62)).requires_grad_()
    s, r = torch.tensor([0, 3]), torch.tensor([1, 5])
    assert torch.autograd.gradcheck(lambda e: m._phi(e, s, r), (emb,))
    z = (_points(8, 4, 0.4, 63)).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: m.score(z, s, r), (z,))


def test_fused_decoder_equals_eager() -> None:
    m, gs, mods = _tiny_model(words=False)
    s, r = torch.tensor([0, 3, 5, 1]), torch.tensor([0, 4, 2, 1])
    z = m.encode(gs, mods).detach().requires_grad_()
    with torch.no_grad():
        m.bias_o.normal_()
        m.bias_s.normal_()
    out = []
    for fused in (False, True):
        m.fused_decoder = fused
        sc = m.score(z, s, r)
        wrt = (z, m.entity, m.bias_o, *m.ball.parameters())
        grads = torch.autograd.grad(sc.square().sum(), wrt)
        out.append((sc, grads))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(out[1][1], out[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
