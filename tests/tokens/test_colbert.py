"""ColBERT-Att: MaxSim reduction, dense == core path, invariances, monotonicity, importances."""

from __future__ import annotations

import math

import pytest
import torch

from graphattn import ops
from graphattn.nn.tokens import ColBERTAttention, attention_importance


def _data(Bq=3, Bd=5, Lq=4, Ld=6, D=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(Bq, Lq, D, generator=g, dtype=dtype)
    d = torch.randn(Bd, Ld, D, generator=g, dtype=dtype)
    qm = torch.rand(Bq, Lq, generator=g) > 0.2
    dm = torch.rand(Bd, Ld, generator=g) > 0.3
    qm[:, 0] = True
    dm[:, 0] = True
    qa = torch.rand(Bq, Lq, generator=g, dtype=dtype) * 2
    da = torch.rand(Bd, Ld, generator=g, dtype=dtype) * 2
    return q, d, qm, dm, qa, da


def _maxsim(q, d, qm, dm):
    qn, dn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(d, dim=-1)
    out = torch.zeros(q.shape[0], d.shape[0], dtype=q.dtype)
    for a in range(q.shape[0]):
        for b in range(d.shape[0]):
            sim = qn[a][qm[a]] @ dn[b][dm[b]].T
            out[a, b] = sim.max(1).values.sum()
    return out


def _colbert_att(q, d, qm, dm, qa, da, beta, gamma):
    """The module-docstring score written as a loop: ``sum_i exp(beta a_qi) max_j (a_dj^gamma
    E_qi . E_dj)`` over valid tokens, L2-normalised embeddings."""
    qn, dn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(d, dim=-1)
    out = torch.zeros(q.shape[0], d.shape[0], dtype=q.dtype)
    for a in range(q.shape[0]):
        for b in range(d.shape[0]):
            total = 0.0
            for i in range(q.shape[1]):
                if not qm[a, i]:
                    continue
                best = max(float(da[b, j]) ** gamma * float(qn[a, i] @ dn[b, j])
                           for j in range(d.shape[1]) if dm[b, j])
                total += math.exp(beta * float(qa[a, i])) * best
            out[a, b] = total
    return out


def test_scores_equal_the_explicit_loop_with_random_importances():
    """Dense path, core path and ``max_matches`` equal the per-token loop with random query and
    document importances (replacing ``a_dj^gamma`` by a per-document constant, or moving it
    outside the max, changes the scores)."""
    q, d, qm, dm, qa, da = _data(seed=5)
    layer = ColBERTAttention(beta=0.9, gamma=0.7)
    ref = _colbert_att(q, d, qm, dm, qa, da, 0.9, 0.7)
    torch.testing.assert_close(layer(q, d, qm, dm, qa, da), ref)
    pairs = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
                        ).flatten(1)
    torch.testing.assert_close(layer.score_pairs(q, d, pairs, qm, dm, qa, da), ref.flatten())
    # per query token: the best importance-weighted match, no query weight
    mm = layer.max_matches(q, d, qm, dm, da)
    for a, b, i in ((0, 0, 0), (1, 3, 2), (2, 4, 3), (0, 2, 1)):
        want = 0.0 if not qm[a, i] else _colbert_att(
            q[a:a + 1, i:i + 1], d[b:b + 1], qm[a:a + 1, i:i + 1], dm[b:b + 1],
            torch.zeros(1, 1, dtype=q.dtype), da[b:b + 1], 0.9, 0.7)[0, 0].item()
        assert abs(mm[a, b, i].item() - want) < 1e-12
    # the data tell per-token from per-document importances apart (mean over valid tokens)
    flat = _colbert_att(q, d, qm, dm, qa, (da * dm).sum(1, keepdim=True).expand_as(da)
                        / dm.sum(1, keepdim=True), 0.9, 0.7)
    assert (flat - ref).abs().max() > 0.05


def test_weights_none_is_maxsim_and_constant_importance_ranks_alike():
    q, d, qm, dm, _, _ = _data()
    layer = ColBERTAttention(beta=1.3, gamma=0.7)
    plain = layer(q, d, qm, dm)
    torch.testing.assert_close(plain, _maxsim(q, d, qm, dm))
    c = 0.8
    const = layer(q, d, qm, dm, torch.full(qm.shape, c, dtype=q.dtype),
                  torch.full(dm.shape, c, dtype=q.dtype))
    torch.testing.assert_close(const, plain * torch.exp(torch.tensor(1.3 * c)) * c ** 0.7,
                               check_dtype=False)
    assert torch.equal(const.argsort(1), plain.argsort(1))
    torch.testing.assert_close(ColBERTAttention(beta=0.0, gamma=0.0)(q, d, qm, dm, *_data()[4:]),
                               plain)


