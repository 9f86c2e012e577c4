"""Property tests of the token-graph layers (TOKEN_PAPERS.md sections 1, 2, 4, 5, 17)."""

from __future__ import annotations

import itertools
import math

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
    neurogame,
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
from graphattn.tokens import TokenGraph, heavy_hitter, sink_window, token_attention


def _plain_causal(layer, x):
    B, T, D = x.shape
    H = layer.heads
    q, k, v = (w(x).view(B, T, H, D // H).transpose(1, 2) for w in (layer.w_q, layer.w_k,
                                                                     layer.w_v))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return layer.w_o(o.transpose(1, 2).reshape(B, T, D))


def _mka_reference(layer, x, mask, long_term=None):
    """Dense MKA-Full / FastMKA from the module docstring, written out (float64): router
    ``softmax(Linear(act(Linear(q))))``, session memory by an explicit EMA loop, long-term memory
    repeated along positions, per-head masked softmax. Returns ``(y [B, T, D], lam [B, T, L])``."""
    B, T, D = x.shape
    H = layer.heads
    dh = D // H
    fast = isinstance(layer, FastMKAttention)
    wq, wk, wv, wo = (m.weight.detach() for m in (layer.w_q, layer.w_k, layer.w_v, layer.w_o))
    r1, r2 = layer.router[0], layer.router[2]
    if fast:  # SiLU
        def act(t):
            return t / (1 + torch.exp(-t))
    else:  # exact GELU
        def act(t):
            return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))
    y = torch.zeros_like(x)
    lams = torch.zeros(B, T, layer.levels, dtype=x.dtype)
    for b in range(B):
        q = x[b] @ wq.T
        logits = act(q @ r1.weight.detach().T + r1.bias.detach()) @ r2.weight.detach().T \
            + r2.bias.detach()
        lam = torch.exp(logits - logits.max(-1, keepdim=True).values)
        lam = lam / lam.sum(-1, keepdim=True)
        lams[b] = lam
        s, session = torch.zeros(D, dtype=x.dtype), []
        for j in range(T):  # s_j = beta s_{j-1} + (1 - beta) x_j, s_0 = 0
            s = layer.beta * s + (1 - layer.beta) * x[b, j]
            session.append(s)
        levels = [x[b], torch.stack(session)]
        if layer.levels == 3:
            levels.append(torch.stack([long_term[j % long_term.size(0)] for j in range(T)]))

        def attend(src, q=q):
            k, v = src @ wk.T, src @ wv.T
            out = torch.zeros(T, D, dtype=x.dtype)
            for h in range(H):
                c = slice(h * dh, (h + 1) * dh)
                score = (q[:, c] @ k[:, c].T / math.sqrt(dh)).masked_fill(~mask, float("-inf"))
                out[:, c] = torch.softmax(score, -1) @ v[:, c]
            return out

        if fast:  # fuse per key position with that position's own router weights
            o = attend(sum(lam[:, li, None] * mem for li, mem in enumerate(levels)))
        else:  # one attention per level, mixed with the query's router weights
            o = sum(lam[:, li, None] * attend(mem) for li, mem in enumerate(levels))
        y[b] = o @ wo.T
    return y, lams


def _sharpen_router(layer, scale=8.0):
    """Spread the router weights over (0, 1) so that every memory level carries weight."""
    with torch.no_grad():
        layer.router[-1].weight.mul_(scale)


# ---- MKA / FastMKA ---------------------------------------------------------------------------

def test_causal_ema_vectorised_equals_loop() -> None:
    x = torch.randn(2, 150, 5, dtype=torch.float64)
    for beta in (0.0, 0.5, 0.9, 0.99):
        torch.testing.assert_close(causal_ema(x, beta, chunk=16), causal_ema_loop(x, beta))
    long = torch.randn(1, 5000, 2)
    assert torch.isfinite(causal_ema(long, 0.9)).all()  # no beta^-m overflow


