r"""NeuroGame attention: game-theoretic fields and couplings, mean-field Gibbs marginals.

From "NeuroGame Transformer: Gibbs-Inspired Attention Driven by Game Theory and Statistical
Physics" (Bouchaffra et al., 2026), implemented from the abstract's equations
(``../shared/papers/TOKEN_PAPERS.md`` section 5; the released code's evaluated path does not
use the mechanism). Tokens are players of a cooperative game with coalition value
:math:`v(C) = \mathrm{ReLU}(c\,\|\sum_{i\in C} W_v\mathbf{x}_i\|_2)` and Ising spins with energy
:math:`H(\mathbf{s}) = -\sum_{i<j} J_{ij}s_is_j - \sum_i h_is_i`:

* field :math:`h_i = a\,\phi_i + (1-a)\,\beta_i` with Shapley values :math:`\phi` (Monte-Carlo
  over random permutations) and Banzhaf indices :math:`\beta` (Monte-Carlo over uniform
  coalitions), gate :math:`a = \sigma(g)` learned — both estimators are unbiased (tested
  against exact enumeration for :math:`N \le 10`);
* couplings :math:`J_{ij} = \mathbb{E}_S[v(S\cup\{i,j\}) - v(S\cup\{i\}) - v(S\cup\{j\}) +
  v(S)]` (the Banzhaf interaction index, :math:`S` uniform over subsets of the other tokens),
  estimated only on the pairs joined by an edge of a sparse token graph (in either direction;
  a pair joined twice counts once), symmetric with zero diagonal;
* marginals by damped mean field, i.e. message passing over those edges:

  .. math::
      m_i \leftarrow (1-\eta)\,m_i + \eta\tanh\Big(\tfrac{1}{\gamma}\big(h_i +
          \textstyle\sum_{j\in\mathcal{N}(i)} J_{ij}m_j\big)\Big),

  :math:`\eta = 0.7`, :math:`\gamma = 0.25`, at most 25 iterations, tolerance 1e-4. The map is
  a contraction, so the fixed point is unique and the iteration converges, when
  :math:`\|J\|_2/\gamma < 1` (:func:`contraction_factor`).
* read-out (reconstructed; the paper's was not available): attention weights
  :math:`p_i \propto (1 + m_i)/2`, pooled output :math:`\mathbf{y} = \sum_i p_i W_v\mathbf{x}_i`.

Shapes:
    - **input:** ``x [N, D]``, a :class:`~graphattn.tokens.TokenGraph` (the coupling edges)
    - **output:** ``y [D]``, marginals ``m [N]``
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from ... import ops
from ...tokens import TokenGraph
from ._checks import check_int, check_tokens


def coalition_value(v: Tensor, masks: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """:math:`v(C) = \\mathrm{ReLU}(c\\|\\sum_{i\\in C} v_i\\|)` for ``masks [..., N]`` (0/1)."""
    return torch.relu(c * (masks.to(v.dtype) @ v).norm(dim=-1))


def exact_shapley(value, n: int) -> Tensor:
    """Exact Shapley values of a set function ``value(mask [K, n]) -> [K]`` (``n <= 12``)."""
    masks = torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.float64)
    vals = value(masks)
    size = masks.sum(1)
    phi = torch.zeros(n, dtype=torch.float64)
    index = {tuple(m.int().tolist()): k for k, m in enumerate(masks)}
    for k, m in enumerate(masks):
        s = int(size[k])
        w = math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) if s < n else 0.0
        for i in range(n):
            if m[i] == 0:
                mi = m.clone()
                mi[i] = 1
                phi[i] += w * (vals[index[tuple(mi.int().tolist())]] - vals[k])
    return phi


def exact_banzhaf(value, n: int) -> Tensor:
    """Exact Banzhaf indices: mean over all coalitions of others of the marginal gain."""
    masks = torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.float64)
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        without = masks[masks[:, i] == 0]
        with_i = without.clone()
        with_i[:, i] = 1
        out[i] = (value(with_i) - value(without)).mean()
    return out


def mc_shapley(value, n: int, samples: int, generator: torch.Generator | None = None,
               dtype=torch.float64) -> Tensor:
    """Unbiased Shapley estimate from ``samples`` random permutations (all players per
    permutation, ``samples * (n + 1)`` value calls in one batch)."""
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(samples)])
    ranks = torch.argsort(perms, dim=1)  # position of each player
    steps = torch.arange(n + 1).view(1, -1, 1)
    masks = (ranks.unsqueeze(1) < steps).to(dtype)  # [K, n+1, n]: first t players
    vals = value(masks.reshape(-1, n)).view(samples, n + 1)
    gain = vals[:, 1:] - vals[:, :-1]  # gain of the t-th player of each permutation
    return torch.zeros(samples, n, dtype=vals.dtype).scatter(1, perms, gain).mean(0)


def mc_banzhaf(value, n: int, samples: int, generator: torch.Generator | None = None,
               dtype=torch.float64) -> Tensor:
    """Unbiased Banzhaf estimate from ``samples`` uniform coalitions (``2 n`` calls each)."""
    S = (torch.rand(samples, n, generator=generator) < 0.5).to(dtype)
    eye = torch.eye(n, dtype=dtype)
    with_i = torch.maximum(S.unsqueeze(1), eye)  # [K, n, n]
    without_i = S.unsqueeze(1) * (1 - eye)
    v1 = value(with_i.reshape(-1, n)).view(samples, n)
    v0 = value(without_i.reshape(-1, n)).view(samples, n)
    return (v1 - v0).mean(0)


def mc_interaction(value, n: int, edges: Tensor, samples: int,
                   generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
    """Unbiased Banzhaf interaction index for each edge ``(i, j)`` of ``edges [2, E]``."""
    i, j = edges
    E = i.numel()
    S = (torch.rand(samples, 1, n, generator=generator) < 0.5).to(dtype).expand(samples, E, n)
    ei = torch.nn.functional.one_hot(i, n).to(dtype)
    ej = torch.nn.functional.one_hot(j, n).to(dtype)
    base = S * (1 - ei) * (1 - ej)
    calls = torch.stack([torch.maximum(torch.maximum(base, ei), ej), torch.maximum(base, ei),
                         torch.maximum(base, ej), base], 0)  # [4, K, E, n]
    v = value(calls.reshape(-1, n)).view(4, samples, E)
    return (v[0] - v[1] - v[2] + v[3]).mean(0)


def exact_gibbs_marginals(h: Tensor, J: Tensor, gamma: float) -> Tensor:
    """:math:`\\mathbb{E}[s_i]` under :math:`P(s) \\propto e^{-H(s)/\\gamma}` by enumeration
    (``N <= 16``); ``J [N, N]`` symmetric with zero diagonal."""
    n = h.numel()
    s = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=n)), dtype=h.dtype)
    energy = -0.5 * ((s @ J) * s).sum(1) - s @ h
    p = torch.softmax(-energy / gamma, dim=0)
    return p @ s


def contraction_factor(J: Tensor, gamma: float) -> float:
    """:math:`\\|J\\|_2/\\gamma`; below 1 the mean-field map is a contraction."""
    return float(torch.linalg.matrix_norm(J, ord=2) / gamma)


def mean_field(h: Tensor, edges: Tensor, weights: Tensor, gamma: float = 0.25,
               damping: float = 0.7, iters: int = 25, tol: float = 1e-4
               ) -> tuple[Tensor, float, int]:
    """Damped mean-field iteration as message passing over ``edges [2, E]`` (``j -> i``) with
    couplings ``weights [E]``; returns ``(m [N], final residual, iterations)``."""
    if not isinstance(edges, Tensor) or edges.dim() != 2 or edges.size(0) != 2:
        raise ValueError(f"'edges' must be a [2, E] tensor, got "
                         f"{list(getattr(edges, 'shape', [])) or type(edges).__name__}")
    if not isinstance(weights, Tensor) or tuple(weights.shape) != (edges.size(1),):
        got = list(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"'weights' must have shape [E] = [{edges.size(1)}] (one coupling per "
                         f"edge), got {got}")
    n = h.numel()
    from ...index import build_graph

    graph = build_graph(edges, n, cache=False)
    m = torch.zeros_like(h)
    res, done = float("inf"), 0
    for step in range(1, iters + 1):
        done = step
        field = h + (ops.aggregate((weights * m[edges[0]]).unsqueeze(1), graph).squeeze(1)
                     if edges.numel() else 0)
        new = (1 - damping) * m + damping * torch.tanh(field / gamma)
        res = float((new - m).detach().abs().max()) if n else 0.0
        m = new
        if res < tol:
            break
    return m, res, done


class NeuroGameAttention(nn.Module):
    """NeuroGame attention pooling (see the module docstring).

    Args:
        dim: ``D``.
        gamma: Temperature :math:`\\gamma`.
        damping: :math:`\\eta`.
        iters, tol: Mean-field stopping rule.
        samples: Monte-Carlo samples for φ, β and J (an int >= 1).
        value_scale: ``c`` of the coalition value.
    """

    def __init__(self, dim: int, gamma: float = 0.25, damping: float = 0.7, iters: int = 25,
                 tol: float = 1e-4, samples: int = 16, value_scale: float = 1.0) -> None:
        super().__init__()
        check_int(samples, "samples", 1)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(()))
        self.gamma, self.damping, self.iters, self.tol = gamma, damping, iters, tol
        self.samples, self.c = samples, value_scale

    def forward(self, x: Tensor, tg: TokenGraph, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
        check_tokens(x, "x", self.w_v.in_features, self.w_v.weight.dtype, "[N, D]")
        if x.size(0) != tg.num_keys or tg.num_keys != tg.num_queries:
            raise ValueError(f"x must be [N, D] with N = {tg.num_keys} tokens of a self graph")
        if x.size(0) == 0:
            raise ValueError("'x' must hold at least one token: the pooled output is a "
                             "distribution over the tokens")
        n = x.size(0)
        v = self.w_v(x)

        def value(masks: Tensor) -> Tensor:
            return coalition_value(v, masks, self.c)

        a = torch.sigmoid(self.gate)
        h = (a * mc_shapley(value, n, self.samples, generator, v.dtype)
             + (1 - a) * mc_banzhaf(value, n, self.samples, generator, v.dtype))
        ei = tg.edge_index[:, tg.edge_index[0] != tg.edge_index[1]]
        key = torch.minimum(ei[0], ei[1]) * n + torch.maximum(ei[0], ei[1])
        und = torch.unique(key)  # one estimate per unordered pair: J symmetric
        pairs = torch.stack([und // n, und % n])
        j_und = mc_interaction(value, n, pairs, self.samples, generator, v.dtype)
        # the Ising field of i sums J_ij m_j over every pair {i, j} once: each pair's coupling
        # acts in both directions (also when the graph holds one, e.g. a kNN graph) and a
        # duplicated edge does not count twice
        both = torch.cat([pairs, pairs.flip(0)], 1)
        m, _, _ = mean_field(h, both, torch.cat([j_und, j_und]), self.gamma, self.damping,
                             self.iters, self.tol)
        p = (1 + m) / 2
        p = p / p.sum().clamp_min(1e-12)
        return p @ v, m