def test_dense_path_equals_core_path_values_and_gradients():
    q, d, qm, dm, qa, da = _data(seed=1)
    layer = ColBERTAttention(beta=0.9, gamma=0.5)
    q1, d1 = q.clone().requires_grad_(), d.clone().requires_grad_()
    q2, d2 = q.clone().requires_grad_(), d.clone().requires_grad_()
    dense = layer(q1, d1, qm, dm, qa, da, chunk=2)
    pairs = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
                        ).flatten(1)
    sparse = layer.score_pairs(q2, d2, pairs, qm, dm, qa, da)
    torch.testing.assert_close(sparse, dense.flatten())
    dense.sum().backward()
    sparse.sum().backward()
    torch.testing.assert_close(q1.grad, q2.grad)
    torch.testing.assert_close(d1.grad, d2.grad)
    sub = pairs[:, [4, 0, 9]]
    torch.testing.assert_close(layer.score_pairs(q, d, sub, qm, dm, qa, da),
                               dense.detach()[sub[0], sub[1]])
    assert layer.score_pairs(q, d, pairs[:, :0]).numel() == 0


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_core_path_on_both_backends(backend):
    if backend == "native" and not ops.native_available():
        pytest.skip("graphattn._C not built")
    q, d, qm, dm, qa, da = _data(seed=2, dtype=torch.float32)
    layer = ColBERTAttention()
    pairs = torch.tensor([[0, 1, 2, 2], [4, 0, 3, 1]])
    with ops.set_backend(backend):
        got = layer.score_pairs(q, d, pairs, qm, dm, qa, da)
    torch.testing.assert_close(got, layer(q, d, qm, dm, qa, da)[pairs[0], pairs[1]])


def test_token_order_invariance():
    q, d, qm, dm, qa, da = _data(seed=3)
    layer = ColBERTAttention()
    base = layer(q, d, qm, dm, qa, da)
    pd = torch.randperm(d.shape[1])
    torch.testing.assert_close(layer(q, d[:, pd], qm, dm[:, pd], qa, da[:, pd]), base)
    pq = torch.randperm(q.shape[1])
    torch.testing.assert_close(layer(q[:, pq], d, qm[:, pq], dm, qa[:, pq], da), base)
    # moving query tokens without their weights is not a symmetry
    shifted = torch.roll(qa, 1, dims=1)
    assert not torch.allclose(layer(q, d, qm, dm, shifted, da), base)


def test_monotone_in_query_importance():
    g = torch.Generator().manual_seed(4)
    q = torch.rand(1, 4, 6, generator=g, dtype=torch.float64)  # non-negative: matches >= 0
    d = torch.rand(2, 5, 6, generator=g, dtype=torch.float64)
    qa = torch.rand(1, 4, generator=g, dtype=torch.float64)
    layer = ColBERTAttention()
    base = layer(q, d, q_importance=qa)
    for i in range(4):
        up = qa.clone()
        up[0, i] += 0.5
        assert torch.all(layer(q, d, q_importance=up) >= base)