@pytest.mark.parametrize("cls", [MKAttention, FastMKAttention])
def test_mka_reduces_to_causal_softmax(cls) -> None:
    """Limits reduce to causal softmax, and with beta = 0.9 and a spread router the output is
    the written-out two-level reference (a dropped or wrong session EMA changes it)."""
    torch.manual_seed(0)
    layer = cls(16, heads=4, beta=0.0)  # beta -> 0: session memory = local
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(layer(x), _plain_causal(layer, x), atol=1e-5, rtol=1e-5)
    layer = cls(16, heads=4, beta=0.9)
    with torch.no_grad():  # one-hot router on L1
        layer.router[-1].weight.zero_()
        layer.router[-1].bias.copy_(torch.tensor([1e4, -1e4]))
    torch.testing.assert_close(layer(x), _plain_causal(layer, x), atol=1e-5, rtol=1e-5)
    # beta = 0.9, both levels weighted: sum_l lam_il SDPA(q, W_k L_l, W_v L_l) (or fused)
    layer = cls(16, heads=4, beta=0.9).double()
    _sharpen_router(layer)
    x = x.double()
    y, lam = layer(x, return_router=True)
    ref, ref_lam = _mka_reference(layer, x, torch.ones(9, 9, dtype=torch.bool).tril())
    assert ref_lam.min() < 0.2 and ref_lam.max() > 0.8  # a non-trivial router
    torch.testing.assert_close(lam, ref_lam)
    torch.testing.assert_close(y, ref)
    assert (y - _plain_causal(layer, x)).abs().max() > 1e-2  # the session level matters


@pytest.mark.parametrize("cls", [MKAttention, FastMKAttention])
def test_mka_is_causal_and_router_is_simplex(cls) -> None:
    """Causal, router rows on the simplex, and equal to the written-out three-level reference
    (local, session EMA, repeated long-term memory) on the causal and a window graph."""
    torch.manual_seed(1)
    layer = cls(16, heads=2, long_term=True).double()
    _sharpen_router(layer)
    x = torch.randn(1, 10, 16, dtype=torch.float64)
    mem = torch.randn(3, 16, dtype=torch.float64)
    y, lam = layer(x, long_term=mem, return_router=True)
    torch.testing.assert_close(lam.sum(-1), torch.ones(1, 10, dtype=torch.float64))
    x2 = x.clone()
    x2[:, 6:] += torch.randn(1, 4, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x2, long_term=mem)[:, :6], y[:, :6])
    i, j = torch.arange(10).unsqueeze(1), torch.arange(10).unsqueeze(0)
    ref, ref_lam = _mka_reference(layer, x, j <= i, mem)
    assert ref_lam.min() < 0.1 and ref_lam.max() > 0.6
    torch.testing.assert_close(lam, ref_lam)
    torch.testing.assert_close(y, ref)
    # any causal token graph: a window (i - 3 <= j <= i) through the sparse core
    yw = layer(x, tokens.window(10, 3), long_term=mem)
    assert yw.shape == y.shape and not torch.allclose(yw, y)
    torch.testing.assert_close(yw, _mka_reference(layer, x, (j <= i) & (j >= i - 3), mem)[0])


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

