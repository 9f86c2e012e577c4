r"""Memory-Keyed Attention: MKA-Full and the route-fused FastMKA.

From "Memory-Keyed Attention for Efficient Long-Context Reasoning" (MKA / FastMKA; Liu, Yu,
Lengerich, Wu; 2026), mechanism as in its released layers (``../shared/papers/
TOKEN_PAPERS.md`` section 4). Memory levels per position ``j``: local
:math:`L_1[j] = \mathbf{x}_j`, session :math:`L_2[j] = \mathbf{s}_j` with the causal EMA
:math:`\mathbf{s}_j = \beta\mathbf{s}_{j-1} + (1-\beta)\mathbf{x}_j` (:math:`\mathbf{s}_0 = 0`),
and optional long-term :math:`L_3[j]` (external memory vectors, repeated or truncated to the
length). A router :math:`\boldsymbol\lambda_i = \operatorname{softmax}(\mathrm{MLP}(\mathbf{q}_i))
\in \Delta^{L}` weighs them.

MKA-Full (``L`` causal attentions with shared :math:`W_k, W_v`, routed by the *query*):

.. math::
    \mathbf{y}_i = W_o\sum_{l}\lambda_{i,l}\sum_{j\le i}\operatorname{softmax}_j\Big(
        \frac{\mathbf{q}_i\cdot W_k L_l[j]}{\sqrt{d_h}}\Big) W_v L_l[j]

FastMKA (memories fused per *key* position with the key's own router weights, then one
attention, so a KV cache can hold the fused keys):

.. math::
    \mathbf{f}_j = \sum_l \lambda_{j,l} L_l[j], \qquad
    \mathbf{y}_i = W_o\sum_{j\le i}\operatorname{softmax}_j\Big(\frac{\mathbf{q}_i\cdot
        W_k\mathbf{f}_j}{\sqrt{d_h}}\Big) W_v\mathbf{f}_j

The attention runs on a :class:`~graphattn.tokens.TokenGraph` (causal by default: the dense
SDPA path; any causal pattern, e.g. a window or a KV budget, runs the fused sparse core).

Shapes:
    - **input:** ``x [B, T, D]``, optional ``long_term [M, D]`` or ``[B, M, D]``
    - **output:** ``[B, T, D]``
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from ...tokens import TokenGraph, causal, token_attention
from ._checks import check_bool, check_int, check_tokens


def causal_ema(x: Tensor, beta: float, chunk: int = 64) -> Tensor:
    r"""The causal EMA :math:`\mathbf{s}_j = \beta\mathbf{s}_{j-1} + (1-\beta)\mathbf{x}_j`
    along dimension ``-2`` (``x [..., T, D]``), vectorised: within chunks of ``chunk``
    positions a lower-triangular matrix of powers :math:`\beta^{j-m}` (no overflow, unlike a
    global :math:`\beta^{-m}` rescaling), and the carried state across chunks (``chunk``: an
    int >= 1)."""
    _check_beta(beta)
    check_int(chunk, "chunk", 1)
    T = x.size(-2)
    if T == 0:
        return x.clone()
    C = min(chunk, T)
    idx = torch.arange(C, device=x.device, dtype=x.dtype)
    diff = idx.unsqueeze(1) - idx.unsqueeze(0)
    W = torch.where(diff >= 0, torch.tensor(beta, dtype=x.dtype, device=x.device) ** diff.clamp(
        min=0), torch.zeros((), dtype=x.dtype, device=x.device)) * (1 - beta)
    carry_w = torch.tensor(beta, dtype=x.dtype, device=x.device) ** (idx + 1)  # beta^{j+1}
    out, state = [], None
    for s in range(0, T, C):
        xc = x[..., s: s + C, :]
        n = xc.size(-2)
        yc = W[:n, :n] @ xc
        if state is not None:
            yc = yc + carry_w[:n].unsqueeze(-1) * state.unsqueeze(-2)
        out.append(yc)
        state = yc[..., -1, :]
    return torch.cat(out, dim=-2)


def _check_beta(beta: object) -> None:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be a float in [0, 1), got {beta!r}")


def causal_ema_loop(x: Tensor, beta: float) -> Tensor:
    """The sequential reference of :func:`causal_ema` (as in the released code)."""
    s = torch.zeros_like(x[..., 0, :])
    out = []
    for j in range(x.size(-2)):
        s = beta * s + (1 - beta) * x[..., j, :]
        out.append(s)
    return torch.stack(out, dim=-2)


class _MKABase(nn.Module):
    def __init__(self, dim: int, heads: int, beta: float, long_term: bool, act: nn.Module
                 ) -> None:
        super().__init__()
        check_int(dim, "dim", 1)
        check_int(heads, "heads", 1)
        _check_beta(beta)
        check_bool(long_term, "long_term")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.beta = dim, heads, beta
        self.levels = 3 if long_term else 2
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.w_o = nn.Linear(dim, dim, bias=False)
        self.router = nn.Sequential(nn.Linear(dim, dim // 2), act, nn.Linear(dim // 2,
                                                                             self.levels))

    def memories(self, x: Tensor, long_term: Tensor | None) -> list[Tensor]:
        """``[L1, L2(, L3)]``, each ``[B, T, D]``."""
        check_tokens(x, "x", self.dim, self.w_q.weight.dtype)
        if self.levels == 2 and long_term is not None:
            raise ValueError("'long_term' memories were passed to a layer built without the "
                             "long-term level; build it with long_term=True")
        mem = [x, causal_ema(x, self.beta)]
        if self.levels == 3:
            B, T, D = x.shape
            if long_term is None:
                lt = x.new_zeros(B, T, D)
            else:
                rank3 = isinstance(long_term, Tensor) and long_term.dim() == 3
                check_tokens(long_term, "long_term", D, x.dtype,
                             "[B, M, D]" if rank3 else "[M, D]")
                if rank3 and long_term.size(0) != B:
                    raise ValueError(f"'long_term' must have B={B} rows of memories (or be "
                                     f"[M, D], shared), got {list(long_term.shape)}")
                lt = long_term if rank3 else long_term.expand(B, -1, -1)
                reps = -(-T // max(lt.size(1), 1))
                lt = lt.repeat(1, reps, 1)[:, :T] if lt.size(1) else x.new_zeros(B, T, D)
            mem.append(lt)
        return mem

    def route(self, q: Tensor) -> Tensor:
        """Router weights ``[B, T, L]`` (rows sum to 1)."""
        return torch.softmax(self.router(q), dim=-1)

    def _heads(self, t: Tensor) -> Tensor:
        return t.view(*t.shape[:-1], self.heads, self.dim // self.heads)


class MKAttention(_MKABase):
    """MKA-Full (see the module docstring).

    Args:
        dim: ``D`` (divisible by ``heads``).
        heads: Attention heads (an int >= 1).
        beta: EMA factor of the session memory (0.9), in ``[0, 1)``.
        long_term: Add the third (long-term) memory level; only then may ``forward`` take
            ``long_term`` memories (``ValueError`` otherwise).
    """

    def __init__(self, dim: int, heads: int = 4, beta: float = 0.9, long_term: bool = False
                 ) -> None:
        super().__init__(dim, heads, beta, long_term, nn.GELU())

    def forward(self, x: Tensor, tg: TokenGraph | None = None, long_term: Tensor | None = None,
                return_router: bool = False):
        check_tokens(x, "x", self.dim, self.w_q.weight.dtype)
        tg = tg if tg is not None else causal(x.size(1))
        q = self.w_q(x)
        lam = self.route(q)
        qh = self._heads(q)
        out = 0
        for level, mem in enumerate(self.memories(x, long_term)):
            o = token_attention(qh, self._heads(self.w_k(mem)), self._heads(self.w_v(mem)), tg)
            out = out + lam[..., level, None] * o.flatten(-2)
        y = self.w_o(out)
        return (y, lam) if return_router else y


class FastMKAttention(_MKABase):
    """FastMKA, route-fused (see the module docstring). Arguments as :class:`MKAttention`."""

    def __init__(self, dim: int, heads: int = 4, beta: float = 0.9, long_term: bool = False
                 ) -> None:
        super().__init__(dim, heads, beta, long_term, nn.SiLU())

    def forward(self, x: Tensor, tg: TokenGraph | None = None, long_term: Tensor | None = None,
                return_router: bool = False):
        check_tokens(x, "x", self.dim, self.w_q.weight.dtype)
        tg = tg if tg is not None else causal(x.size(1))
        q = self.w_q(x)
        lam = self.route(q)
        fused = (torch.stack(self.memories(x, long_term), -1) * lam.unsqueeze(-2)).sum(-1)
        o = token_attention(self._heads(q), self._heads(self.w_k(fused)),
                            self._heads(self.w_v(fused)), tg)
        y = self.w_o(o.flatten(-2))
        return (y, lam) if return_router else y