def test_attention_importance():
    A = torch.tensor([[[[0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 1.0]]]])  # [1,1,3,3]
    mask = torch.tensor([[True, True, False]])
    a = attention_importance(A, mask)
    # received: token 0 -> 0.75, token 1 -> 1.25 (row 2 is padding), normalised to mean 1
    torch.testing.assert_close(a, torch.tensor([[0.75, 1.25, 0.0]]))
    keep = torch.tensor([[False, True, True]])
    torch.testing.assert_close(attention_importance(A, mask, keep), torch.tensor([[0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="mask"):
        attention_importance(A, mask[:, :2])


def test_bad_inputs():
    q, d, qm, dm, qa, da = _data()
    layer = ColBERTAttention()
    with pytest.raises(ValueError, match="'q'"):
        layer(q[0], d)
    with pytest.raises(ValueError, match="d_mask"):
        layer(q, d, qm, dm[:, :2])
    with pytest.raises(ValueError, match="embedding size"):
        layer(q, d[..., :3])
    with pytest.raises(ValueError, match="pairs"):
        layer.score_pairs(q, d, torch.tensor([[0], [7]]))
    assert "beta=1.0" in repr(layer)


def test_padded_documents_give_finite_gradients_through_their_importances():
    """Importances from attention_importance are 0 on padding; with gamma in (0, 1) the weight
    a^gamma there must carry a zero gradient (its derivative is infinite at 0, which made every
    gradient NaN), on the dense path and through score_pairs; the values are unchanged."""
    q, d, qm, dm, _, _ = _data(seed=2)
    A = torch.rand(d.shape[0], 2, d.shape[1], d.shape[1], dtype=d.dtype).requires_grad_()
    layer = ColBERTAttention(beta=0.5, gamma=0.5)
    imp = attention_importance(A, dm)
    assert (imp[~dm] == 0).all() and (~dm).any()
    pairs = torch.tensor([[0, 1, 2], [4, 0, 3]])
    for score in (lambda: layer(q, d, qm, dm, None, attention_importance(A, dm)).sum(),
                  lambda: layer.score_pairs(q, d, pairs, qm, dm, None,
                                            attention_importance(A, dm)).sum()):
        A.grad = None
        score().backward(inputs=[A])
        assert torch.isfinite(A.grad).all() and A.grad.abs().sum() > 0
    w = layer.weights(None, torch.tensor([0.0, 0.25, -1.0]))[1]
    torch.testing.assert_close(w, torch.tensor([0.0, 0.5, 0.0]))
    assert ColBERTAttention(gamma=0.0).weights(None, torch.zeros(2))[1].tolist() == [1.0, 1.0]


def test_negative_gamma_dense_and_core_paths_agree():
    """With gamma < 0 a zero-importance document token has weight +inf; the dense path's
    empty-document guard turned its +inf best match into 0 (finite scores) while score_pairs
    returned inf. Only documents without valid tokens score 0 now."""
    torch.manual_seed(0)
    layer = ColBERTAttention(gamma=-0.5)
    q, d = torch.randn(2, 3, 4), torch.randn(3, 5, 4)
    di = torch.rand(3, 5) + 0.1
    di[0, 0] = 0
    pairs = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 2]])
    dense = layer(q, d, d_importance=di)[pairs[0], pairs[1]]
    core = layer.score_pairs(q, d, pairs, d_importance=di)
    assert torch.isinf(dense[:2]).all() and torch.isfinite(dense[2:]).all()
    torch.testing.assert_close(dense, core)
    # masked query tokens and fully masked documents still give 0, never NaN
    qm = torch.tensor([[True, False, True], [True, True, True]])
    dm = torch.ones(3, 5, dtype=torch.bool)
    dm[1] = False
    mm = layer.max_matches(q, d, qm, dm, di)
    assert mm[0, :, 1].eq(0).all() and mm[:, 1].eq(0).all() and not mm.isnan().any()


def test_empty_batches_and_documents():
    """B_d=0 crashed in torch.cat and L_d=0 in amax; empty documents score 0 (as score_pairs
    did), empty batches give empty results."""
    layer = ColBERTAttention()
    q, d = torch.randn(2, 3, 4), torch.randn(3, 5, 4)
    assert layer(q, d[:0]).shape == (2, 0)
    assert layer.max_matches(q, d[:0]).shape == (2, 0, 3)
    assert layer(q[:0], d).shape == (0, 3)
    empty = d[:, :0]
    assert layer(q, empty).equal(torch.zeros(2, 3))
    assert layer.max_matches(q, empty).equal(torch.zeros(2, 3, 3))
    pairs = torch.tensor([[0, 1], [2, 0]])
    torch.testing.assert_close(layer.score_pairs(q, empty, pairs), layer(q, empty)[0, :2] * 0)
    for chunk in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"chunk must be an int >= 1, got {chunk!r}"):
            layer(q, d, chunk=chunk)
    torch.testing.assert_close(layer(q, d, chunk=1), layer(q, d))


def test_masks_dtype_and_keep_are_checked():
    """A float mask of 0.5 counted as all-True, keep of shape [B, 1] or [T] broadcast, and a
    q/d dtype mismatch raised matmul's RuntimeError."""
    layer = ColBERTAttention()
    q, d = torch.randn(2, 3, 4), torch.randn(3, 5, 4)
    with pytest.raises(ValueError, match="'d_mask' must be a bool mask"):
        layer(q, d, d_mask=torch.full((3, 5), 0.5))
    with pytest.raises(ValueError, match=r"'q_mask' must have shape \[2, 3\]"):
        layer(q, d, q_mask=torch.ones(3, dtype=torch.bool))
    dm = torch.ones(3, 5, dtype=torch.bool)
    dm[0, 1:] = False
    torch.testing.assert_close(layer(q, d, d_mask=dm.long()), layer(q, d, d_mask=dm))
    with pytest.raises(TypeError, match="'d' has dtype torch.float32 but 'q' has torch.float64"):
        layer(q.double(), d)
    A = torch.softmax(torch.randn(2, 2, 4, 4), -1)
    m = torch.ones(2, 4, dtype=torch.bool)
    for keep in (torch.tensor([[True], [False]]), torch.tensor([True, True, False, True])):
        with pytest.raises(ValueError, match=r"'keep' must have shape \[2, 4\]"):
            attention_importance(A, m, keep)
    with pytest.raises(ValueError, match="'mask' must be a bool mask"):
        attention_importance(A, torch.full((2, 4), 0.5))
    torch.testing.assert_close(attention_importance(A, m.float()), attention_importance(A, m))
