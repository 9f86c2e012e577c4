r"""Item-aware attention (IAM) for LLM-based recommendation.

From "From Token to Item: Enhancing LLMs for Recommendation via Item-aware Attention
Mechanism" (IAM; Zhang, He, Chen, Cui, Ma; WWW 2026; ``../shared/papers/TOKEN_PAPERS.md``
section 1). Every token ``t`` carries an item id :math:`g(t)`; two attention layers restrict
ordinary causal softmax attention to complementary edge sets

.. math::
    \mathcal{N}_{\text{intra}}(i) = \{j \le i : g(j) = g(i)\}, \qquad
    \mathcal{N}_{\text{inter}}(i) = \{j \le i : g(j) \ne g(i)\},

whose union is the causal mask and whose intersection is empty
(:func:`graphattn.tokens.grouped`). A per-layer mode schedule (``"intra"``, ``"inter"``,
``"causal"``) stacks them; HatLLM's shallow-intra / deep-inter schedule is one setting.
Reconstructed: pre-norm residual blocks with separate Q/K/V per layer; tokens without keys
in a layer (the first item's tokens in an inter layer) get a zero attention output, so the
residual passes them through.

Shapes:
    - **input:** ``x [B, T, D]``, ``item_ids [T]`` (shared by the batch) or ``[B, T]``
    - **output:** ``[B, T, D]``
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...tokens import TokenGraph, causal, grouped, token_attention
from ._checks import check_int, check_tokens

MODES = ("intra", "inter", "causal")


class ItemAwareAttention(nn.Module):
    """One IAM attention layer of a given ``mode``.

    Args:
        dim: ``D`` (divisible by ``heads``).
        heads: Heads (an int >= 1).
        mode: ``"intra"``, ``"inter"`` or ``"causal"``.
    """

    def __init__(self, dim: int, heads: int = 4, mode: str = "intra") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_int(dim, "dim", 1)
        check_int(heads, "heads", 1)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.mode, self.heads = mode, heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def edges(self, item_ids: Tensor) -> TokenGraph:
        if self.mode == "causal":
            return causal(item_ids.numel())
        intra, inter = grouped(item_ids)
        return intra if self.mode == "intra" else inter

    def forward(self, x: Tensor, item_ids: Tensor) -> Tensor:
        check_tokens(x, "x", self.qkv.in_features, self.qkv.weight.dtype)
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).unbind(2)
        if item_ids.dim() == 1:
            if item_ids.numel() != T:
                raise ValueError(f"item_ids must have T={T} entries, got {item_ids.numel()}")
            o = token_attention(q, k, v, self.edges(item_ids))
        else:
            if item_ids.shape != (B, T):
                raise ValueError(f"item_ids must be [T] or [B, T]=[{B}, {T}], got "
                                 f"{tuple(item_ids.shape)}")
            o = torch.stack([token_attention(q[b], k[b], v[b], self.edges(item_ids[b]))
                             for b in range(B)]) if B else v.new_zeros(v.shape)
        return self.out(o.reshape(B, T, D))


class ItemAwareBlock(nn.Module):
    """Pre-norm residual stack of :class:`ItemAwareAttention` layers (each followed by an
    MLP), one per entry of ``schedule`` (e.g. ``("intra", "inter")``)."""

    def __init__(self, dim: int, heads: int = 4, schedule: tuple[str, ...] = ("intra", "inter"),
                 mlp_ratio: int = 2) -> None:
        super().__init__()
        self.attn = nn.ModuleList(ItemAwareAttention(dim, heads, m) for m in schedule)
        self.norm1 = nn.ModuleList(nn.LayerNorm(dim) for _ in schedule)
        self.norm2 = nn.ModuleList(nn.LayerNorm(dim) for _ in schedule)
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                               nn.Linear(mlp_ratio * dim, dim))
                                 for _ in schedule)

    def forward(self, x: Tensor, item_ids: Tensor) -> Tensor:
        for attn, n1, n2, mlp in zip(self.attn, self.norm1, self.norm2, self.mlp):
            x = x + attn(n1(x), item_ids)
            x = x + mlp(n2(x))
        return x
