r"""Poincaré-ball operations with a learnable curvature, on :class:`geoopt.PoincareBall`.

For curvature :math:`-c` (:math:`c = \mathrm{softplus}(c_{\mathrm{raw}}) > 0`, geoopt's own
parametrisation of a learnable ball):

.. math::
    \exp_0^c(\mathbf{u}) = \tanh(\sqrt{c}\|\mathbf{u}\|)\frac{\mathbf{u}}{\sqrt{c}\|\mathbf{u}\|},
    \qquad
    \log_0^c(\mathbf{y}) = \operatorname{artanh}(\sqrt{c}\|\mathbf{y}\|)
        \frac{\mathbf{y}}{\sqrt{c}\|\mathbf{y}\|},

.. math::
    \mathbf{x} \oplus_c \mathbf{y} = \frac{(1 + 2c\langle\mathbf{x},\mathbf{y}\rangle
        + c\|\mathbf{y}\|^2)\mathbf{x} + (1 - c\|\mathbf{x}\|^2)\mathbf{y}}
        {1 + 2c\langle\mathbf{x},\mathbf{y}\rangle + c^2\|\mathbf{x}\|^2\|\mathbf{y}\|^2},
    \qquad
    d_c(\mathbf{x}, \mathbf{y}) = \frac{2}{\sqrt{c}}\operatorname{artanh}
        \big(\sqrt{c}\,\|{-\mathbf{x}} \oplus_c \mathbf{y}\|\big).

:math:`\exp_0`, :math:`\oplus` and the projection come from geoopt (``tanh`` argument
clamped to ±15, projection onto radius :math:`(1 - \epsilon)/\sqrt{c}` with
:math:`\epsilon = 4\cdot10^{-3}` in float32 and :math:`10^{-5}` in float64 — the same as
DyMRL/AttH). :math:`\log_0` and :math:`d_c` clamp the ``artanh`` argument to
:math:`\pm(1 - 10^{-5})` as DyMRL does (geoopt clamps at :math:`1 - 10^{-7}`), which keeps
gradients finite at the boundary.

:math:`\log_0`, :math:`d_c` and :func:`~graphattn.nn.manifold.sqdist_to_all` read a point on
or outside the boundary (:math:`c\|\mathbf{x}\|^2 \ge 1`, where the formulas alone give
meaningless numbers, and different ones for the pairwise and the all-pairs distance) as its
projection onto radius :math:`(1 - \epsilon)/\sqrt{c}` (:meth:`PoincareBall.inside`), as
:meth:`PoincareBall.expmap0` and :meth:`PoincareBall.mobius_add` project their results; points
strictly inside the ball are used as they are.
"""

from __future__ import annotations

import geoopt
import torch
from torch import Tensor, nn

from ._checks import check_real

ARTANH_EPS = 1e-5


def artanh(x: Tensor) -> Tensor:
    """``artanh`` with its argument clamped to ``±(1 - 1e-5)``."""
    x = x.clamp(-1 + ARTANH_EPS, 1 - ARTANH_EPS)
    return 0.5 * (torch.log1p(x) - torch.log1p(-x))


class PoincareBall(nn.Module):
    """The Poincaré ball of DyMRL/AttH with a learnable curvature.

    Args:
        c: Initial curvature magnitude, a finite number ``c > 0``.
        learnable: Learn ``c`` (through ``softplus``, as geoopt does).

    Raises:
        ValueError: ``c`` NaN, infinite or ``<= 0`` (every distance would be NaN).
        TypeError: ``c`` not a real number.

    Attributes:
        ball: The underlying :class:`geoopt.PoincareBall` (use it for
            ``geoopt.ManifoldParameter`` and ``geoopt.optim.RiemannianAdam``).
    """

    def __init__(self, c: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        c = check_real(c, "c")
        self.ball = geoopt.PoincareBall(c=c, learnable=learnable)

    @property
    def c(self) -> Tensor:
        """Curvature magnitude, a 0-d tensor."""
        return self.ball.c

    def expmap0(self, u: Tensor) -> Tensor:
        return self.ball.expmap0(u, project=True)

    def logmap0(self, y: Tensor) -> Tensor:
        """:math:`\\log_0^c(y)`; rows of ``y`` on or outside the boundary are projected first
        (:meth:`inside`)."""
        y = self.inside(y)
        sc = self.c.to(y.dtype).sqrt()
        norm = y.norm(dim=-1, keepdim=True).clamp_min(1e-15)
        return artanh(sc * norm) * y / (sc * norm)

    def mobius_add(self, x: Tensor, y: Tensor, project: bool = True) -> Tensor:
        return self.ball.mobius_add(x, y, project=project)

    def project(self, x: Tensor) -> Tensor:
        """``x`` with every row beyond radius :math:`(1 - \\epsilon)/\\sqrt{c}` moved onto it
        (geoopt's ``projx``; :math:`\\epsilon` is 4e-3 in float32, 1e-5 in float64); rows inside
        are returned unchanged."""
        return self.ball.projx(x)

    def inside(self, x: Tensor) -> Tensor:
        """``x`` with the rows on or outside the boundary (:math:`c\\|x\\|^2 \\ge 1`, where the
        distance formulas give meaningless numbers) projected (:meth:`project`); every row
        strictly inside is returned as it is, values and gradients (unlike :meth:`project`,
        which also moves the rows in the shell beyond :math:`(1 - \\epsilon)/\\sqrt{c}`)."""
        outside = self.c.to(x.dtype) * x.pow(2).sum(-1, keepdim=True) >= 1
        return torch.where(outside, self.project(x), x)

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        """:math:`d_c(x, y)` over the last dimension (broadcasting); rows on or outside the
        boundary are projected first (:meth:`inside`)."""
        x, y = self.inside(x), self.inside(y)
        sc = self.c.to(x.dtype).sqrt()
        diff = self.ball.mobius_add(-x, y, project=False)
        return 2.0 / sc * artanh(sc * diff.norm(dim=-1))
