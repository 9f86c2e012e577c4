"""DyMRL faithfulness: Poincaré ops, Givens maps, messages, relational MP, TF, decoder."""

from __future__ import annotations

import math

import geoopt
import pytest
import torch

from graphattn.nn.manifold import (
    DyMRL,
    FusionAttention,
    PoincareBall,
    RelationalGraph,
    RelationalLayer,
    atth_query,
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


def test_givens_reflection_closed_form() -> None:
    """A wrong mirror (another symmetric, norm-preserving involution) moves the known points."""
    th, ph = 0.7, -2.1  # one angle per 2-block; |g| per block is irrelevant (normalised)
    g = torch.tensor([[3 * math.cos(th), 3 * math.sin(th), 0.5 * math.cos(ph), 0.5 * math.sin(ph)]])
    e1 = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    e2 = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    # Ref = [[cos, sin], [sin, -cos]]: e1 -> (cos, sin), e2 -> (sin, -cos) in each block
    torch.testing.assert_close(givens_reflection(g, e1), torch.tensor(
        [[math.cos(th), math.sin(th), math.cos(ph), math.sin(ph)]]))
    torch.testing.assert_close(givens_reflection(g, e2), torch.tensor(
        [[math.sin(th), -math.cos(th), math.sin(ph), -math.cos(ph)]]))
    # the mirror is the line at angle theta / 2: it is fixed, its normal is negated
    axis = torch.tensor([[math.cos(th / 2), math.sin(th / 2), math.cos(ph / 2), math.sin(ph / 2)]])
    normal = torch.tensor([[-math.sin(th / 2), math.cos(th / 2),
                            -math.sin(ph / 2), math.cos(ph / 2)]])
    torch.testing.assert_close(givens_reflection(g, axis), axis)
    torch.testing.assert_close(givens_reflection(g, normal), -normal)
    # rotation of e2 by theta is (-sin, cos)
    torch.testing.assert_close(givens_rotation(g, e2), torch.tensor(
        [[-math.sin(th), math.cos(th), -math.sin(ph), math.cos(ph)]]))


def test_atth_query_hand_computed_d2() -> None:
    """Negated, unscaled or swapped candidate logits give other mixtures than these."""
    # row 0: Ref_0 (1, 0) = (1, 0), Rot_90 (1, 0) = (0, 1); logits (ln 3, 0) -> beta (3/4, 1/4)
    # row 1: Ref_60 (0, 2) = (sqrt3, -1), Rot_45 (0, 2) = (-sqrt2, sqrt2); logits (sqrt3, -sqrt2)
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    rot = torch.tensor([[0.0, 3.0], [1.0, 1.0]])
    ref = torch.tensor([[2.0, 0.0], [1.0, math.sqrt(3)]])
    ctx = torch.tensor([[math.sqrt(2) * math.log(3), 0.0], [math.sqrt(2), 0.0]])
    b1 = 1 / (1 + math.exp(-math.sqrt(2) - math.sqrt(3)))  # softmax weight of the reflection
    expected = torch.tensor([[0.75, 0.25],
                             [b1 * math.sqrt(3) - (1 - b1) * math.sqrt(2),
                              -b1 + (1 - b1) * math.sqrt(2)]])
    torch.testing.assert_close(atth_query(h, rot, ref, ctx), expected)


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


def _ref_fusion(tf: FusionAttention, e0, keys):
    """TF written out per head: softmax_j(<W_q e0, W_k z^j>_h / sqrt(d_k)) W_v z^j, then
    W_o, the E_0 residual and the W_2 ReLU(W_1 (u + E_0)) block. Returns (out, w [N, m, H])."""
    N, m, d = keys.shape
    H, dk = tf.heads, d // tf.heads
    q = e0 @ tf.w_q.weight.T
    k = keys @ tf.w_k.weight.T
    v = keys @ tf.w_v.weight.T
    a = torch.zeros(N, d)
    w = torch.zeros(N, m, H)
    for n in range(N):
        for hd in range(H):
            cols = slice(hd * dk, (hd + 1) * dk)
            logits = torch.stack([(q[n, cols] * k[n, j, cols]).sum() for j in range(m)])
            logits = logits / math.sqrt(dk)
            ex = torch.exp(logits - logits.max())
            w[n, :, hd] = ex / ex.sum()
            a[n, cols] = (w[n, :, hd, None] * v[n, :, cols]).sum(0)
    u = a @ tf.w_o.weight.T + e0
    hidden = torch.relu((u + e0) @ tf.w_1.weight.T + tf.w_1.bias)
    return hidden @ tf.w_2.weight.T + tf.w_2.bias, w


def test_fusion_attention_matches_explicit_per_head_softmax(backend) -> None:
    """Uniform, unscaled or mis-headed TF scores give other weights and outputs than these."""
    torch.manual_seed(2)
    tf = FusionAttention(6, heads=2).double()
    e0 = _points(5, 6, 1.0, 40)
    keys = _points(15, 6, 2.0, 41).view(5, 3, 6)
    out, w = tf(e0, keys, return_weights=True)
    out_ref, w_ref = _ref_fusion(tf, e0, keys)
    assert (w_ref - 1 / 3).abs().max() > 0.1  # the check below is not the uniform softmax
    torch.testing.assert_close(w, w_ref)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(tf(e0, keys[:, [2, 0, 1]]), out)  # no positional encoding
    out1, w1 = tf(e0, keys[:, :1], return_weights=True)
    torch.testing.assert_close(w1, torch.ones_like(w1))
    torch.testing.assert_close(out1, _ref_fusion(tf, e0, keys[:, :1])[0])


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


def _ref_phi(m: DyMRL, emb, s, r):
    """phi(s, r, o) = -d_c(AttH_r(e_s), exp_0(e_o))^2 + b_s + b_o for all o, from geoopt and
    the AttH equations (Rot/Ref with the two halves of rel_diag, translation = rel[:, :d])."""
    d = m.dim
    ball = geoopt.PoincareBall(c=float(m.ball.c.detach()))
    y = ball.expmap0(emb)
    rows = []
    for si, ri in zip(s.tolist(), r.tolist()):
        h = emb[si]
        rot_h, ref_h = torch.empty(d), torch.empty(d)
        for k in range(0, d, 2):
            cr, sr = m.rel_diag[ri, k:k + 2] / m.rel_diag[ri, k:k + 2].norm()
            cf, sf = m.rel_diag[ri, d + k:d + k + 2] / m.rel_diag[ri, d + k:d + k + 2].norm()
            x0, x1 = h[k], h[k + 1]
            rot_h[k], rot_h[k + 1] = cr * x0 - sr * x1, sr * x0 + cr * x1  # [[c, -s], [s, c]]
            ref_h[k], ref_h[k + 1] = cf * x0 + sf * x1, sf * x0 - cf * x1  # [[c, s], [s, -c]]
        logits = torch.stack([m.context[ri] @ ref_h, m.context[ri] @ rot_h]) / math.sqrt(d)
        beta = torch.exp(logits) / torch.exp(logits).sum()
        q = beta[0] * ref_h + beta[1] * rot_h
        x = ball.projx(ball.mobius_add(ball.expmap0(q), ball.expmap0(m.rel[ri, :d])))
        rows.append(-ball.dist(x.unsqueeze(0), y).square() + m.bias_s[si] + m.bias_o)
    return torch.stack(rows)


def _decoder_model():
    m, gs, mods = _tiny_model(words=False)
    with torch.no_grad():  # non-trivial curvature, biases and gates
        m.ball.ball.isp_c.fill_(math.log(math.expm1(0.6)))
        m.bias_s.copy_(_points(8, 1, 1.0, 70).squeeze(1))
        m.bias_o.copy_(_points(8, 1, 1.0, 71).squeeze(1))
    return m, gs, mods


def test_score_gate_at_initialisation_is_the_mean() -> None:
    """A wrong gate or decoder gives another score than the mean of the two explicit phis."""
    m, gs, mods = _decoder_model()
    s, r = torch.tensor([0, 3, 5]), torch.tensor([0, 4, 2])
    z = m.encode(gs, mods)
    torch.testing.assert_close(m.gate(s, r), torch.full((3,), 0.5))
    with torch.no_grad():
        expected = 0.5 * (_ref_phi(m, z, s, r) + _ref_phi(m, m.entity, s, r))
    torch.testing.assert_close(m.score(z, s, r), expected)
    with pytest.raises(ValueError, match="relation ids"):
        m.score(z, s, torch.tensor([0, 6, 1]))


def test_decoder_matches_explicit_geoopt_distance() -> None:
    """A score that rises with distance, drops a bias or mixes the gates wrongly fails here."""
    m, _, _ = _decoder_model()
    assert abs(float(m.ball.c.detach()) - 0.6) < 1e-12
    s, r = torch.tensor([0, 3, 5, 1, 7]), torch.tensor([0, 4, 2, 1, 5])
    z, emb = _points(8, 4, 0.4, 72), _points(8, 4, 0.4, 73)
    with torch.no_grad():
        m.entity.copy_(emb)
        m.gate_entity.copy_(_points(8, 1, 2.0, 74).squeeze(1))
        m.gate_relation.copy_(_points(6, 1, 2.0, 75).squeeze(1))
        phi_z, phi_e = _ref_phi(m, z, s, r), _ref_phi(m, emb, s, r)
        w = torch.maximum(1 / (1 + torch.exp(-m.gate_entity[s])),
                          1 / (1 + torch.exp(-m.gate_relation[r]))).unsqueeze(1)
        torch.testing.assert_close(m._phi(z, s, r), phi_z)
        torch.testing.assert_close(m._phi(emb, s, r), phi_e)
        torch.testing.assert_close(m.score(z, s, r), w * phi_z + (1 - w) * phi_e)
        assert (w - 0.5).abs().min() > 0.01  # gates away from their initial 1/2


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
    with torch.no_grad():
        ref = 0.5 * (_ref_phi(m, z, s, r) + _ref_phi(m, m.entity, s, r))
    torch.testing.assert_close(out[1][0], ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(out[1][1], out[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dymrl_bad_arguments_and_modalities_raise_named_errors() -> None:
    """Sizes of the model, query ids of another dtype and modality features that are unknown,
    missing, of another shape or dtype raise errors naming them (a KeyError, a shape error of
    a matmul or a GRU, a ZeroDivisionError or nothing at all before); an empty query batch
    scores nothing."""
    for kw, msg in ((dict(heads=0), "heads must be an int >= 1, got 0"),
                    (dict(dim=0), "dim must be an int >= 2, got 0"),
                    (dict(layers=-1), "layers must be an int >= 0, got -1")):
        with pytest.raises(ValueError, match=msg):
            DyMRL(8, 3, **{"dim": 4, **kw})
    with pytest.raises(ValueError, match="num_entities must be an int >= 1, got 0"):
        DyMRL(0, 3, dim=4)
    with pytest.raises(ValueError, match="num_relations must be an int >= 1, got 0"):
        DyMRL(8, 0, dim=4)
    m, gs, mods = _tiny_model()
    s, r = torch.tensor([0, 1]), torch.tensor([0, 1])
    assert m(gs, s[:0], r[:0], modalities=mods).shape == (0, 8)
    torch.testing.assert_close(m(gs, s.int(), r.int(), modalities=mods),
                               m(gs, s, r, modalities=mods))
    with pytest.raises(TypeError, match="s must be an integer"):
        m(gs, s.float(), r, modalities=mods)
    exact = r"exactly the modalities the model was built with \['text'\]"
    with pytest.raises(ValueError, match=exact + r", got \[\]"):
        m(gs, s, r)
    with pytest.raises(ValueError, match=exact + r", got \['image', 'text'\]"):
        m(gs, s, r, modalities={**mods, "image": mods["text"]})
    with pytest.raises(ValueError, match=r"modality 'text' must be a \[8, 5\] feature matrix"):
        m(gs, s, r, modalities={"text": mods["text"][:, :4]})
    with pytest.raises(ValueError, match=r"modality 'text' must be a \[8, 5\] feature matrix"):
        m(gs, s, r, modalities={"text": mods["text"][:7]})
    with pytest.raises(TypeError, match="modality 'text' must have the dtype of the model"):
        m(gs, s, r, modalities={"text": mods["text"].float()})


def test_dymrl_refuses_ids_and_tables_it_would_misread() -> None:
    """A negative subject id (read from the back), a snapshot built for another number of
    relations (its inverse ids would land on other relations) and a relation table of another
    width (broadcast over the features) raise errors naming them."""
    m, gs, mods = _tiny_model()
    r = torch.tensor([0])
    for bad in (-1, 8):
        with pytest.raises(ValueError, match=r"subject ids must be in \[0, 8\)"):
            m(gs, torch.tensor([bad]), r, modalities=mods)
    other = RelationalGraph.from_triples(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]),
                                         8, 1)
    with pytest.raises(ValueError, match="built for 1 relations, the model has 3"):
        m([other], torch.tensor([0]), r, modalities=mods)
    with pytest.raises(ValueError, match="same num_relations"):
        RelationalGraph.union([gs[0], other])
    layer = RelationalLayer("euclidean", 6, 4)
    with pytest.raises(ValueError, match=r"relation table 0 must be \[num relation ids, d=4\]"):
        layer(_points(6, 4, 1.0, 20), _graph(), _points(6, 1, 1.0, 21))


def test_curvature_and_init_scale_must_be_finite() -> None:
    """NaN / inf passed ``c <= 0`` and gave all-NaN scores; NaN init_scale NaN tables."""
    for c in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match=r"c must be a finite number > 0, got"):
            PoincareBall(c)
        with pytest.raises(ValueError, match=r"curvature must be a finite number > 0, got"):
            DyMRL(4, 2, dim=4, curvature=c)
    for scale in (float("nan"), float("inf"), -1e-3):
        with pytest.raises(ValueError, match=r"init_scale must be a finite number >= 0, got"):
            DyMRL(4, 2, dim=4, init_scale=scale)
    with pytest.raises(TypeError, match="c must be a real number, got bool"):
        PoincareBall(True)
    assert float(PoincareBall(2).c.detach()) == pytest.approx(2.0)


def test_score_checks_z() -> None:
    """z of another dtype was scored in it (float) or failed inside geoopt's TorchScript
    (int); z with another row count failed with a broadcasting error."""
    m, gs, mods = _tiny_model(words=False)
    z = m.encode(gs, mods)
    s, r = torch.tensor([0, 3]), torch.tensor([1, 5])
    assert m.score(z, s, r).shape == (2, 8)
    for bad in (z.float(), z.long()):
        with pytest.raises(TypeError, match="z must have the dtype of the module's parameters"):
            m.score(bad, s, r)
    for bad in (torch.cat([z, z]), z[:, :2]):
        with pytest.raises(ValueError, match=r"z must be \[num_entities, dim\] = \[8, 4\]"):
            m.score(bad, s, r)


def test_relabel_needs_a_permutation() -> None:
    g = RelationalGraph.from_triples(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), 3, 1)
    with pytest.raises(ValueError, match=r"perm must be a permutation of 0..2 .* \[0, 0, 0\]"):
        g.relabel(torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match=r"perm must be a permutation of 0..2"):
        g.relabel(torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match=r"perm must be \[num_nodes\] = \[3\], got \[2\]"):
        g.relabel(torch.tensor([1, 0]))
    with pytest.raises(TypeError, match="perm must be an int64 tensor"):
        g.relabel(torch.tensor([2.0, 0.0, 1.0]))
    r = g.relabel(torch.tensor([2, 0, 1]))
    assert r.src.tolist() == [2, 0] and r.dst.tolist() == [0, 2]
    assert r.has_in.tolist() == [True, False, True]


