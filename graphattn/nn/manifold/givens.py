r"""Givens rotations and reflections in 2x2 blocks (AttH, Chami et al. 2020; DyMRL).

For a parameter vector :math:`\mathbf{g} \in \mathbb{R}^d` (``d`` even), each pair
:math:`(a, b) = (g_{2k}, g_{2k+1})` is normalised to :math:`(\cos\vartheta_k,
\sin\vartheta_k)` and acts on :math:`(x_{2k}, x_{2k+1})` as

.. math::
    \mathrm{Rot}: \begin{pmatrix}\cos & -\sin\\ \sin & \cos\end{pmatrix}, \qquad
    \mathrm{Ref}: \begin{pmatrix}\cos & \sin\\ \sin & -\cos\end{pmatrix}.

Both preserve the norm; the reflection is an involution.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _pairs(g: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if g.size(-1) != x.size(-1) or x.size(-1) % 2:
        raise ValueError(f"Givens parameters and vectors must share an even last dimension, got "
                         f"{g.size(-1)} and {x.size(-1)}")
    g = g.reshape(*g.shape[:-1], g.size(-1) // 2, 2)  # explicit: -1 is ambiguous for 0 rows
    g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-15)
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
