"""UGID: loss properties from the spec, extraction vs the model's own attention, diagnostics."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from graphattn.nn.fairness import (
    ComputationalGraph,
    UGIDLoss,
    aligned_edit_distance,
    anchor_loss,
    attention_digraph,
    edge_invariance_loss,
    extract_graph,
    graph_edit_distance,
    is_isomorphic,
    logit_constraint_loss,
    node_invariance_loss,
    rank_heads,
    route,
    sensitive_positions,
    spectral_distance,
)


def _maps(B=2, L=2, H=3, T=6, causal=False, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, L, H, T, T, generator=g, dtype=dtype)
    if causal:
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1)


def _sens(B=2, T=6):
    S = torch.zeros(B, T, dtype=torch.bool)
    S[:, 1] = True
    S[1, 4] = True
    return S


@pytest.mark.parametrize("distance", ["kl", "l2"])
def test_edge_loss_zero_nonneg_symmetric(distance):
    a, b = _maps(seed=0), _maps(seed=1)
    S = _sens()
    assert edge_invariance_loss(a, a, S, distance=distance).abs() < 1e-12
    lab = edge_invariance_loss(a, b, S, distance=distance)
    assert lab > 0
    torch.testing.assert_close(lab, edge_invariance_loss(b, a, S, distance=distance))


@pytest.mark.parametrize("distance", ["cos", "l2"])
def test_node_loss_zero_nonneg_symmetric(distance):
    h, g = torch.randn(2, 3, 6, 8, dtype=torch.float64), torch.randn(2, 3, 6, 8,
                                                                      dtype=torch.float64)
    S = _sens()
    assert node_invariance_loss(h, h, S, distance=distance).abs() < 1e-12
    lhg = node_invariance_loss(h, g, S, distance=distance)
    assert lhg > 0
    torch.testing.assert_close(lhg, node_invariance_loss(g, h, S, distance=distance))


def test_relabelling_invariance():
    T = 6
    a, b = _maps(T=T, seed=2), _maps(T=T, seed=3)
    h, g = torch.randn(2, 3, T, 5, dtype=torch.float64), torch.randn(2, 3, T, 5,
                                                                      dtype=torch.float64)
    S = _sens(T=T)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[0, -1] = False
    P = torch.randperm(T, generator=torch.Generator().manual_seed(5))

    def perm_a(x):
        return x[..., P, :][..., :, P]

    for d in ("kl", "l2"):
        torch.testing.assert_close(edge_invariance_loss(a, b, S, mask, d),
                                   edge_invariance_loss(perm_a(a), perm_a(b), S[:, P],
                                                        mask[:, P], d))
    torch.testing.assert_close(node_invariance_loss(h, g, S, mask),
                               node_invariance_loss(h[..., P, :], g[..., P, :], S[:, P],
                                                    mask[:, P]))
    # relabelling only one of the two graphs is not a symmetry: the loss must see it
    assert not torch.allclose(edge_invariance_loss(a, b, S, mask),
                              edge_invariance_loss(perm_a(a), b, S[:, P], mask[:, P]))


def test_sensitive_positions_excluded_and_zero_gradient():
    a, b = _maps(seed=4), _maps(seed=5)
    S = _sens()
    a2 = a.clone()
    a2[0, :, :, 1, :] = torch.rand_like(a2[0, :, :, 1, :])  # a sensitive row
    a2[0, :, :, :, 1] *= 3.0  # a sensitive column (rows re-normalise without it)
    torch.testing.assert_close(edge_invariance_loss(a, b, S), edge_invariance_loss(a2, b, S))
    a = a.clone().requires_grad_()
    edge_invariance_loss(a, b, S).backward()
    assert a.grad[0, :, :, 1, :].abs().max() == 0 and a.grad[0, :, :, :, 1].abs().max() == 0
    assert a.grad[1, :, :, :, 4].abs().max() == 0
    assert a.grad[0, :, :, 2, 3].abs().max() > 0
    h = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 6, 4, dtype=torch.float64)
    node_invariance_loss(h, g, S).backward()
    assert h.grad[:, 1].abs().max() == 0 and h.grad[1, 4].abs().max() == 0
    assert h.grad[0, 4].abs().max() > 0


def test_causal_maps_and_all_masked_rows_finite():
    a, b = _maps(causal=True, seed=6), _maps(causal=True, seed=7)
    assert torch.all(a.triu(1) == 0)
    torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    S = torch.zeros(2, 6, dtype=torch.bool)
    S[:, 0] = True  # row 1 of a causal map sees only {0, 1}; row 0 only the sensitive {0}
    a = a.clone().requires_grad_()
    loss = edge_invariance_loss(a, b, S)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all()
    full = torch.ones(2, 6, dtype=torch.bool)  # every position sensitive: nothing to compare
    assert edge_invariance_loss(a, b, full) == 0


def test_logit_term_shift_invariance_and_value():
    torch.manual_seed(0)
    lg, lc = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)
    idx = torch.randint(0, 10, (4, 3))
    base = logit_constraint_loss(lg, lc, idx)
    shift = torch.randn(4, 1, dtype=torch.float64) * 50
    torch.testing.assert_close(base, logit_constraint_loss(lg + shift, lc - shift, idx))
    want = ((lg.log_softmax(-1).gather(1, idx) - lc.log_softmax(-1).gather(1, idx)) ** 2).mean()
    torch.testing.assert_close(base, want)
    assert logit_constraint_loss(lg, lg, idx) == 0
    with pytest.raises(ValueError, match="index"):
        logit_constraint_loss(lg, lc, idx + 10)


def test_anchor_zero_at_initialisation():
    torch.manual_seed(0)
    f0 = torch.nn.Linear(5, 7)
    f = copy.deepcopy(f0)
    x = torch.randn(3, 5)
    assert anchor_loss(f0(x), f(x)).abs() < 1e-7
    with torch.no_grad():
        f.weight.add_(0.5 * torch.randn_like(f.weight))
    assert anchor_loss(f0(x), f(x)) > 1e-3


def test_bad_inputs():
    a = _maps()
    with pytest.raises(ValueError, match="attn"):
        edge_invariance_loss(a, a[..., :5, :5])
    with pytest.raises(ValueError, match="sensitive"):
        edge_invariance_loss(a, a, torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn"):
        edge_invariance_loss(a.long(), a.long())
    with pytest.raises(ValueError, match="distance"):
        node_invariance_loss(a[:, 0, 0], a[:, 0, 0], distance="kl")


# ---- diagnostics ----------------------------------------------------------------------------
def test_diagnostics_identity_relabelling_and_difference():
    A = _maps(B=1, L=1, H=1, T=5, seed=8)[0, 0, 0]
    P = torch.tensor([3, 0, 4, 1, 2])
    PA = A[P][:, P]
    assert is_isomorphic(A, A) and aligned_edit_distance(A, A) == 0
    assert spectral_distance(A, A) == 0 and graph_edit_distance(A, A) == 0
    assert is_isomorphic(A, PA)
    assert spectral_distance(A, PA) < 1e-10
    assert graph_edit_distance(A, PA) == 0
    # a star (everyone reads token 0) vs a chain (everyone reads its predecessor), top-1
    star = torch.full((4, 4), 0.01)
    star[:, 0] = 1.0
    star[0, 1] = 1.0
    chain = torch.full((4, 4), 0.01)
    for i in range(4):
        chain[i, (i - 1) % 4] = 1.0
    assert not is_isomorphic(star, chain, top_k=1)
    # star edges {1->0, 0->1, 0->2, 0->3}; cycle {3->0, 0->1, 1->2, 2->3}: 3 + 3 differ
    assert aligned_edit_distance(star, chain, top_k=1) == 6
    assert 0 < graph_edit_distance(star, chain, top_k=1) <= 6
    g = attention_digraph(star, top_k=1)
    assert set(g.edges) == {(1, 0), (0, 1), (0, 2), (0, 3)}
    assert spectral_distance(star, chain) > 0


# ---- the real model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    from graphattn.pretrained import load_minilm

    return load_minilm()


def _pair_batch(tok, a: list[str], b: list[str]):
    ba = tok(a, padding=True, return_tensors="pt")
    bb = tok(b, padding=True, return_tensors="pt")
    assert ba["input_ids"].shape == bb["input_ids"].shape
    return ba, bb


def test_extraction_matches_model_attention_outputs(minilm):
    tok, model = minilm
    batch = tok(["Graph attention networks weigh the neighbours of every node.",
                 "She is a nurse."], padding=True, return_tensors="pt")
    captured = {}
    layer = 3
    attn_mod = model.encoder.layer[layer].attention.self
    hook = attn_mod.register_forward_hook(lambda m, i, o: captured.update(ctx=o[0]))
    with torch.no_grad():
        graph = extract_graph(model, batch)
    hook.remove()
    B, L, H, T, _ = graph.attention.shape
    assert (L, H) == (6, 12) and graph.hidden.shape == (B, 7, T, 384)
    # rows are stochastic over valid keys, padding columns get nothing
    torch.testing.assert_close(graph.attention.sum(-1), torch.ones_like(graph.attention.sum(-1)))
    assert (~graph.mask[1]).sum() > 0  # the short sentence is padded
    assert graph.attention[1][..., ~graph.mask[1]].abs().max() < 1e-6
    for b in range(B):
        data = graph.to_data(b, layer)
        n = data.num_nodes
        assert n == int(graph.mask[b].sum()) and data.edge_index.shape[1] == n * n
        with torch.no_grad():
            v = attn_mod.value(data.x).view(n, H, -1)
        ctx = route(data, v).reshape(n, -1)
        torch.testing.assert_close(ctx, captured["ctx"][b][graph.mask[b]], atol=1e-5,
                                   rtol=1e-4)
    top = graph.to_data(0, layer, top_k=2)
    assert top.edge_index.shape[1] == 2 * top.num_nodes


def test_ugid_on_counterfactual_pair_reduces_discrepancy(minilm):
    tok, model0 = minilm
    model = copy.deepcopy(model0).train()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.encoder.layer[-1].parameters():
        p.requires_grad_(True)
    model.eval()  # no dropout: a deterministic objective
    ba, bb = _pair_batch(tok, ["he is a nurse at the hospital."],
                         ["she is a nurse at the hospital."])
    ids = tok.convert_tokens_to_ids(["he", "she"])
    Sa = sensitive_positions(ba["input_ids"], ids)
    assert Sa.sum() == 1 and Sa[0, 1]
    loss_fn = UGIDLoss(lambda_log=0.0, lambda_anchor=0.0)
    with torch.no_grad():
        g = extract_graph(model, ba, Sa)
        # zero up to rounding (1 - cos(h, h) is a few ulp, whose sign depends on the CPU)
        assert 0 <= float(loss_fn(g, g, layers=[5])["total"]) < 1e-6
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(8):
        ga = extract_graph(model, ba, Sa)
        gb = extract_graph(model, bb, sensitive_positions(bb["input_ids"], ids))
        out = loss_fn(ga, gb, layers=[5])
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        history.append(float(out["total"].detach()))
    assert history[-1] < 0.5 * history[0]
    heads = rank_heads(ga, gb, k=4, layers=[4, 5])
    assert heads.shape == (2, 12) and heads.sum() == 4
    out = loss_fn(ga, gb, layers=[4, 5], heads=heads)
    assert torch.isfinite(out["total"])


def test_computational_graph_to_data_validation():
    g = ComputationalGraph(hidden=torch.zeros(1, 2, 3, 4), attention=torch.ones(1, 1, 2, 3, 3) / 3,
                           mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="layer"):
        g.to_data(0, 1)
    with pytest.raises(ValueError, match="top_k"):
        g.to_data(0, 0, top_k=0)


def test_edge_invariance_loss_hand_computed_values():
    """Three tokens, the last sensitive: rows 0 and 1 re-normalised over columns 0 and 1,
    (2/3, 1/3) vs (1/3, 2/3) and (1/4, 3/4) vs (1/2, 1/2); the symmetrised KL is half the sum of
    both KLs, (ln 2 / 3 + ln 3 / 8) / 2 over the two kept rows, the squared distance
    (2/9 + 1/8) / 2 (a sum instead of the mean, a KL without the 1/2, or the sensitive row or
    column kept, gives other numbers)."""
    attn = torch.tensor([[[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.9, 0.05, 0.05]]],
                        dtype=torch.float64)
    attn_cf = torch.tensor([[[0.25, 0.5, 0.25], [0.4, 0.4, 0.2], [0.05, 0.05, 0.9]]],
                           dtype=torch.float64)
    sens = torch.tensor([[False, False, True]])
    kl = edge_invariance_loss(attn, attn_cf, sens, distance="kl", eps=1e-15)
    l2 = edge_invariance_loss(attn, attn_cf, sens, distance="l2", eps=1e-15)
    assert abs(kl.item() - (math.log(2) / 3 + math.log(3) / 8) / 2) < 1e-12
    assert abs(l2.item() - (2 / 9 + 1 / 8) / 2) < 1e-12


def test_ugid_loss_refuses_layer_head_and_mask_arguments_it_would_misread():
    """A negative layer index (edge term from the back, node term from the front), an
    out-of-range one, an integer head tensor (read as indices, not a mask), a sensitive mask
    of one row for a batch of two (broadcast) and counterpart words of another shape raise
    errors naming the argument."""
    B, L, H, T, D = 2, 2, 2, 4, 3
    att = torch.softmax(torch.randn(B, L, H, T, T), -1)
    sens = torch.zeros(B, T, dtype=torch.bool)
    sens[:, 1] = True

    def graph(s=sens):
        return ComputationalGraph(hidden=torch.randn(B, L + 1, T, D), attention=att,
                                  mask=torch.ones(B, T, dtype=torch.bool), sensitive=s)

    loss = UGIDLoss()
    assert torch.isfinite(loss(graph(), graph(), layers=[1])["total"])
    for bad in ([-1], [2]):
        with pytest.raises(ValueError, match=r"'layers' must hold layer indices in \[0, 2\)"):
            loss(graph(), graph(), layers=bad)
    with pytest.raises(TypeError, match="'heads' must be a bool mask"):
        loss(graph(), graph(), heads=torch.ones(L, H, dtype=torch.long))
    with pytest.raises(ValueError, match=r"'graph_cf.sensitive' must be a \[B=2, T=4\]"):
        loss(graph(), graph(sens[:1]))
    lg = torch.randn(B, 10)
    with pytest.raises(ValueError, match="'index_cf' must have the shape of 'index'"):
        logit_constraint_loss(lg, lg, torch.zeros(B, 2, dtype=torch.long),
                              torch.zeros(B, 1, dtype=torch.long))


def test_ugid_refuses_head_counts_masks_logits_and_eps_it_would_misread():
    """rank_heads' k < 1 (topk's own error, or no head), its negative layers and a graph
    without sensitive positions; a valid-token mask of one row for a batch of two (broadcast
    in UGIDLoss); logits of more than two dims (gathered along the wrong dim, or the anchor's
    batch mean divided by B alone); a non-positive eps (0 / 0 for a fully excluded row): each
    raises an error naming the argument."""
    B, L, H, T, D = 2, 2, 2, 4, 3
    att = torch.softmax(torch.randn(B, L, H, T, T), -1)
    sens = torch.zeros(B, T, dtype=torch.bool)
    sens[:, 1] = True
    ones = torch.ones(B, T, dtype=torch.bool)

    def graph(s=sens, m=ones):
        return ComputationalGraph(hidden=torch.randn(B, L + 1, T, D), attention=att, mask=m,
                                  sensitive=s)

    assert rank_heads(graph(), graph(), k=2).sum() == 2
    assert rank_heads(graph(), graph(), k=99).all()  # more than there are: all of them
    for k in (-1, 0, 1.5):
        with pytest.raises(ValueError, match="'k' must be an int >= 1"):
            rank_heads(graph(), graph(), k=k)
    with pytest.raises(ValueError, match=r"'layers' must hold layer indices in \[0, 2\)"):
        rank_heads(graph(), graph(), k=1, layers=[-1])
    with pytest.raises(ValueError, match="'graph_cf.sensitive' must be a .* mark the sensitive"):
        rank_heads(graph(), graph(s=None), k=1)
    with pytest.raises(ValueError, match=r"'graph.mask' must be a \[B=2, T=4\] bool mask"):
        UGIDLoss()(graph(m=ones[:1]), graph())
    with pytest.raises(ValueError, match=r"'graph_cf.mask' must be a \[B=2, T=4\] bool mask"):
        rank_heads(graph(), graph(m=ones[:1]), k=1)
    lg3 = torch.randn(B, 3, 10)
    with pytest.raises(ValueError, match="'logits' must have at most 2 dims"):
        logit_constraint_loss(lg3, lg3, torch.zeros(B, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="'logits_ref' must have at most 2 dims"):
        anchor_loss(lg3, lg3)
    a = _maps()
    for eps in (0.0, -1e-8):
        with pytest.raises(ValueError, match="'eps' must be positive"):
            edge_invariance_loss(a, a, eps=eps)


# ---- input handling (audit) -----------------------------------------------------------------
def _graph_pair(B=2, L=2, H=2, T=3, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def one():
        sens = torch.zeros(B, T, dtype=torch.bool)
        sens[:, 0] = True
        return ComputationalGraph(torch.randn(B, L + 1, T, D, generator=g),
                                  torch.softmax(torch.randn(B, L, H, T, T, generator=g), -1),
                                  torch.ones(B, T, dtype=torch.bool), sens)

    return one(), one()


def test_layers_refuse_bool_float_and_empty():
    """layers=[0.9] was read as layer 0, [True] as layer 1, [] gave a silent total of 0 in
    UGIDLoss and a raw torch.stack error in rank_heads."""
    g, g2 = _graph_pair()
    loss = UGIDLoss()
    for bad in ([0.9], [True], [torch.tensor(1.0)]):
        with pytest.raises(TypeError, match="'layers' must hold int layer indices"):
            loss(g, g2, layers=bad)
        with pytest.raises(TypeError, match="'layers' must hold int layer indices"):
            rank_heads(g, g2, 1, bad)
    with pytest.raises(TypeError, match="'layers' must be a list of int"):
        loss(g, g2, layers=1)
    for f in (lambda: loss(g, g2, layers=[]), lambda: rank_heads(g, g2, 1, [])):
        with pytest.raises(ValueError, match="'layers' must select at least one layer"):
            f()
    # ints of other kinds still work and give the same value as a plain int
    torch.testing.assert_close(loss(g, g2, layers=[torch.tensor(1)])["total"],
                               loss(g, g2, layers=[1])["total"])


def test_logit_and_anchor_terms_finite_on_empty_and_masked_inputs():
    lg, lg2 = torch.randn(2, 10), torch.randn(2, 10)
    assert logit_constraint_loss(lg, lg2, torch.zeros(2, 0, dtype=torch.long)) == 0
    e = torch.zeros(0, 10, requires_grad=True)
    out = logit_constraint_loss(e, torch.zeros(0, 10), torch.zeros(0, 1, dtype=torch.long))
    out.backward()
    assert out == 0 and torch.isfinite(e.grad).all()
    assert anchor_loss(torch.zeros(0, 10), torch.zeros(0, 10)) == 0
    # the same masked (-inf) vocabulary entry in both models: KL is 0 (0 log 0 = 0), not NaN
    ref = torch.tensor([[0.0, 1.0, float("-inf")], [2.0, float("-inf"), 0.5]])
    cur = ref.clone().requires_grad_()
    kl = anchor_loss(ref, cur)
    kl.backward()
    assert kl == 0 and torch.isfinite(cur.grad).all()
    cur2 = (ref + torch.tensor([[0.3, -0.2, 0.0], [0.1, 0.0, 0.4]])).requires_grad_()
    kl2 = anchor_loss(ref, cur2)
    kl2.backward()
    p = ref.softmax(-1)
    want = torch.xlogy(p, p).sum() - (p * cur2.log_softmax(-1).nan_to_num(neginf=0.0)).sum()
    torch.testing.assert_close(kl2, want / 2)
    assert kl2 > 0 and torch.isfinite(cur2.grad).all()
    # unmasked logits: the value of F.kl_div's batchmean
    a, b = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    torch.testing.assert_close(anchor_loss(a, b), torch.nn.functional.kl_div(
        b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="batchmean"))
    # an empty batch no longer makes the UGID total NaN
    g, g2 = _graph_pair()
    out = UGIDLoss()(g, g2, logits=lg, logits_cf=lg2, index=torch.zeros(2, 0, dtype=torch.long))
    assert out["log"] == 0 and torch.isfinite(out["total"])


def test_masks_must_be_bool_or_01():
    """An int tensor of positions was read as a mask; a float mask of 0.3 was all-true."""
    A, A2 = _maps(B=2, L=1, H=2, T=4, seed=0)[:, 0], _maps(B=2, L=1, H=2, T=4, seed=1)[:, 0]
    h = torch.randn(2, 4, 3)
    pos = torch.tensor([[2, 3, 0, 0], [1, 0, 0, 0]])
    for f in (edge_invariance_loss, node_invariance_loss):
        x, y = (A, A2) if f is edge_invariance_loss else (h, h + 1)
        with pytest.raises(TypeError, match="'sensitive' must be a bool tensor, got torch.int64"):
            f(x, y, sensitive=pos)
        with pytest.raises(TypeError, match="'mask' must be a bool tensor or an integer tensor "
                                            "of 0/1 values, got torch.float32"):
            f(x, y, mask=torch.full((2, 4), 0.3))
        with pytest.raises(ValueError, match=r"'mask' must be .* holding \[2, 3\]"):
            f(x, y, mask=pos)
        m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # an attention_mask still works
        torch.testing.assert_close(f(x, y, mask=m), f(x, y, mask=m.bool()))
    g, g2 = _graph_pair()
    g2.sensitive = g2.sensitive.long()
    with pytest.raises(TypeError, match="'graph_cf.sensitive' must be a bool tensor"):
        UGIDLoss()(g, g2)


def test_node_loss_zero_vectors_and_empty_features():
    h = torch.zeros(1, 1, 3, 4, requires_grad=True)
    out = node_invariance_loss(h, h.detach().clone())
    out.backward()
    assert out == 0 and torch.isfinite(h.grad).all()
    tiny = torch.full((1, 3, 4), 1e-6)  # below the norm eps: still 0 for identical inputs
    assert node_invariance_loss(tiny, tiny.clone()) == 0
    # non-zero vectors: 1 - cos as before
    a, b = torch.randn(2, 5, 6, dtype=torch.float64), torch.randn(2, 5, 6, dtype=torch.float64)
    want = (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean()
    torch.testing.assert_close(node_invariance_loss(a, b), want)
    with pytest.raises(ValueError, match="'hidden' must have a non-empty feature dim D"):
        node_invariance_loss(torch.zeros(1, 1, 3, 0), torch.zeros(1, 1, 3, 0))


def test_ugid_refuses_partial_inputs_bad_config_and_short_hidden():
    g, g2 = _graph_pair()
    loss = UGIDLoss()
    idx = torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match=r"without \['logits'\]"):
        loss(g, g2, logits_cf=torch.randn(2, 5), index=idx)
    with pytest.raises(ValueError, match=r"without \['index'\]"):
        loss(g, g2, logits=torch.randn(2, 5), logits_cf=torch.randn(2, 5))
    with pytest.raises(ValueError, match="'anchor_ref' needs 'anchor'"):
        loss(g, g2, anchor_ref=torch.randn(2, 5))
    with pytest.raises(ValueError, match="'anchor' needs 'anchor_ref'"):
        loss(g, g2, anchor=torch.randn(2, 5))
    with pytest.raises(ValueError, match="'edge_distance' must be one of 'kl', 'l2'"):
        UGIDLoss(edge_distance="foo")
    with pytest.raises(ValueError, match="'node_distance' must be one of 'cos', 'l2'"):
        UGIDLoss(node_distance="kl")
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="'lambda_edge' must be a finite number >= 0"):
            UGIDLoss(lambda_edge=bad)
    with pytest.raises(TypeError, match="'lambda_anchor' must be a real number"):
        UGIDLoss(lambda_anchor="1")
    short = ComputationalGraph(g.hidden[:, :2], g.attention, g.mask, g.sensitive)
    with pytest.raises(ValueError, match=r"'graph.hidden' must be \[B=2, L\+1=3, T=3, D\]"):
        loss(short, g2)


def test_edge_loss_refuses_negative_maps_and_mixed_dtypes():
    A, A2 = _maps(B=2, L=1, H=1, T=4, seed=0)[:, 0, 0], _maps(B=2, L=1, H=1, T=4, seed=1)[:, 0, 0]
    with pytest.raises(ValueError, match="'attn' must be a non-negative attention map"):
        edge_invariance_loss(-A, A2)
    with pytest.raises(ValueError, match="'attn_cf' must be a non-negative attention map"):
        edge_invariance_loss(A, -A2)
    with pytest.raises(TypeError, match="'attn' and 'attn_cf' must have the same dtype"):
        edge_invariance_loss(A, A2.float())


def test_to_data_and_digraph_refuse_bool_and_float_arguments():
    cg = ComputationalGraph(torch.randn(2, 3, 3, 4), torch.softmax(torch.randn(2, 2, 2, 3, 3), -1),
                            torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="'b' must be an int, got True"):
        cg.to_data(True, 0)
    with pytest.raises(TypeError, match="'layer' must be an int, got 0.5"):
        cg.to_data(0, 0.5)
    with pytest.raises(TypeError, match="'top_k' must be an int, got True"):
        cg.to_data(0, 0, top_k=True)
    with pytest.raises(ValueError, match=r"'b' must be in \[0, 2\), got 2"):
        cg.to_data(2, 0)
    with pytest.raises(TypeError, match="'top_k' must be an int, got True"):
        attention_digraph(torch.rand(3, 3), top_k=True)
    with pytest.raises(ValueError, match="'top_k' must be >= 1, got 0"):
        attention_digraph(torch.rand(3, 3), top_k=0)


def test_loss_weights_as_tensors_or_numpy_numbers() -> None:
    import numpy as np

    loss = UGIDLoss(lambda_edge=torch.tensor(0.5), lambda_node=np.float32(2.0))
    assert (loss.lambda_edge, loss.lambda_node) == (0.5, 2.0)
    with pytest.raises(TypeError, match="'lambda_edge' must be a real number"):
        UGIDLoss(lambda_edge=np.True_)