def test_relational_layer_checks_dtypes_and_tables() -> None:
    """h of another dtype came out in it (or mixed for integers); a relation table with too
    few rows or the wrong number of tables failed with an IndexError / a TypeError from
    translation_message(); a union of no graphs with an IndexError."""
    g, layer = _graph(), RelationalLayer("euclidean", 6, 4)
    h, rel = _points(6, 4, 1.0, 20), _points(6, 4, 1.0, 21)
    for bad in (h.float(), torch.ones(6, 4, dtype=torch.long)):
        with pytest.raises(TypeError, match="h must have the dtype of the module's parameters"):
            layer(bad, g, rel)
    with pytest.raises(TypeError, match=r"relation table 0 \(rel\) must have the dtype"):
        layer(h, g, rel.float())
    with pytest.raises(ValueError, match=r"relation table 0 \(rel\) has 4 rows, but the graph "
                                         r"uses relation id 5"):
        layer(h, g, rel[:4])
    with pytest.raises(TypeError, match=r"the euclidean layer takes 1 relation table\(s\) "
                                        r"\(rel\), got 0"):
        layer(h, g)
    hyp = RelationalLayer("hyperbolic", 6, 4, PoincareBall(1.0).double())
    with pytest.raises(TypeError, match=r"takes 4 relation table\(s\) \(rot, ref, context, "
                                        r"trans\), got 1"):
        hyp(h, g, rel)
    with pytest.raises(ValueError, match="graphs must hold at least one RelationalGraph"):
        RelationalGraph.union([])