def _diff_reference(layer, xq, xk, mask):
    """Dense differential attention from the module docstring, written out (float64): head
    ``h`` uses Q/K sub-heads ``2h`` and ``2h + 1`` (``d`` channels each) and V head ``h``
    (``2d`` channels); ``lam = exp(lq1.lk1) - exp(lq2.lk2) + lambda_init``; output
    ``W_o concat_h (1 - lambda_init) LN((A1 - lam A2) V_h)``, LN without affine, eps 1e-5.
    Returns ``(y [B, Tq, D], A1 V [B, Tq, H, 2d], A2 V, lam)``."""
    B, Tq, D = xq.shape
    H = layer.heads
    d = D // (2 * H)
    wq, wk, wv, wo = (m.weight.detach() for m in (layer.w_q, layer.w_k, layer.w_v, layer.w_o))
    lq1, lk1, lq2, lk2 = (p.detach() for p in (layer.lambda_q1, layer.lambda_k1,
                                               layer.lambda_q2, layer.lambda_k2))
    lam = math.exp(float(lq1 @ lk1)) - math.exp(float(lq2 @ lk2)) + layer.lambda_init
    y = torch.zeros_like(xq)
    r1 = torch.zeros(B, Tq, H, 2 * d, dtype=xq.dtype)
    r2 = torch.zeros_like(r1)
    for b in range(B):
        q, k, v = xq[b] @ wq.T, xk[b] @ wk.T, xk[b] @ wv.T
        heads = []
        for h in range(H):
            s1, s2 = slice(2 * h * d, (2 * h + 1) * d), slice((2 * h + 1) * d, (2 * h + 2) * d)
            vh = v[:, 2 * h * d:(2 * h + 2) * d]
            a1, a2 = (torch.softmax((q[:, s] @ k[:, s].T / math.sqrt(d)).masked_fill(
                ~mask, float("-inf")), -1) for s in (s1, s2))
            r1[b, :, h], r2[b, :, h] = a1 @ vh, a2 @ vh
            o = (a1 - lam * a2) @ vh
            o = (o - o.mean(-1, keepdim=True)) / torch.sqrt(
                o.var(-1, unbiased=False, keepdim=True) + 1e-5)
            heads.append((1 - layer.lambda_init) * o)
        y[b] = torch.cat(heads, -1) @ wo.T
    return y, r1, r2, lam


@pytest.mark.parametrize("causal", [False, True])
def test_differential_attention_identities(causal) -> None:
    """Forward, both maps and lambda equal the written-out dense reference with the default
    lambda_init and lambda far from 0 and from lambda_init, on the full and the causal
    bipartite edges: ``A1 + lam A2``, a dropped ``A2`` or ``(1 - lambda_init)``, a swapped
    sub-head or a wrong mask all change the output."""
    torch.manual_seed(4)
    layer = DifferentialAttention(16, heads=2, causal=causal).double()
    with torch.no_grad():
        for p in (layer.lambda_q1, layer.lambda_k1, layer.lambda_q2, layer.lambda_k2):
            p.normal_(0.0, 0.3)
    Tq, Tk = (6, 6) if causal else (5, 7)  # causal: query i reads keys j <= i
    xq = torch.randn(2, Tq, 16, dtype=torch.float64)
    xk = torch.randn(2, Tk, 16, dtype=torch.float64)
    mask = (torch.arange(Tk).unsqueeze(0) <= torch.arange(Tq).unsqueeze(1)) if causal \
        else torch.ones(Tq, Tk, dtype=torch.bool)
    y, r1, r2, lam = _diff_reference(layer, xq, xk, mask)
    assert abs(lam) > 0.2 and abs(lam - layer.lambda_init) > 0.1
    assert abs(layer.lam().item() - lam) < 1e-12
    torch.testing.assert_close(layer(xq, xk), y)
    a1, a2 = layer.maps(xq, xk, tokens.bipartite(Tq, Tk, causal))
    torch.testing.assert_close(a1, r1)
    torch.testing.assert_close(a2, r2)
    # the self edge set (x_kv omitted) is the same operator on (x, x)
    torch.testing.assert_close(layer(xk), _diff_reference(layer, xk, xk, (
        torch.arange(Tk).unsqueeze(0) <= torch.arange(Tk).unsqueeze(1)) if causal
        else torch.ones(Tk, Tk, dtype=torch.bool))[0])


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


def _exact_sample_distributions(value, n):
    """By enumeration, the exact single-sample distributions of the three estimators: marginal
    gains over all ``n!`` orders (Shapley, ``[n!, n]``), over all subsets of the others
    (Banzhaf, ``n x [2^(n-1)]``) and the pair (0, 1)'s second difference over all subsets of
    the rest (interaction, ``[2^(n-2)]``)."""
    perms = list(itertools.permutations(range(n)))
    before = torch.zeros(len(perms), n, n, dtype=torch.float64)  # [order, player, member]
    for o, perm in enumerate(perms):
        for t, i in enumerate(perm):
            before[o, i, list(perm[:t])] = 1
    with_i = torch.maximum(before, torch.eye(n, dtype=torch.float64))
    shapley = (value(with_i.reshape(-1, n)) - value(before.reshape(-1, n))).view(-1, n)
    subsets = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)), dtype=torch.float64)
    banzhaf = []
    for i in range(n):
        without = subsets[subsets[:, i] == 0]
        plus = without.clone()
        plus[:, i] = 1
        banzhaf.append(value(plus) - value(without))
    rest = subsets[(subsets[:, 0] == 0) & (subsets[:, 1] == 0)]

    def pair(a, b):
        m = rest.clone()
        m[:, 0], m[:, 1] = a, b
        return value(m)

    return shapley, banzhaf, pair(1, 1) - pair(1, 0) - pair(0, 1) + pair(0, 0)


