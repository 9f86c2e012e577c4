r"""Differential attention on a token graph (PC-CrossDiff's cross-modal form).

From "PC-CrossDiff: point-cluster dual-level cross-modal differential attention" (Tan et
al., AAAI 2026; the DIFF-Transformer operator applied across modalities;
``../shared/papers/TOKEN_PAPERS.md`` section 2). Queries come from one token set, keys and
values from another (or the same); ``Q`` and ``K`` split into ``2H`` sub-heads of ``d``
channels and ``V`` into ``H`` heads of ``2d``. On the same edges :math:`\mathcal{N}(i)`:

.. math::
    A^{(1)}_{ij} = \operatorname{softmax}_{j\in\mathcal{N}(i)}
        \frac{\mathbf{q}^{(1)}_i\cdot\mathbf{k}^{(1)}_j}{\sqrt d}, \quad
    A^{(2)}_{ij} = \operatorname{softmax}_{j\in\mathcal{N}(i)}
        \frac{\mathbf{q}^{(2)}_i\cdot\mathbf{k}^{(2)}_j}{\sqrt d},

.. math::
    \lambda = e^{\langle\boldsymbol\lambda_{q1},\boldsymbol\lambda_{k1}\rangle}
        - e^{\langle\boldsymbol\lambda_{q2},\boldsymbol\lambda_{k2}\rangle} + \lambda_{init},
    \qquad
    \mathbf{o}_i = (1-\lambda_{init})\,\mathrm{LN}\Big(\sum_j (A^{(1)}_{ij} - \lambda
        A^{(2)}_{ij})\,\mathbf{v}_j\Big),

LN without affine parameters over each head's ``2d`` channels, heads concatenated, then
:math:`W_o`; bias-free projections, :math:`\lambda_{init} = 0.36`, λ vectors
:math:`\sim\mathcal{N}(0, 0.1)`. Both softmaxes and sums run in
:func:`graphattn.ops.edge_attention` (or the dense path), so any token graph works: self
patterns, the full bipartite graph (:func:`graphattn.tokens.bipartite`, the default, the
paper's intent) or the causal-bipartite one (``causal=True``). With as many queries as keys
the latter is the released code's default mask (query ``i`` reads keys ``j <= i``, used when
no mask is passed); with ``Tq != Tk`` the released code keeps that index-aligned mask, while
:func:`~graphattn.tokens.bipartite` aligns the prefixes in proportion (query ``i`` reads the
first ``floor((i + 1) Tk / Tq)`` keys): pass ``TokenGraph`` edges of your own for the other.

Shapes:
    - **input:** ``x_q [B, Tq, D]``, ``x_kv [B, Tk, D]``
    - **output:** ``[B, Tq, D]``
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...tokens import TokenGraph, bipartite, token_attention
from ._checks import check_int, check_tokens


class DifferentialAttention(nn.Module):
    """Differential attention (see the module docstring).

    Args:
        dim: ``D`` (divisible by ``2 * heads``).
        heads: ``H`` (an int >= 1).
        lambda_init: :math:`\\lambda_{init}`.
        causal: Default edge set when none is passed: causal-bipartite instead of full.
    """

    def __init__(self, dim: int, heads: int = 4, lambda_init: float = 0.36,
                 causal: bool = False) -> None:
        super().__init__()
        check_int(dim, "dim", 1)
        check_int(heads, "heads", 1)
        if dim % (2 * heads):
            raise ValueError(f"dim ({dim}) must be divisible by 2 * heads ({2 * heads})")
        self.dim, self.heads, self.d = dim, heads, dim // (2 * heads)
        self.lambda_init, self.causal = lambda_init, causal
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.w_o = nn.Linear(dim, dim, bias=False)
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(0.1 * torch.randn(self.d)) for _ in range(4))

    def lam(self) -> Tensor:
        return (torch.exp((self.lambda_q1 * self.lambda_k1).sum())
                - torch.exp((self.lambda_q2 * self.lambda_k2).sum()) + self.lambda_init)

    def maps(self, x_q: Tensor, x_kv: Tensor, tg: TokenGraph) -> tuple[Tensor, Tensor]:
        """The two attention outputs ``(A1 V, A2 V)``, each ``[B, Tq, H, 2d]``."""
        B, Tq, _ = x_q.shape
        Tk = x_kv.size(1)
        H, d = self.heads, self.d
        q = self.w_q(x_q).view(B, Tq, H, 2, d)
        k = self.w_k(x_kv).view(B, Tk, H, 2, d)
        v = self.w_v(x_kv).view(B, Tk, H, 2 * d)
        a1 = token_attention(q[..., 0, :], k[..., 0, :], v, tg)
        a2 = token_attention(q[..., 1, :], k[..., 1, :], v, tg)
        return a1, a2

    def forward(self, x_q: Tensor, x_kv: Tensor | None = None, tg: TokenGraph | None = None
                ) -> Tensor:
        x_kv = x_q if x_kv is None else x_kv
        D, dtype = self.w_q.in_features, self.w_q.weight.dtype
        check_tokens(x_q, "x_q", D, dtype)
        check_tokens(x_kv, "x_kv", D, dtype)
        if x_q.size(0) != x_kv.size(0):
            raise ValueError(f"x_q and x_kv must be [B, T, D] with the same B, got "
                             f"{tuple(x_q.shape)} and {tuple(x_kv.shape)}")
        tg = tg if tg is not None else bipartite(x_q.size(1), x_kv.size(1), self.causal)
        a1, a2 = self.maps(x_q, x_kv, tg)
        o = a1 - self.lam() * a2
        o = (1 - self.lambda_init) * F.layer_norm(o, (o.size(-1),))
        return self.w_o(o.flatten(-2))
