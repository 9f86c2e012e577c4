r"""Ranking metrics for link prediction (MRR, Hits@k), raw and filtered.

For a query with true answer :math:`o` and scores :math:`s_e` over all candidates :math:`e`,

.. math::
    \mathrm{rank}(o) = 1 + |\{e \in C : s_e > s_o\}| + \tfrac12\,|\{e \in C \setminus\{o\} :
        s_e = s_o\}|,

where :math:`C` is every entity (**raw**) or every entity except the *other* true answers of
the same query (**filtered**; for temporal KGs the **time-aware** filter removes only answers
true at the query's own timestamp). Ties count half (the expected rank under random
tie-breaking), so a constant scorer gets the mean rank :math:`(|C|+1)/2`, never rank 1.
:math:`\mathrm{MRR} = \mathrm{mean}(1/\mathrm{rank})` and
:math:`\mathrm{Hits@}k = \mathrm{mean}[\mathrm{rank} \le k]`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ranks(scores: Tensor, targets: Tensor, exclude: Tensor | None = None) -> Tensor:
    """Ranks of ``targets`` (``[Q]``) among ``scores [Q, N]``; ``exclude [Q, N]`` bool marks
    candidates to drop (the target itself is never dropped). Returns ``[Q]`` float ranks."""
    if scores.dim() != 2 or targets.shape != (scores.size(0),):
        raise ValueError(f"scores must be [Q, N] and targets [Q], got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}")
    true = scores.gather(1, targets.unsqueeze(1))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if exclude is not None:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude must be {tuple(scores.shape)}, got {tuple(exclude.shape)}")
        keep = ~exclude
    keep = keep.scatter(1, targets.unsqueeze(1), True)
    greater = ((scores > true) & keep).sum(1)
    ties = ((scores == true) & keep).sum(1) - 1
    return 1.0 + greater.double() + 0.5 * ties.double()


def ranking_metrics(r: Tensor, ks: tuple[int, ...] = (1, 3, 10)) -> dict[str, float]:
    """``{"mrr": ..., "hits@1": ..., ...}`` from ranks ``r``."""
    if r.numel() == 0:
        return {"mrr": float("nan"), **{f"hits@{k}": float("nan") for k in ks}}
    out = {"mrr": (1.0 / r).mean().item()}
    out.update({f"hits@{k}": (r <= k).double().mean().item() for k in ks})
    return out