def test_mc_estimators_are_unbiased_against_exact_values() -> None:
    """Seeded MC estimates lie within 5 standard errors (exact per-sample spread / sqrt(K), by
    enumeration) of the enumerated values; a biased coalition distribution (inclusion 0.6, or
    uniform coalitions for Shapley) is off by many standard errors."""
    n = 6
    v, value = _game(n)
    g = torch.Generator().manual_seed(0)
    shap_s, ban_s, int_s = _exact_sample_distributions(value, n)
    phi, phi_sd = shap_s.mean(0), shap_s.std(0, unbiased=False)
    ban = torch.stack([b.mean() for b in ban_s])
    ban_sd = torch.stack([b.std(unbiased=False) for b in ban_s])
    inter, inter_sd = int_s.mean(), int_s.std(unbiased=False)
    assert abs(phi.sum().item() - torch.linalg.vector_norm(v.sum(0)).item()) < 1e-9  # efficiency
    torch.testing.assert_close(exact_shapley(value, n), phi)
    torch.testing.assert_close(exact_banzhaf(value, n), ban)
    K = 8000
    est_phi = mc_shapley(value, n, K, g)
    est_ban = mc_banzhaf(value, n, K, g)
    est_j = mc_interaction(value, n, torch.tensor([[0], [1]]), K, g)
    se_phi, se_ban, se_j = phi_sd / K**0.5, ban_sd / K**0.5, inter_sd / K**0.5
    assert ((est_phi - phi).abs() < 5 * se_phi + 1e-12).all(), (est_phi - phi) / se_phi
    assert ((est_ban - ban).abs() < 5 * se_ban + 1e-12).all(), (est_ban - ban) / se_ban
    assert abs(est_j.item() - inter.item()) < 5 * se_j.item(), (est_j - inter) / se_j
    # the tolerances are tight: Shapley != Banzhaf here by far more than 5 SE
    assert ((phi - ban).abs() / se_phi).max() > 20


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


def _enum_mask(n, members):
    m = torch.zeros(n, dtype=torch.float64)
    m[list(members)] = 1
    return m


def _subsets_of_others(n, exclude):
    others = [k for k in range(n) if k not in exclude]
    return [S for r in range(len(others) + 1) for S in itertools.combinations(others, r)]


def _enum_shapley(value, n, samples, generator=None, dtype=torch.float64):
    """Stand-in for ``mc_shapley``: exact, by the subset-weighted formula."""
    out = torch.zeros(n, dtype=dtype)
    for i in range(n):
        for S in _subsets_of_others(n, (i,)):
            w = math.factorial(len(S)) * math.factorial(n - len(S) - 1) / math.factorial(n)
            vals = value(torch.stack([_enum_mask(n, S + (i,)), _enum_mask(n, S)]).to(dtype))
            out[i] += w * (vals[0] - vals[1])
    return out


def _enum_banzhaf(value, n, samples, generator=None, dtype=torch.float64):
    """Stand-in for ``mc_banzhaf``: exact, mean over all coalitions of the others."""
    out = torch.zeros(n, dtype=dtype)
    for i in range(n):
        subs = _subsets_of_others(n, (i,))
        plus = value(torch.stack([_enum_mask(n, S + (i,)) for S in subs]).to(dtype))
        out[i] = (plus - value(torch.stack([_enum_mask(n, S) for S in subs]).to(dtype))).mean()
    return out


