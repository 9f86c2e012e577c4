"""Property tests of the token-graph layers (TOKEN_PAPERS.md sections 1, 2, 4, 5, 17)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from graphattn import tokens
from graphattn.nn.tokens import (
    DifferentialAttention,
    FastMKAttention,
    ItemAwareAttention,
    ItemAwareBlock,
    MKAttention,
    NeuroGameAttention,
    causal_ema,
    causal_ema_loop,
)
from graphattn.nn.tokens.neurogame import (
    coalition_value,
    contraction_factor,
    exact_banzhaf,
    exact_gibbs_marginals,
    exact_shapley,
    mc_banzhaf,
    mc_interaction,
    mc_shapley,
    mean_field,
)
from graphattn.tokens import heavy_hitter, sink_window, token_attention


def _plain_causal(layer, x):
    B, T, D = x.shape
    H = layer.heads
    q, k, v = (w(x).view(B, T, H, D // H).transpose(1, 2) for w in (layer.w_q, layer.w_k,
                                                                     layer.w_v))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return layer.w_o(o.transpose(1, 2).reshape(B, T, D))


# ---- MKA / FastMKA ---------------------------------------------------------------------------

def test_causal_ema_vectorised_equals_loop() -> None:
    x = torch.randn(2, 150, 5, dtype=torch.float64)
    for beta in (0.0, 0.5, 0.9, 0.99):
        torch.testing.assert_close(causal_ema(x, beta, chunk=16), causal_ema_loop(x, beta))
    long = torch.randn(1, 5000, 2)
    assert torch.isfinite(causal_ema(long, 0.9)).all()  # no beta^-m overflow


@pytest.mark.parametrize("cls", [MKAttention, FastMKAttention])
def test_mka_reduces_to_causal_softmax(cls) -> None:
    torch.manual_seed(0)
    layer = cls(16, heads=4, beta=0.0)  # beta -> 0: session memory = local
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(layer(x), _plain_causal(layer, x), atol=1e-5, rtol=1e-5)
    layer = cls(16, heads=4, beta=0.9)
    with torch.no_grad():  # one-hot router on L1
        layer.router[-1].weight.zero_()
        layer.router[-1].bias.copy_(torch.tensor([1e4, -1e4]))
    torch.testing.assert_close(layer(x), _plain_causal(layer, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [MKAttention, FastMKAttention])
def test_mka_is_causal_and_router_is_simplex(cls) -> None:
    torch.manual_seed(1)
    layer = cls(16, heads=2, long_term=True)
    x = torch.randn(1, 10, 16)
    mem = torch.randn(3, 16)
    y, lam = layer(x, long_term=mem, return_router=True)
    torch.testing.assert_close(lam.sum(-1), torch.ones(1, 10))
    x2 = x.clone()
    x2[:, 6:] += torch.randn(1, 4, 16)
    torch.testing.assert_close(layer(x2, long_term=mem)[:, :6], y[:, :6])
    # any causal token graph: a window through the sparse core
    yw = layer(x, tokens.window(10, 3), long_term=mem)
    assert yw.shape == y.shape and not torch.allclose(yw, y)


# ---- IAM -------------------------------------------------------------------------------------

def test_iam_intra_layer_ignores_other_items() -> None:
    torch.manual_seed(2)
    item = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
    layer = ItemAwareAttention(8, heads=2, mode="intra")
    x = torch.randn(1, 8, 8)
    y = layer(x, item)
    x2 = x.clone()
    x2[0, item != 1] = torch.randn(int((item != 1).sum()), 8)
    torch.testing.assert_close(layer(x2, item)[0, item == 1], y[0, item == 1])


def test_iam_layers_sum_to_causal_on_the_partition() -> None:
    """Intra and inter edge sets partition the causal set; with one item the intra layer is
    causal attention and the inter layer attends to nothing (zero output)."""
    torch.manual_seed(3)
    x = torch.randn(1, 6, 8)
    one = torch.zeros(6, dtype=torch.long)
    intra = ItemAwareAttention(8, 2, "intra")
    caus = ItemAwareAttention(8, 2, "causal")
    caus.load_state_dict(intra.state_dict())
    torch.testing.assert_close(intra(x, one), caus(x, one))
    inter = ItemAwareAttention(8, 2, "inter")
    assert (inter(x, one) == 0).all()
    block = ItemAwareBlock(8, 2, ("intra", "inter", "causal"))
    out = block(torch.randn(2, 6, 8), torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 3]]))
    assert out.shape == (2, 6, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="mode must be"):
        ItemAwareAttention(8, 2, "sideways")


# ---- PC-CrossDiff ----------------------------------------------------------------------------

def test_differential_attention_identities() -> None:
    torch.manual_seed(4)
    layer = DifferentialAttention(16, heads=2)
    xq, xk = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    tg = tokens.bipartite(5, 7)
    a1, a2 = layer.maps(xq, xk, tg)
    # same sub-heads: (A1 - lam A1) V = (1 - lam) A1 V
    with torch.no_grad():
        layer.lambda_q1.copy_(layer.lambda_q2)
        layer.lambda_k1.copy_(layer.lambda_k2)
    assert abs(layer.lam().item() - layer.lambda_init) < 1e-7
    # lambda = 0 (init 0, equal exponentials): plain softmax cross-attention before the LN
    plain = DifferentialAttention(16, heads=2, lambda_init=0.0)
    with torch.no_grad():
        plain.lambda_q1.copy_(plain.lambda_q2)
        plain.lambda_k1.copy_(plain.lambda_k2)
    a1p, _ = plain.maps(xq, xk, tg)
    out = plain(xq, xk)
    torch.testing.assert_close(out, plain.w_o(F.layer_norm(a1p, (a1p.size(-1),)).flatten(-2)))
    # row sums of the differential map are 1 - lambda: apply it to constant values
    ones = torch.ones(2, 7, 2, 16)
    lam = layer.lam().item()
    q = layer.w_q(xq).view(2, 5, 2, 2, 4)
    k = layer.w_k(xk).view(2, 7, 2, 2, 4)
    r1 = token_attention(q[..., 0, :], k[..., 0, :], ones, tg)
    r2 = token_attention(q[..., 1, :], k[..., 1, :], ones, tg)
    torch.testing.assert_close(r1 - lam * r2, torch.full_like(r1, 1 - lam))


def test_differential_full_vs_causal_bipartite() -> None:
    torch.manual_seed(5)
    full = DifferentialAttention(16, heads=2)
    caus = DifferentialAttention(16, heads=2, causal=True)
    caus.load_state_dict(full.state_dict())
    xq, xk = torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    y = full(xq, xk)
    assert not torch.allclose(y, caus(xq, xk))  # the released code's mask changes results
    perm_q, perm_k = torch.randperm(6), torch.randperm(6)
    torch.testing.assert_close(full(xq[:, perm_q], xk[:, perm_k]), y[:, perm_q])
    ys = full(xq)  # self edge set
    assert ys.shape == (1, 6, 16)


# ---- KV budgets ------------------------------------------------------------------------------

def test_kv_budgets_equal_full_attention_when_budget_covers_the_sequence() -> None:
    torch.manual_seed(6)
    T = 12
    q, k, v = torch.randn(T, 2, 8), torch.randn(T, 2, 8), torch.randn(T, 2, 8)
    full = token_attention(q, k, v, tokens.causal(T))
    for tg in (heavy_hitter(q, k, budget=T), sink_window(T, 1, T)):
        assert tg.num_edges == T * (T + 1) // 2
        torch.testing.assert_close(token_attention(q, k, v, tg), full, atol=1e-5, rtol=1e-5)


def test_kv_budgets_respect_the_budget() -> None:
    torch.manual_seed(7)
    T = 20
    q, k = torch.randn(T, 2, 8), torch.randn(T, 2, 8)
    hh = heavy_hitter(q, k, budget=6, sinks=1, recent=2)
    deg = torch.bincount(hh.edge_index[1], minlength=T)
    assert deg.max() == 6 and (deg[6:] == 6).all()
    m = hh.dense_mask()
    assert m[:, 0].all()  # the sink is never evicted
    assert all(m[i, i] and m[i, i - 1] for i in range(1, T))  # the recent tokens stay
    assert not torch.triu(m, 1).any()  # still causal
    sw = sink_window(T, 2, 3).dense_mask()
    assert sw[10].nonzero().view(-1).tolist() == [0, 1, 8, 9, 10]


# ---- NeuroGame -------------------------------------------------------------------------------

def _game(n=6, seed=8):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return v, (lambda masks: coalition_value(v, masks))


def test_mc_estimators_are_unbiased_against_exact_values() -> None:
    n = 6
    v, value = _game(n)
    g = torch.Generator().manual_seed(0)
    phi, ban = exact_shapley(value, n), exact_banzhaf(value, n)
    assert abs(phi.sum().item() - value(torch.ones(1, n, dtype=torch.float64)).item()) < 1e-9
    K = 4000
    est_phi = mc_shapley(value, n, K, g)
    est_ban = mc_banzhaf(value, n, K, g)
    scale = v.norm(dim=1).max().item()  # a bound on one marginal gain
    tol = 4 * scale / K**0.5
    assert (est_phi - phi).abs().max() < tol and (est_ban - ban).abs().max() < tol
    # interaction index of the pair (0, 1) by enumeration
    masks = torch.tensor([[a, b, c, d] for a in (0, 1) for b in (0, 1) for c in (0, 1)
                          for d in (0, 1)], dtype=torch.float64)

    def with_pair(bits_i, bits_j):
        m = torch.zeros(16, n, dtype=torch.float64)
        m[:, 2:] = masks
        m[:, 0], m[:, 1] = bits_i, bits_j
        return value(m)

    exact_j = (with_pair(1, 1) - with_pair(1, 0) - with_pair(0, 1) + with_pair(0, 0)).mean()
    est_j = mc_interaction(value, n, torch.tensor([[0], [1]]), K, g)
    assert abs(est_j.item() - exact_j.item()) < 2 * tol


def test_mean_field_properties_and_exact_gibbs() -> None:
    n = 10
    g = torch.Generator().manual_seed(9)
    h = torch.randn(n, generator=g, dtype=torch.float64) * 0.1
    # J = 0: one (undamped) step gives tanh(h / gamma)
    m, _, _ = mean_field(h, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0,
                         dtype=torch.float64), gamma=0.25, damping=1.0, iters=1)
    torch.testing.assert_close(m, torch.tanh(h / 0.25))
    # gamma -> infinity: uniform marginals
    m, _, _ = mean_field(h, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0,
                         dtype=torch.float64), gamma=1e9)
    assert m.abs().max() < 1e-8
    # weak sparse couplings: mean field converges (contraction) and matches exact Gibbs
    tg = tokens.window(n, 1, causal=False)
    ei = tg.edge_index[:, tg.edge_index[0] != tg.edge_index[1]]
    key = torch.minimum(ei[0], ei[1]) * n + torch.maximum(ei[0], ei[1])
    w = 0.02 * torch.sin(key.double())  # symmetric by construction
    J = torch.zeros(n, n, dtype=torch.float64)
    J[ei[1], ei[0]] = w
    assert torch.equal(J, J.T) and (J.diagonal() == 0).all()
    gamma = 1.0
    assert contraction_factor(J, gamma) < 1
    m, res, it = mean_field(h, ei, w, gamma=gamma, iters=200, tol=1e-12)
    assert res < 1e-12 and it < 200
    exact = exact_gibbs_marginals(h, J, gamma)
    assert (m - exact).abs().max() < 2e-3


def test_neurogame_layer_shapes_gradients_and_relabelled_values() -> None:
    torch.manual_seed(10)
    layer = NeuroGameAttention(8, samples=8).double()
    x = torch.randn(7, 8, dtype=torch.float64)
    tg = tokens.knn(x, 3)
    y, m = layer(x, tg, torch.Generator().manual_seed(0))
    assert y.shape == (8,) and m.shape == (7,) and m.abs().max() <= 1
    y.sum().backward()
    assert layer.w_v.weight.grad.abs().sum() > 0
    # relabelling tokens: the pooled output is unchanged with exact (enumerated) values
    perm = torch.randperm(7)
    v = layer.w_v(x).detach()
    vp = v[perm]
    phi = exact_shapley(lambda masks: coalition_value(v, masks), 7)
    phip = exact_shapley(lambda masks: coalition_value(vp, masks), 7)
    torch.testing.assert_close(phip, phi[perm])