def test_dymrl_word_edges_and_fusion_attention_named_errors() -> None:
    we = dict(num_words=1, num_static_relations=1)
    with pytest.raises(ValueError, match=r"word_edges must be \[K, 3\] .* got \[2\]"):
        DyMRL(4, 2, dim=4, word_edges=torch.tensor([0, 0]), **we)
    with pytest.raises(TypeError, match="word_edges must be an int64 tensor"):
        DyMRL(4, 2, dim=4, word_edges=torch.zeros(1, 3), **we)
    with pytest.raises(ValueError, match=r"word_edges\[:, 2\] holds word ids in \[5, 5\], "
                                         r"outside \[0, 1\)"):
        DyMRL(4, 2, dim=4, word_edges=torch.tensor([[0, 0, 5]]), **we)
    with pytest.raises(ValueError, match=r"word_edges\[:, 0\] holds entity ids"):
        DyMRL(4, 2, dim=4, word_edges=torch.tensor([[4, 0, 0]]), **we)
    with pytest.raises(ValueError, match=r"word_edges\[:, 1\] holds static relation ids"):
        DyMRL(4, 2, dim=4, word_edges=torch.tensor([[0, 1, 0]]), **we)
    with pytest.raises(ValueError, match="num_words must be an int >= 1, got 0"):
        DyMRL(4, 2, dim=4, word_edges=torch.tensor([[0, 0, 0]]), num_static_relations=1)
    with pytest.raises(ValueError, match="heads must be an int >= 1, got 0"):
        FusionAttention(4, 0)
    with pytest.raises(ValueError, match="heads must be an int >= 1, got True"):
        FusionAttention(4, True)
    tf = FusionAttention(4, 2)
    e0 = _points(3, 4, 1.0, 70)
    with pytest.raises(TypeError, match="keys must have the dtype of the module's parameters"):
        tf(e0, torch.zeros(3, 2, 4, dtype=torch.float32))
    with pytest.raises(TypeError, match="e0 must have the dtype of the module's parameters"):
        tf(e0.float(), torch.zeros(3, 2, 4))
    assert tf(e0, torch.zeros(3, 2, 4)).shape == (3, 4)