def _enum_interaction(value, n, edges, samples, generator=None, dtype=torch.float64):
    """Stand-in for ``mc_interaction``: exact, mean over all coalitions of the rest."""
    out = torch.zeros(edges.size(1), dtype=dtype)
    for e, (i, j) in enumerate(edges.T.tolist()):
        subs = _subsets_of_others(n, (i, j))
        v11, v10, v01, v00 = (value(torch.stack([_enum_mask(n, S + extra) for S in subs])
                                    .to(dtype)) for extra in ((i, j), (i,), (j,), ()))
        out[e] = (v11 - v10 - v01 + v00).mean()
    return out


def _neurogame_reference(layer, x, edge_index):
    """NeuroGame pooling from the module docstring, written out: ``v(C) = ReLU(c |sum_C W_v
    x|)``, Shapley over all orders, Banzhaf over all coalitions, ``h = a phi + (1 - a) beta``,
    ``J_ij`` the enumerated interaction index on each edge ``j -> i`` (``i != j``), dense damped
    mean field with the layer's stopping rule, ``p ~ (1 + m) / 2``, ``y = p @ W_v x``.
    Returns ``(h, J [N, N], m, y)``."""
    n = x.size(0)
    v = x @ layer.w_v.weight.detach().T

    def val(members):
        s = v[list(members)].sum(0) if members else torch.zeros(v.size(1), dtype=v.dtype)
        return max(layer.c * torch.linalg.vector_norm(s).item(), 0.0)

    orders = list(itertools.permutations(range(n)))
    phi = torch.zeros(n, dtype=torch.float64)
    for order in orders:
        for t, i in enumerate(order):
            phi[i] += (val(order[:t + 1]) - val(order[:t])) / len(orders)
    ban = torch.tensor([sum(val(S + (i,)) - val(S) for S in _subsets_of_others(n, (i,)))
                        / 2 ** (n - 1) for i in range(n)], dtype=torch.float64)
    a = 1 / (1 + math.exp(-layer.gate.item()))
    h = a * phi + (1 - a) * ban
    J = torch.zeros(n, n, dtype=torch.float64)
    for j, i in edge_index.T.tolist():
        if i != j:
            J[i, j] = sum(val(S + (i, j)) - val(S + (i,)) - val(S + (j,)) + val(S)
                          for S in _subsets_of_others(n, (i, j))) / 2 ** (n - 2)
    m = torch.zeros(n, dtype=torch.float64)
    for _ in range(layer.iters):
        new = (1 - layer.damping) * m + layer.damping * torch.tanh((h + J @ m) / layer.gamma)
        res = (new - m).abs().max().item()
        m = new
        if res < layer.tol:
            break
    p = (1 + m) / 2
    return h, J, m, (p / p.sum()) @ v


