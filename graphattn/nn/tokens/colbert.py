r"""ColBERT-Att: late interaction weighted by attention-derived token importance.

From *Late-Interaction Meets Attention for Enhanced Retrieval* (ColBERT-Att; Patel, Dutta,
arXiv 2603.25248). The baseline is ColBERT's MaxSim (Khattab & Zaharia, SIGIR 2020),
:math:`S(q,d)=\sum_i \max_j E_{q_i}\cdot E_{d_j}`. ColBERT-Att weights the matches with the
encoder's attention-derived importance of query tokens (exponentiated) and of document tokens
(with a regulariser for document length). **The exact form is reconstructed** (no code or
methods text was available; ``shared/papers/TOKEN_PAPERS.md`` section 6):

.. math::
    S(q, d) = \sum_{i \in q} e^{\beta a_{q_i}}\,
        \max_{j \in d}\Big( a_{d_j}^{\gamma}\; E_{q_i}\cdot E_{d_j} \Big),

with importances :math:`a` normalised to mean 1 over each text's valid tokens (the length
regulariser: a long document does not get larger weights by having more tokens; see
:func:`attention_importance`). :math:`\beta=\gamma=0`, or no importances at all, is plain
MaxSim; constant importances give MaxSim times a constant, hence the same ranking.

As a token graph: a bipartite graph from document tokens to query tokens, edge score
:math:`a_{d_j}^{\gamma} E_{q_i}\cdot E_{d_j}`, **max** aggregation per query node through
:func:`graphattn.ops.aggregate` (:meth:`ColBERTAttention.score_pairs`), then an importance-
weighted sum over the query nodes. Ranking a corpus takes the dense fast path
(:meth:`ColBERTAttention.forward`: one batched matmul and a masked max), tested equal.
Document embeddings and weights do not depend on the query and are precomputed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import ops
from ._checks import check_int, check_mask, check_tokens

__all__ = ["ColBERTAttention", "attention_importance"]


def attention_importance(attention: Tensor, mask: Tensor, keep: Tensor | None = None) -> Tensor:
    r"""Attention received by each token, averaged over heads, normalised to mean 1:
    :math:`a_t \propto \frac1H\sum_h\sum_{i\in K} A^{h}_{it}` for kept rows and columns
    :math:`K` (default: the valid tokens), 0 elsewhere.

    Args:
        attention (Tensor): ``[B, H, T, T]`` attention of one layer (rows = queries).
        mask (Tensor): ``[B, T]`` valid (non-padding) tokens, bool (or only 0 and 1).
        keep (Tensor, optional): ``[B, T]`` tokens that take part (e.g. without ``[CLS]`` and
            ``[SEP]``, which soak up attention in BERT-style encoders), bool (or only 0 and
            1); default ``mask``.

    Returns:
        ``[B, T]``, mean 1 over the kept tokens of each row.
    """
    if attention.dim() != 4 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"'attention' must be [B, H, T, T], got {list(attention.shape)}")
    B, _, T, _ = attention.shape
    mask = check_mask(mask, "mask", (B, T))
    k = mask if keep is None else check_mask(keep, "keep", (B, T)) & mask
    kf = k.to(attention.dtype)
    recv = (attention * kf[:, None, :, None]).sum(2).mean(1) * kf  # [B, T]
    n = kf.sum(1, keepdim=True).clamp_min(1.0)
    return recv / recv.sum(1, keepdim=True).clamp_min(1e-12) * n


def _check_side(x: Tensor, t: Tensor | None, name: str, dtype=None) -> Tensor | None:
    if t is None:
        return None
    if t.shape != x.shape[:2]:
        raise ValueError(f"'{name}' must have shape [B, L] = {list(x.shape[:2])}, "
                         f"got {list(t.shape)}")
    return t.to(dtype) if dtype is not None else t


class ColBERTAttention(nn.Module):
    r"""ColBERT-Att scoring of the module docstring (reconstructed form).

    Args:
        beta (float): query-importance sharpness :math:`\beta` (weight :math:`e^{\beta a}`).
        gamma (float): document-importance exponent :math:`\gamma`.
        normalize (bool): L2-normalise token embeddings first (ColBERT does).

    Shapes:
        - **q**: :math:`(B_q, L_q, D)`, **d**: :math:`(B_d, L_d, D)` token embeddings;
        - **q_mask / d_mask**: :math:`(B, L)` bool (or only 0 and 1), tokens that take part
          (default all);
        - **q_importance / d_importance**: :math:`(B, L)` importances :math:`a` (``None``:
          the plain MaxSim weights 1);
        - **output**: :math:`(B_q, B_d)` scores (:meth:`forward`) or :math:`(P,)`
          (:meth:`score_pairs`); a document without tokens (:math:`L_d = 0` or all masked)
          scores 0, and :math:`B_q` or :math:`B_d = 0` gives an empty result.

    ``q`` and ``d`` must share the dtype. With :math:`\gamma < 0` a document token of
    importance 0 has weight :math:`+\infty` (:meth:`weights`), so its matches (and the scores)
    are infinite on both paths.

    Cost: :math:`O(|q|\,|d|\,D)` per pair.
    """

    def __init__(self, beta: float = 1.0, gamma: float = 0.5, normalize: bool = True) -> None:
        super().__init__()
        self.beta, self.gamma, self.normalize = float(beta), float(gamma), normalize

    def weights(self, q_importance: Tensor | None, d_importance: Tensor | None
                ) -> tuple[Tensor | None, Tensor | None]:
        """Query weights :math:`e^{\\beta a}` and document weights :math:`a^{\\gamma}`
        (negative importances count as 0). At :math:`a = 0` the weight is :math:`0^\\gamma`
        with a zero gradient: for :math:`0 < \\gamma < 1` the derivative
        :math:`\\gamma a^{\\gamma - 1}` is infinite there, and padded tokens (importance 0 from
        :func:`attention_importance`) would turn every gradient into NaN."""
        u = None if q_importance is None else torch.exp(self.beta * q_importance)
        w = None
        if d_importance is not None:
            a = d_importance.clamp_min(0)
            pos = a > 0
            zero = a.new_tensor(0.0 ** self.gamma if self.gamma >= 0 else math.inf)
            w = torch.where(pos, a.masked_fill(~pos, 1.0).pow(self.gamma), zero)
        return u, w

    def _prep(self, q, d, q_mask, d_mask, q_importance, d_importance):
        check_tokens(q, "q", form="[B, L, D]")
        check_tokens(d, "d", form="[B, L, D]")
        if q.shape[-1] != d.shape[-1]:
            raise ValueError(f"'q' and 'd' must share the embedding size, got {q.shape[-1]} and "
                             f"{d.shape[-1]}")
        if d.dtype != q.dtype:
            raise TypeError(f"'d' has dtype {d.dtype} but 'q' has {q.dtype}")
        q_mask = None if q_mask is None else check_mask(q_mask, "q_mask", tuple(q.shape[:2]))
        d_mask = None if d_mask is None else check_mask(d_mask, "d_mask", tuple(d.shape[:2]))
        q_importance = _check_side(q, q_importance, "q_importance", q.dtype)
        d_importance = _check_side(d, d_importance, "d_importance", d.dtype)
        if self.normalize:
            q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
        q_mask = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device) if q_mask is None \
            else q_mask
        d_mask = torch.ones(d.shape[:2], dtype=torch.bool, device=d.device) if d_mask is None \
            else d_mask
        u, w = self.weights(q_importance, d_importance)
        u = torch.ones(q.shape[:2], dtype=q.dtype, device=q.device) if u is None else u
        w = torch.ones(d.shape[:2], dtype=d.dtype, device=d.device) if w is None else w
        return q, d, q_mask, d_mask, u * q_mask, w

    def forward(self, q: Tensor, d: Tensor, q_mask: Tensor | None = None,
                d_mask: Tensor | None = None, q_importance: Tensor | None = None,
                d_importance: Tensor | None = None, chunk: int | None = None) -> Tensor:
        """All-pairs scores ``[B_q, B_d]`` by the dense fast path: :meth:`max_matches`, then
        the importance-weighted sum over query tokens."""
        q, d, q_mask, d_mask, u, w = self._prep(q, d, q_mask, d_mask, q_importance, d_importance)
        return (self._max_matches(q, d, q_mask, d_mask, w, chunk) * u[:, None, :]).sum(-1)

    def max_matches(self, q: Tensor, d: Tensor, q_mask: Tensor | None = None,
                    d_mask: Tensor | None = None, d_importance: Tensor | None = None,
                    chunk: int | None = None) -> Tensor:
        r"""Per query token, its best weighted match in every document,
        :math:`\max_j a_{d_j}^{\gamma} E_{q_i}\cdot E_{d_j}`: ``[B_q, B_d, L_q]`` (0 for
        masked query tokens and empty documents). One GEMM per chunk of ``chunk`` documents
        (an int >= 1; memory :math:`B_q L_q \times` ``chunk`` :math:`L_d`, by default about
        64 MB). Query
        weights do not enter, so a sweep over :math:`\beta` reuses one call."""
        q, d, q_mask, d_mask, _, w = self._prep(q, d, q_mask, d_mask, None, d_importance)
        return self._max_matches(q, d, q_mask, d_mask, w, chunk)

    @staticmethod
    def _max_matches(q: Tensor, d: Tensor, q_mask: Tensor, d_mask: Tensor, w: Tensor,
                     chunk: int | None) -> Tensor:
        Bq, Lq, Dm = q.shape
        Ld = d.shape[1]
        if chunk is None:
            chunk = max(1, (1 << 24) // max(1, Bq * Lq * Ld))
        check_int(chunk, "chunk", 1)
        if d.shape[0] == 0 or Ld == 0:  # no documents, or documents without tokens: 0
            return q.new_zeros(Bq, d.shape[0], Lq)
        out = []
        for s in range(0, d.shape[0], chunk):
            dc, mc, wc = d[s:s + chunk], d_mask[s:s + chunk], w[s:s + chunk]
            C = dc.shape[0]
            sim = (q.reshape(Bq * Lq, Dm) @ dc.reshape(C * Ld, Dm).T).view(Bq, Lq, C, Ld)
            sim = (sim * wc).masked_fill(~mc, float("-inf"))
            best = sim.amax(-1)
            # a document without valid tokens matches nothing: 0 (an infinite best match of a
            # weight-inf token, gamma < 0, stays infinite as in score_pairs)
            best = best.masked_fill(~mc.any(-1), 0.0)
            out.append(best.transpose(1, 2))
        return torch.cat(out, 1).masked_fill(~q_mask[:, None, :], 0.0)

    def score_pairs(self, q: Tensor, d: Tensor, pairs: Tensor, q_mask: Tensor | None = None,
                    d_mask: Tensor | None = None, q_importance: Tensor | None = None,
                    d_importance: Tensor | None = None) -> Tensor:
        """Scores of the (query, document) ``pairs [2, P]`` through the core: one bipartite
        token graph per pair (document tokens -> query tokens), max aggregation by
        :func:`graphattn.ops.aggregate`, importance-weighted sum per pair."""
        q, d, q_mask, d_mask, u, w = self._prep(q, d, q_mask, d_mask, q_importance, d_importance)
        if pairs.dim() != 2 or pairs.shape[0] != 2 or pairs.dtype != torch.long:
            raise ValueError(f"'pairs' must be an int64 [2, P] tensor, got {list(pairs.shape)} "
                             f"{pairs.dtype}")
        if pairs.numel() and (int(pairs[0].min()) < 0 or int(pairs[0].max()) >= q.shape[0]
                              or int(pairs[1].min()) < 0 or int(pairs[1].max()) >= d.shape[0]):
            raise ValueError("'pairs' holds query or document ids out of range")
        P, Lq, Ld = pairs.shape[1], q.shape[1], d.shape[1]
        if P == 0:
            return q.new_zeros(0)
        # nodes: (pair p, query token i) -> p * Lq + i; sources: (pair p, doc token j)
        pq = pairs[0].view(P, 1, 1).expand(P, Lq, Ld)
        pd = pairs[1].view(P, 1, 1).expand(P, Lq, Ld)
        ii = torch.arange(Lq, device=q.device).view(1, Lq, 1).expand(P, Lq, Ld)
        jj = torch.arange(Ld, device=q.device).view(1, 1, Ld).expand(P, Lq, Ld)
        keep = q_mask[pq, ii] & d_mask[pd, jj]
        pq, pd, ii, jj = pq[keep], pd[keep], ii[keep], jj[keep]
        dst = torch.arange(P, device=q.device).view(P, 1, 1).expand(P, Lq, Ld)[keep] * Lq + ii
        src = torch.arange(P, device=q.device).view(P, 1, 1).expand(P, Lq, Ld)[keep] * Ld + jj
        score = (q[pq, ii] * d[pd, jj]).sum(-1) * w[pd, jj]
        graph = ops.build_graph(torch.stack([src, dst]), (P * Ld, P * Lq), cache=False)
        best = ops.aggregate(score, graph, "max").view(P, Lq)
        return (best * u[pairs[0]]).sum(-1)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, normalize={self.normalize}"