def test_points_on_or_outside_the_ball_are_projected_everywhere() -> None:
    """dist, logmap0 and sqdist_to_all gave finite numbers of no meaning for c|x|^2 >= 1, and
    dist^2 and sqdist_to_all disagreed ~8x at the boundary; all three now project first."""
    for c in (1.0, 2.0):
        ball = PoincareBall(c).double()
        r = 1 / math.sqrt(c)
        x = torch.tensor([[0.9, 0.9], [r, 0.0], [0.0, -3.0]]) * r  # outside, boundary, outside
        y = torch.tensor([[0.1, 0.0], [2 * r, 0.0]])
        px, py = ball.project(x), ball.project(y)
        assert (c * px.square().sum(-1) < 1).all()
        d2 = sqdist_to_all(ball, x, y)
        assert torch.isfinite(d2).all()
        torch.testing.assert_close(d2, sqdist_to_all(ball, px, py))
        # equal to dist^2 below dist's artanh clamp (|-x (+) y| <= 1 - 1e-5), boundary included
        d = ball.dist(x.unsqueeze(1), y.unsqueeze(0))
        below = d < 2 * math.atanh(1 - 1e-5) / math.sqrt(c) - 1e-6
        assert below[:2, 0].all()  # the audit's cases: outside / on the boundary vs (0.1, 0)
        torch.testing.assert_close(d2[below], d[below].square())
        torch.testing.assert_close(ball.dist(x[:1], y[:1]), ball.dist(px[:1], py[:1]))
        torch.testing.assert_close(ball.logmap0(x), ball.logmap0(px))
        inside = _points(4, 2, 0.2, 71)
        torch.testing.assert_close(ball.logmap0(inside), geoopt.PoincareBall(c=c).logmap0(inside))