def test_neurogame_layer_shapes_gradients_and_relabelled_values(monkeypatch) -> None:
    """With the MC estimators replaced by exact enumeration the layer's field, couplings,
    marginals and pooled output equal the written-out reference and are equivariant under
    relabelling tokens and graph (a negated J or the read-out ``(1 - m) / 2`` fails)."""
    torch.manual_seed(10)
    layer = NeuroGameAttention(8, samples=8).double()
    x = torch.randn(7, 8, dtype=torch.float64)
    tg = tokens.knn(x, 3)
    y, m = layer(x, tg, torch.Generator().manual_seed(0))
    assert y.shape == (8,) and m.shape == (7,) and m.abs().max() <= 1
    y.sum().backward()
    assert layer.w_v.weight.grad.abs().sum() > 0
    # exact estimators; spy on the mean-field call for h and J
    monkeypatch.setattr(neurogame, "mc_shapley", _enum_shapley)
    monkeypatch.setattr(neurogame, "mc_banzhaf", _enum_banzhaf)
    monkeypatch.setattr(neurogame, "mc_interaction", _enum_interaction)
    seen = []

    def spy(h, edges, weights, *args):
        seen.append((h.detach(), edges, weights.detach()))
        return mean_field(h, edges, weights, *args)

    monkeypatch.setattr(neurogame, "mean_field", spy)
    n = 5
    layer = NeuroGameAttention(4, value_scale=0.125).double()  # gamma 0.25: m in (-1, 1)
    with torch.no_grad():
        layer.gate.fill_(0.8)  # a = 0.69: phi and beta enter with different weights
    x = torch.randn(n, 4, dtype=torch.float64)
    pairs = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 3), (1, 4)]  # symmetric, plus two self-loops
    ei = torch.tensor([[a for a, _ in pairs] + [b for _, b in pairs] + [0, 2],
                       [b for _, b in pairs] + [a for a, _ in pairs] + [0, 2]])
    y, m = layer(x, TokenGraph(ei, n, n))
    h_ref, J_ref, m_ref, y_ref = _neurogame_reference(layer, x, ei)
    h, edges, w = seen[-1]
    J = torch.zeros(n, n, dtype=torch.float64)
    J[edges[1], edges[0]] = w
    assert (edges[0] != edges[1]).all() and edges.size(1) == 2 * len(pairs)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(J, J_ref)
    assert torch.equal(J, J.T) and (J_ref.abs() > 0.01).sum() >= 8  # couplings matter
    torch.testing.assert_close(m, m_ref)
    assert 0.05 < m.abs().max() < 0.95
    torch.testing.assert_close(y, y_ref)
    # relabelling tokens and graph: m is permuted, the pooled output is unchanged
    perm = torch.tensor([3, 0, 4, 2, 1])
    inv = torch.argsort(perm)
    yp, mp = layer(x[perm], TokenGraph(inv[ei], n, n))
    torch.testing.assert_close(mp, m[perm])
    torch.testing.assert_close(yp, y)


def test_token_layers_refuse_inputs_of_another_shape_or_dtype() -> None:
    """Tokens of another width, rank or dtype, a long-term memory of another shape and an empty
    NeuroGame input raise errors naming the argument (before: torch's matmul, unpack, stack or
    reshape messages)."""
    x = torch.randn(2, 8, 16)
    cases = [
        (lambda: DifferentialAttention(16, heads=2)(torch.randn(2, 8, 12)), ValueError, "'x_q'"),
        (lambda: DifferentialAttention(16, heads=2)(x, x.double()), TypeError, "'x_kv'"),
        (lambda: ItemAwareAttention(16)(x[0], torch.zeros(8, dtype=torch.long)), ValueError,
         r"'x' must be a floating \[B, T, D\]"),
        (lambda: MKAttention(16)(x.double()), TypeError, "'x' must have the layer's dtype"),
        (lambda: MKAttention(16, long_term=True)(x, long_term=torch.randn(16)), ValueError,
         r"'long_term' must be a floating \[M, D\]"),
        (lambda: FastMKAttention(16, long_term=True)(x, long_term=torch.randn(3, 4, 16)),
         ValueError, "'long_term' must have B=2"),
        (lambda: NeuroGameAttention(8)(torch.randn(0, 8), tokens.full(0)), ValueError,
         "at least one token"),
        (lambda: NeuroGameAttention(8)(torch.randn(5, 6), tokens.full(5)), ValueError,
         r"'x' must be a floating \[N, D\] tensor with D=8"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


def test_neurogame_couples_each_pair_once_in_both_directions() -> None:
    """The Ising couplings live on unordered pairs: a one-way graph (kNN-like) gives the same
    marginals as its symmetrised version, and a duplicated edge does not count twice."""
    torch.manual_seed(3)
    layer = NeuroGameAttention(4, samples=64).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    one_way = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2]])
    sym = torch.cat([one_way, one_way.flip(0)], 1)
    dup = torch.cat([sym, sym[:, :3]], 1)

    def run(ei):
        return layer(x, TokenGraph(ei, 5, 5), torch.Generator().manual_seed(7))

    y, m = run(sym)
    for ei in (one_way, dup):
        y2, m2 = run(ei)
        torch.testing.assert_close(m2, m)
        torch.testing.assert_close(y2, y)


