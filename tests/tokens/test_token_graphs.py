"""Token-graph builders, dense vs sparse attention, batching, N-D RoPE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from graphattn import tokens
from graphattn.tokens import RotaryND, TokenGraph, token_attention


def _mask_of(tg: TokenGraph) -> set[tuple[int, int]]:
    return set(map(tuple, tg.edge_index.T.tolist()))


def _ref_pairs(Tq, Tk, keep) -> set[tuple[int, int]]:
    return {(j, i) for i in range(Tq) for j in range(Tk) if keep(i, j)}


def test_builders_match_their_definitions() -> None:
    T = 11
    assert _mask_of(tokens.full(T)) == _ref_pairs(T, T, lambda i, j: True)
    assert _mask_of(tokens.causal(T)) == _ref_pairs(T, T, lambda i, j: j <= i)
    assert _mask_of(tokens.window(T, 2)) == _ref_pairs(T, T, lambda i, j: 0 <= i - j <= 2)
    assert _mask_of(tokens.window(T, 2, causal=False)) == _ref_pairs(
        T, T, lambda i, j: abs(i - j) <= 2)
    assert _mask_of(tokens.dilated(T, 2, 3)) == _ref_pairs(
        T, T, lambda i, j: 0 <= i - j <= 6 and (i - j) % 3 == 0)
    ms = tokens.multiscale(T, (1, 2), (1, 4))
    assert _mask_of(ms) == _mask_of(tokens.window(T, 1)) | _mask_of(tokens.dilated(T, 2, 4))
    assert _mask_of(tokens.bipartite(3, 5)) == _ref_pairs(3, 5, lambda i, j: True)
    assert _mask_of(tokens.bipartite(4, 8, causal=True)) == _ref_pairs(
        4, 8, lambda i, j: j < (i + 1) * 2)
    g = tokens.grid((3, 4), radius=1)
    assert g.num_keys == 12 and g.pos.shape == (12, 2)
    # cell (1, 1) = 5 has 9 neighbours, corner 0 has 4
    deg = torch.bincount(g.edge_index[1], minlength=12)
    assert deg[5] == 9 and deg[0] == 4
    assert tokens.grid((2, 2, 2)).num_edges == 64
    x = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    assert _mask_of(tokens.knn(x, 1)) == {(1, 0), (0, 1), (3, 2), (2, 3)}


def test_memory_slots() -> None:
    tg = tokens.memory(4, 2)
    m = tg.dense_mask()
    assert m[2:, :2].all() and m[:2, :2].all() and m[:2, 2:].all()  # read, slot-slot, write
    assert torch.equal(m[2:, 2:], torch.ones(4, 4, dtype=torch.bool).tril())
    assert not tokens.memory(4, 2, slots_attend=False).dense_mask()[:2, 2:].any()


def test_grouped_edge_sets_partition_causal() -> None:
    item = torch.tensor([0, 0, 1, 1, 1, 2, 0, 3])
    intra, inter = tokens.grouped(item)
    a, b, c = _mask_of(intra), _mask_of(inter), _mask_of(tokens.causal(8))
    assert a | b == c and not a & b
    # every token its own item: intra = self-loops, inter = causal minus self
    intra, inter = tokens.grouped(torch.arange(5))
    assert _mask_of(intra) == {(i, i) for i in range(5)}
    assert _mask_of(inter) == _mask_of(tokens.causal(5)) - {(i, i) for i in range(5)}
    # one item: intra = causal, inter empty
    intra, inter = tokens.grouped(torch.zeros(5, dtype=torch.long))
    assert _mask_of(intra) == _mask_of(tokens.causal(5)) and inter.num_edges == 0


@pytest.mark.parametrize("make", [
    lambda: tokens.full(9), lambda: tokens.causal(9), lambda: tokens.bipartite(6, 9),
    lambda: tokens.bipartite(12, 9, causal=True), lambda: tokens.window(9, 2),
    lambda: tokens.memory(7, 2),
])
def test_dense_and_sparse_paths_agree(make) -> None:
    torch.manual_seed(0)
    tg = make()
    H, D = 3, 8
    q = torch.randn(tg.num_queries, H, D)
    k, v = torch.randn(tg.num_keys, H, D), torch.randn(tg.num_keys, H, D)
    sparse = token_attention(q, k, v, tg, dense=False)
    dense = token_attention(q, k, v, tg, dense=True)
    torch.testing.assert_close(dense, sparse, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(dense).all()
    # against SDPA with the graph's mask built independently
    mask = tg.dense_mask()
    if mask.any(1).all():
        ref = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                             v.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        torch.testing.assert_close(sparse, ref, atol=1e-5, rtol=1e-5)


def test_empty_rows_are_zero_on_both_paths() -> None:
    tg = tokens.bipartite(5, 2, causal=True)  # queries 0, 1 see no key
    q, k, v = torch.randn(5, 1, 4), torch.randn(2, 1, 4), torch.randn(2, 1, 4)
    for dense in (True, False):
        out = token_attention(q, k, v, tg, dense=dense)
        assert torch.isfinite(out).all() and (out[:2] == 0).all()


def test_batching_equals_separate_runs() -> None:
    torch.manual_seed(1)
    graphs = [tokens.causal(5), tokens.window(7, 2), tokens.grid((2, 3))]
    batch, tg = tokens.batch_token_graphs(graphs)
    T = tg.num_keys
    q, k, v = torch.randn(T, 2, 4), torch.randn(T, 2, 4), torch.randn(T, 2, 4)
    out = token_attention(q, k, v, tg)
    for n, g in enumerate(graphs):
        s, e = int(batch.ptr[n]), int(batch.ptr[n + 1])
        torch.testing.assert_close(out[s:e], token_attention(q[s:e], k[s:e], v[s:e], g),
                                   atol=1e-6, rtol=1e-6)


def test_permutation_equivariance_of_sparse_attention() -> None:
    torch.manual_seed(2)
    tg = tokens.window(8, 2, causal=False)
    q, k, v = torch.randn(8, 2, 4), torch.randn(8, 2, 4), torch.randn(8, 2, 4)
    out = token_attention(q, k, v, tg)
    perm = torch.randperm(8)
    inv = torch.argsort(perm)
    tgp = TokenGraph(inv[tg.edge_index], 8, 8, "custom")
    torch.testing.assert_close(token_attention(q[perm], k[perm], v[perm], tgp), out[perm])


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="edge_index out of range"):
        TokenGraph(torch.tensor([[0], [5]]), 3, 3)
    with pytest.raises(ValueError, match="token graph has 4 queries"):
        token_attention(torch.randn(3, 1, 2), torch.randn(4, 1, 2), torch.randn(4, 1, 2),
                        tokens.full(4))
    with pytest.raises(ValueError, match="w must be"):
        tokens.window(4, -1)
    # batched sequences are checked against the graph too, on the dense kinds as well (SDPA
    # would run any length with a causal or full pattern, and broadcast a [Tq, 1] mask)
    q = torch.randn(2, 8, 2, 4)
    for tg, k in ((tokens.causal(5), q), (tokens.full(5), q),
                  (tokens.bipartite(8, 1, True), q[:, :4])):
        with pytest.raises(ValueError, match="token graph has"):
            token_attention(q, k, k, tg)
    with pytest.raises(ValueError, match=r"'k' must be a \[B, T, H, D\]"):
        token_attention(q, q[0], q[0], tokens.full(8))


def test_rope_is_relative_and_leaves_prefix_alone() -> None:
    torch.manual_seed(3)
    rope = RotaryND(16, n_axes=2)
    q, k = torch.randn(6, 2, 16, dtype=torch.float64), torch.randn(6, 2, 16, dtype=torch.float64)
    pos = torch.rand(4, 2, dtype=torch.float64) * 2 - 1
    shift = torch.tensor([[0.37, -1.2]], dtype=torch.float64)

    def scores(p):
        rq, rk = rope(q, p, prefix=2), rope(k, p, prefix=2)
        return torch.einsum("ihd,jhd->hij", rq, rk)

    a, b = scores(pos), scores(pos + shift)
    torch.testing.assert_close(a[:, 2:, 2:], b[:, 2:, 2:])  # rotated tokens: p - p' only
    torch.testing.assert_close(a[:, :2, :2], b[:, :2, :2])  # prefix scores: no coordinates
    torch.testing.assert_close(rope(q, pos, prefix=2)[:2], q[:2])  # prefix unrotated
    assert not torch.allclose(rope(q, pos, prefix=2)[2:], q[2:])
    r3 = RotaryND(12, n_axes=3)
    p3 = torch.rand(6, 3, dtype=torch.float64)
    s3 = torch.einsum("ihd,jhd->hij", r3(q[:, :, :12], p3), r3(k[:, :, :12], p3))
    p3s = p3 + torch.tensor([[0.5, -0.25, 2.0]], dtype=torch.float64)
    s3s = torch.einsum("ihd,jhd->hij", r3(q[:, :, :12], p3s), r3(k[:, :, :12], p3s))
    torch.testing.assert_close(s3, s3s)


def test_rope_1d_reduces_to_standard_rotary() -> None:
    D, T = 8, 5
    inv_freq = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    rope = RotaryND(D, n_axes=1, periods=2 * math.pi / inv_freq)
    x = torch.randn(T, 1, D, dtype=torch.float64)
    pos = torch.arange(T, dtype=torch.float64).unsqueeze(1)
    # the textbook form: pair (x_i, x_{i + D/2}) as a complex number times e^{i t w_i}
    z = torch.complex(x[..., : D // 2], x[..., D // 2:])
    zr = z * torch.polar(torch.ones(T, 1, D // 2, dtype=torch.float64),
                         pos.view(T, 1, 1) * inv_freq)
    torch.testing.assert_close(rope(x, pos), torch.cat([zr.real, zr.imag], -1))


@pytest.mark.parametrize("make", [lambda: tokens.causal(6), lambda: tokens.window(6, 1),
                                  lambda: tokens.bipartite(4, 6, causal=True)])
def test_batched_sequences(make) -> None:
    torch.manual_seed(4)
    tg = make()
    q = torch.randn(3, tg.num_queries, 2, 4)
    k, v = torch.randn(3, tg.num_keys, 2, 4), torch.randn(3, tg.num_keys, 2, 4)
    for dense in (True, False):
        out = token_attention(q, k, v, tg, dense=dense)
        for b in range(3):
            torch.testing.assert_close(out[b], token_attention(q[b], k[b], v[b], tg),
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batched", [False, True])
def test_dense_path_checks_heads_head_dim_and_dtype_before_running(batched) -> None:
    """The dense kinds ran SDPA unchecked: one key/value head broadcast over the query heads
    (the sparse path refused it) and a dtype mismatch gave SDPA's RuntimeError. Both paths now
    check first; a per-edge bias on the dense path raises batched as well as unbatched."""
    T, H, D = 4, 2, 4
    lead = (3,) if batched else ()
    q = torch.randn(*lead, T, H, D)
    one_head = torch.randn(*lead, T, 1, D)
    for tg in (tokens.full(T), tokens.causal(T)):
        for dense in (True, False):
            with pytest.raises(ValueError, match="'q', 'k', 'v' must share the head count 2"):
                token_attention(q, one_head, one_head, tg, dense=dense)
            with pytest.raises(ValueError, match="'q', 'k', 'v' must share the head count 2"):
                token_attention(q, q, one_head, tg, dense=dense)
            with pytest.raises(ValueError, match="'k' must have head dim 4"):
                token_attention(q, q[..., :3], q, tg, dense=dense)
            with pytest.raises(TypeError, match="'k' has dtype torch.float64"):
                token_attention(q, q.double(), q, tg, dense=dense)
            with pytest.raises(TypeError, match="'q' must be a floating-point tensor"):
                token_attention(q.long(), q.long(), q.long(), tg, dense=dense)
        with pytest.raises(ValueError, match="'bias'"):
            token_attention(q, q, q, tg, bias=torch.zeros(tg.num_edges))
        out = token_attention(q, q, q, tg, bias=torch.zeros(tg.num_edges), dense=False)
        torch.testing.assert_close(out, token_attention(q, q, q, tg), atol=1e-5, rtol=1e-5)


def test_builders_refuse_bool_float_and_negative_arguments() -> None:
    """Accepted silently before (a bool taken as 0/1, a float size, a negative k giving an
    empty graph) or failing with torch messages that did not name the argument."""
    x = torch.randn(4, 3)
    cases = [
        (lambda: tokens.window(4, True), ValueError, "w must be an int >= 0, got True"),
        (lambda: tokens.window(4, 1, causal=1), TypeError, "'causal' must be a bool"),
        (lambda: tokens.dilated(4, 1, True), ValueError, "dilation must be an int >= 1"),
        (lambda: tokens.full(True), ValueError, "T must be an int >= 0, got True"),
        (lambda: tokens.causal(2.0), ValueError, "T must be an int >= 0, got 2.0"),
        (lambda: tokens.knn(x, -1), ValueError, "k must be an int >= 1, got -1"),
        (lambda: tokens.knn(x, True), ValueError, "k must be an int >= 1, got True"),
        (lambda: tokens.knn(x, 1.0), ValueError, "k must be an int >= 1, got 1.0"),
        (lambda: tokens.knn(x.long(), 1), ValueError, r"x must be a floating \[T, D\]"),
        (lambda: tokens.sink_window(4, 1, 1.5), ValueError, "window must be an int >= 1"),
        (lambda: tokens.sink_window(-2, 1, 1), ValueError, "T must be an int >= 0, got -2"),
        (lambda: tokens.sink_window(4, True, 1), ValueError, "sinks must be an int >= 0"),
        (lambda: tokens.grid((2, 2), -1), ValueError, "radius must be an int >= 0, got -1"),
        (lambda: tokens.grid((2, 2), 1.5), ValueError, "radius must be an int >= 0, got 1.5"),
        (lambda: tokens.memory(2, True), ValueError, "slots must be an int >= 0, got True"),
        (lambda: tokens.memory(2, 1, slots_attend=0), TypeError, "'slots_attend' must be"),
        (lambda: tokens.multiscale(4, 1, 1), ValueError, "windows and dilations must be"),
        (lambda: tokens.bipartite(2, 3, causal="yes"), TypeError, "'causal' must be a bool"),
        (lambda: TokenGraph(torch.zeros(2, 0, dtype=torch.long), -1, -1), ValueError,
         "num_queries must be an int >= 0, got -1"),
        (lambda: TokenGraph(torch.zeros(2, 1, dtype=torch.long), 1.5, 1), ValueError,
         "num_queries must be an int >= 0, got 1.5"),
        (lambda: TokenGraph(torch.zeros(2, 1, dtype=torch.long), 1, True), ValueError,
         "num_keys must be an int >= 0, got True"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    assert tokens.knn(x, 10).num_edges == 12  # k above T - 1 still caps at the other tokens


def test_rope_validates_prefix_dtype_and_periods() -> None:
    """A negative prefix broadcast a one-row slice (5 tokens in, 10 out); prefix=True counted
    as 1; integer x was rotated by truncated int64 angles; a zero period gave NaN."""
    rope = RotaryND(8, 2)
    x = torch.randn(5, 2, 8)
    with pytest.raises(ValueError, match="prefix must be an int >= 0, got -1"):
        rope(x, torch.randn(6, 2), prefix=-1)
    with pytest.raises(ValueError, match="prefix must be an int >= 0, got True"):
        rope(x, torch.randn(4, 2), prefix=True)
    with pytest.raises(ValueError, match="prefix must be <= the 5 tokens"):
        rope(x, torch.randn(0, 2), prefix=6)
    with pytest.raises(TypeError, match="x must be a floating tensor, got dtype torch.int64"):
        rope(torch.ones(3, 1, 8, dtype=torch.long), torch.full((3, 2), 0.3))
    with pytest.raises(ValueError, match=r"pos must be a real \[T, 2\]"):
        rope(x, torch.ones(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="periods .* must be finite and > 0"):
        RotaryND(4, 1, periods=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="periods .* must be finite and > 0"):
        RotaryND(4, 1, base=0.0)
    with pytest.raises(ValueError, match="n_axes must be an int >= 1"):
        RotaryND(8, 0)
    assert rope(x, torch.randn(0, 2), prefix=5).equal(x)  # all prefix: unrotated
    assert rope(x[:0], torch.randn(0, 2)).shape == (0, 2, 8)


def test_sizes_and_flags_in_numpy_or_tensor_form() -> None:
    """The checks refuse bools and floats as sizes but take what a caller may hold: NumPy
    ints and bools, 0-d tensors (as before them)."""
    import numpy as np

    ei = torch.tensor([[0, 1], [1, 2]])
    g = TokenGraph(ei, torch.tensor(3), np.int64(3))
    assert (g.num_queries, g.num_keys) == (3, 3) and isinstance(g.num_queries, int)
    x = torch.randn(5, 4)
    assert torch.equal(tokens.knn(x, 2, loop=np.True_).graph.edge_index,
                       tokens.knn(x, 2, loop=True).graph.edge_index)
    assert torch.equal(tokens.dilated(6, 2, 2, causal=np.False_).graph.edge_index,
                       tokens.dilated(6, 2, 2, causal=False).graph.edge_index)
