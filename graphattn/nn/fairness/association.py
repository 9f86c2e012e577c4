r"""Embedding association tests (WEAT, Caliskan et al., *Science* 2017; SEAT, May et al.,
NAACL 2019) used to measure bias before and after UGID fine-tuning.

For target embeddings :math:`X, Y` and attribute embeddings :math:`A, B`,

.. math::
    s(w, A, B) = \operatorname{mean}_{a\in A}\cos(w, a) - \operatorname{mean}_{b\in B}\cos(w, b),
    \qquad
    d = \frac{\operatorname{mean}_{x\in X} s(x,A,B) - \operatorname{mean}_{y\in Y} s(y,A,B)}
             {\operatorname{std}_{w\in X\cup Y} s(w,A,B)}

(sample standard deviation). :math:`d` is 0 without association and bounded by about 2 in
absolute value; its sign says which target goes with which attribute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["association", "weat_effect_size"]


def association(w: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """:math:`s(w, A, B)` for each row of ``w [N, D]``; ``A [Na, D]``, ``B [Nb, D]``."""
    for name, t in (("w", w), ("A", A), ("B", B)):
        if t.dim() != 2 or t.shape[0] == 0:
            raise ValueError(f"'{name}' must be a non-empty [N, D] matrix, got {list(t.shape)}")
    w, A, B = (F.normalize(t, dim=-1) for t in (w, A, B))
    return (w @ A.T).mean(1) - (w @ B.T).mean(1)


def weat_effect_size(X: Tensor, Y: Tensor, A: Tensor, B: Tensor) -> float:
    """The WEAT/SEAT effect size :math:`d` of the module docstring."""
    sx, sy = association(X, A, B), association(Y, A, B)
    s = torch.cat([sx, sy])
    if s.numel() < 2:
        raise ValueError("need at least two target embeddings in X and Y together")
    return float((sx.mean() - sy.mean()) / s.std().clamp_min(1e-12))