def test_heavy_hitter_keeps_the_current_query_and_checks_its_arguments() -> None:
    """With recent=0 query i was its own eviction candidate (mass 0), so every new token
    evicted itself and the cache froze at the first keys; H2O always keeps the current token,
    so recent < 1 is refused, as are non-int budgets."""
    torch.manual_seed(0)
    q, k = torch.randn(6, 1, 2), torch.randn(6, 1, 2)
    with pytest.raises(ValueError, match="recent must be an int >= 1, got 0"):
        heavy_hitter(q, k, budget=2, sinks=0, recent=0)
    with pytest.raises(ValueError, match="budget must be an int >= 1, got 2.5"):
        heavy_hitter(q, k, budget=2.5)
    with pytest.raises(ValueError, match="sinks must be an int >= 0, got -1"):
        heavy_hitter(q, k, budget=2, sinks=-1)
    m = heavy_hitter(q, k, budget=2, sinks=0, recent=1).dense_mask()
    assert m.diagonal().all() and (m.sum(1)[1:] == 2).all()
    assert heavy_hitter(q[:0], k[:0], budget=2).num_edges == 0


def test_layers_validate_heads_and_counts_at_construction() -> None:
    """heads=0 gave ZeroDivisionError, 2.0 / -4 torch errors at forward, True was taken as 1;
    NeuroGame samples=0 failed in torch.stack; MKA's beta was only checked at forward."""
    for cls in (DifferentialAttention, ItemAwareAttention, MKAttention, FastMKAttention):
        for h in (0, True, 2.0, -4):
            with pytest.raises(ValueError, match=f"heads must be an int >= 1, got {h!r}"):
                cls(8, h)
        with pytest.raises(ValueError, match="dim must be an int >= 1, got 0"):
            cls(0, 1)
    for s in (0, True, 1.5):
        with pytest.raises(ValueError, match=f"samples must be an int >= 1, got {s!r}"):
            NeuroGameAttention(4, samples=s)
    for cls in (MKAttention, FastMKAttention):
        with pytest.raises(ValueError, match="beta must be a float in"):
            cls(8, 2, beta=1.5)
        with pytest.raises(TypeError, match="'long_term' must be a bool"):
            cls(8, 2, long_term=1)
    with pytest.raises(ValueError, match="chunk must be an int >= 1, got 0"):
        causal_ema(torch.randn(2, 5, 3), 0.9, 0)


@pytest.mark.parametrize("cls", [MKAttention, FastMKAttention])
def test_mka_refuses_long_term_memories_without_the_level(cls) -> None:
    """Built with long_term=False the layer silently ignored the memories it was given."""
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="'long_term' memories were passed to a layer built "
                                         "without the long-term level"):
        cls(8, 2)(x, long_term=torch.randn(3, 8))
    assert cls(8, 2, long_term=True)(x, long_term=torch.randn(3, 8)).shape == (2, 5, 8)


@pytest.mark.parametrize("mode", ["intra", "inter", "causal"])
def test_iam_empty_batch_with_per_sequence_item_ids(mode) -> None:
    """B=0 with [B, T] item ids crashed in torch.stack; it gives an empty output like [T]."""
    layer = ItemAwareAttention(8, 2, mode)
    x = torch.randn(0, 5, 8)
    out = layer(x, torch.zeros(0, 5, dtype=torch.long))
    assert out.shape == (0, 5, 8)
    assert layer(x, torch.zeros(5, dtype=torch.long)).shape == (0, 5, 8)


def test_mean_field_weights_must_have_one_entry_per_edge() -> None:
    """A [1] or scalar weight was broadcast over the E edges."""
    h, e = torch.randn(3), torch.tensor([[0, 1], [1, 0]])
    for w in (torch.tensor([0.1]), torch.tensor(0.1), torch.ones(3)):
        with pytest.raises(ValueError, match=r"'weights' must have shape \[E\] = \[2\]"):
            mean_field(h, e, w)
    with pytest.raises(ValueError, match=r"'edges' must be a \[2, E\] tensor"):
        mean_field(h, torch.tensor([0, 1]), torch.ones(2))
    m, _, _ = mean_field(h, e, torch.tensor([0.1, 0.1]))
    assert m.shape == (3,)