def test_points_strictly_inside_are_used_as_they_are() -> None:
    """Only points on or outside the boundary are moved: one in geoopt's projection shell
    (float32: beyond radius (1 - 4e-3) / sqrt(c)) keeps its distance and its gradient."""
    ball = PoincareBall(1.0)
    x = torch.tensor([[0.999, 0.0]], requires_grad=True)
    y = torch.tensor([[0.0, 0.2]])
    assert torch.equal(ball.inside(x), x)
    d = ball.dist(x, y)
    sc = 1.0  # sqrt(c)
    want = 2 / sc * torch.atanh(sc * geoopt.PoincareBall(c=1.0).mobius_add(-x, y).norm(dim=-1))
    torch.testing.assert_close(d, want)
    (g,) = torch.autograd.grad(d.sum(), x)
    assert float(g[0, 0]) > 100  # moving it inward changes the distance (it was ~0)
    torch.testing.assert_close(sqdist_to_all(ball, x, y), d.square().view(1, 1))


def test_numpy_sizes_and_curvatures_are_accepted() -> None:
    import numpy as np

    assert float(PoincareBall(np.float32(1.0)).c.detach()) == 1.0
    assert FusionAttention(np.int64(8), np.int64(2)).heads == 2


def test_givens_zero_pair_keeps_the_norm() -> None:
    """A (0, 0) parameter pair mapped its block to the zero vector."""
    g = torch.tensor([[0.0, 0.0, 3.0, 4.0]], requires_grad=True)
    x = torch.tensor([[3.0, 4.0, 1.0, 2.0]], requires_grad=True)
    rot, ref = givens_rotation(g, x), givens_reflection(g, x)
    torch.testing.assert_close(rot[0, :2], x[0, :2])  # identity on the zero-pair block
    torch.testing.assert_close(ref[0, :2], torch.tensor([3.0, -4.0]))  # first-axis mirror
    torch.testing.assert_close(rot.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(ref.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(givens_reflection(g, ref), x)  # still an involution
    gg, gx = torch.autograd.grad((rot.square() + ref).sum(), (g, x))
    assert torch.isfinite(gg).all() and torch.isfinite(gx).all()
    assert gg[0, :2].abs().sum() == 0
    assert torch.autograd.gradcheck(lambda g: givens_rotation(g, x.detach()),
                                    (torch.tensor([[0.3, -0.2, 1.0, 0.5]], requires_grad=True),))
