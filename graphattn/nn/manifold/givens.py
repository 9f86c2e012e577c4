r"""Givens rotations and reflections in 2x2 blocks (AttH, Chami et al. 2020; DyMRL).

For a parameter vector :math:`\mathbf{g} \in \mathbb{R}^d` (``d`` even), each pair
:math:`(a, b) = (g_{2k}, g_{2k+1})` is normalised to :math:`(\cos\vartheta_k,
\sin\vartheta_k)` and acts on :math:`(x_{2k}, x_{2k+1})` as

.. math::
    \mathrm{Rot}: \begin{pmatrix}\cos & -\sin\\ \sin & \cos\end{pmatrix}, \qquad
    \mathrm{Ref}: \begin{pmatrix}\cos & \sin\\ \sin & -\cos\end{pmatrix}.

Both preserve the norm; the reflection is an involution. A pair :math:`(0, 0)` has no
direction and is read as :math:`(1, 0)` (:math:`\vartheta_k = 0`): the rotation leaves its block
unchanged and the reflection mirrors it about the block's first axis, so the norm is kept
(it is not scaled to zero), and the gradient with respect to that pair is zero (finite, no
NaN). A pair whose norm underflows to 0 in its dtype counts as :math:`(0, 0)`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _pairs(g: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if g.size(-1) != x.size(-1) or x.size(-1) % 2:
        raise ValueError(f"Givens parameters and vectors must share an even last dimension, got "
                         f"{g.size(-1)} and {x.size(-1)}")
    g = g.reshape(*g.shape[:-1], g.size(-1) // 2, 2)  # explicit: -1 is ambiguous for 0 rows
    norm = g.norm(dim=-1, keepdim=True)
    unit = g / norm.clamp_min(torch.finfo(g.dtype).tiny)  # exact unit pairs where norm > 0
    first_axis = torch.tensor([1.0, 0.0], dtype=g.dtype, device=g.device)
    g = torch.where(norm > 0, unit, first_axis)  # (0, 0) -> (1, 0): no zero vector, no NaN
    x = x.reshape(*x.shape[:-1], x.size(-1) // 2, 2)
    return g[..., 0], g[..., 1], x[..., 0], x[..., 1]


def givens_rotation(g: Tensor, x: Tensor) -> Tensor:
    """Rotates each 2-block of ``x [..., d]`` by the angles encoded in ``g [..., d]``."""
    cos, sin, x0, x1 = _pairs(g, x)
    return torch.stack((cos * x0 - sin * x1, sin * x0 + cos * x1), -1).flatten(-2)


def givens_reflection(g: Tensor, x: Tensor) -> Tensor:
    """Reflects each 2-block of ``x [..., d]`` about the axis encoded in ``g [..., d]``."""
    cos, sin, x0, x1 = _pairs(g, x)
    return torch.stack((cos * x0 + sin * x1, sin * x0 - cos * x1), -1).flatten(-2)
