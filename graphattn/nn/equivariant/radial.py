r"""Radial basis and smooth cutoff envelope of the equivariant layers.

Bessel basis (DimeNet, Gasteiger et al. 2020) times the polynomial envelope of exponent
:math:`p`, with :math:`d = r / r_c`:

.. math::
    e_n(r) = \sqrt{2/r_c}\,\frac{\sin(n\pi d)}{r},\qquad
    f_c(d) = 1 - \tfrac{(p+1)(p+2)}{2} d^p + p(p+2) d^{p+1} - \tfrac{p(p+1)}{2} d^{p+2}
    \quad (d < 1),\ 0 \text{ beyond}.

:math:`f_c` and its first two derivatives vanish at :math:`r_c`, so anything multiplied by it
is continuous (and smooth) as an atom crosses the cutoff.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["BesselBasis", "PolynomialCutoff"]


class PolynomialCutoff(nn.Module):
    """:math:`f_c(r)` of the module docstring. ``[E] -> [E]``."""

    def __init__(self, cutoff: float, p: int = 6) -> None:
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"'cutoff' must be > 0, got {cutoff}")
        self.cutoff, self.p = float(cutoff), int(p)

    def forward(self, r: Tensor) -> Tensor:
        p = self.p
        d = r / self.cutoff
        f = (1.0 - (p + 1) * (p + 2) / 2 * d.pow(p) + p * (p + 2) * d.pow(p + 1)
             - p * (p + 1) / 2 * d.pow(p + 2))
        return torch.where(d < 1.0, f, torch.zeros_like(f))

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, p={self.p}"


class BesselBasis(nn.Module):
    """``num_basis`` Bessel functions :math:`e_n(r)` (frequencies trainable as in DimeNet).
    ``[E] -> [E, num_basis]``."""

    def __init__(self, cutoff: float, num_basis: int = 8, trainable: bool = False) -> None:
        super().__init__()
        self.cutoff, self.num_basis = float(cutoff), int(num_basis)
        freq = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi
        self.freq = nn.Parameter(freq, requires_grad=trainable)

    def forward(self, r: Tensor) -> Tensor:
        r = r.unsqueeze(-1)
        pref = math.sqrt(2.0 / self.cutoff)
        return pref * torch.sin(self.freq.to(r.dtype) * r / self.cutoff) / r.clamp_min(1e-9)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, num_basis={self.num_basis}"
