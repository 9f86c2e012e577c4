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
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["BesselBasis", "PolynomialCutoff", "apply_folded", "folded_layers"]


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


def folded_layers(net: nn.Module) -> tuple[list[tuple[Tensor, Callable | None]], float]:
    r"""The layers of an e3nn ``FullyConnectedNet`` as ``[(W, act), ...]`` and an output
    scale :math:`c`, such that :math:`x \mapsto c\,(\ldots\,\mathrm{act}_0(x W_0)\,\ldots\,
    W_{L-1})` (``act`` ``None`` where e3nn has none) is the network's function, values and
    gradients: e3nn's constants (the weight scale :math:`1/\sqrt{h_{in}\sigma^2_{in}}`, the
    activation's second-moment constant of ``normalize2mom`` and :math:`\sigma_{out}`) are
    folded into the small ``[h_in, h_out]`` weight matrices, where e3nn multiplies every
    ``[E, h]`` activation by them (two ``[E, h]`` products and their backward per hidden
    layer). :math:`c` is 1 unless the last layer has an activation.
    """
    layers, carry = [], 1.0
    for i in range(len(net.hs) - 1):
        layer = getattr(net, f"layer{i}")
        if layer.act is None:
            w = layer.weight * (carry / (layer.h_in * layer.var_in / layer.var_out) ** 0.5)
            layers.append((w, None))
            carry = 1.0
            continue
        act = layer.act
        f, cst = (act.f, 1.0 if act._is_id else act.cst) if hasattr(act, "cst") else (act, 1.0)
        layers.append((layer.weight * (carry / (layer.h_in * layer.var_in) ** 0.5), f))
        carry = cst * layer.var_out ** 0.5
    return layers, carry


def apply_folded(layers: list[tuple[Tensor, Callable | None]], h: Tensor) -> Tensor:
    r""":math:`\ldots\,\mathrm{act}_1(\mathrm{act}_0(h W_0) W_1)\,\ldots`: the layers of
    :func:`folded_layers` applied to ``h`` (``[*, h_in]`` to ``[*, h_out]``); the output scale
    :math:`c` is the caller's."""
    for w, act in layers:
        h = h @ w
        if act is not None:
            h = act(h)
    return h
