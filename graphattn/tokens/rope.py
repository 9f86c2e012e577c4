r"""N-D rotary position embedding on continuous coordinates (CanViT's scene-relative RoPE in
2-D, SegMaFormer's 3-D form).

For a head dimension ``D`` and ``n`` coordinate axes, each axis gets ``F = D / (2n)``
periods :math:`P_1..P_F`, geometric from ``min_period`` to ``base`` (CanViT: 1 to 100), and
token ``t`` at coordinates :math:`\mathbf{p}_t` gets the angles

.. math::
    \boldsymbol\vartheta_t = \big[\,2\pi p_{t,a} / P_f\,\big]_{a = 1..n,\ f = 1..F}
        \in \mathbb{R}^{D/2},

applied in rotate-half form: with :math:`\mathbf{x} = [\mathbf{x}_1, \mathbf{x}_2]` (halves),
:math:`R(\mathbf{p})\mathbf{x} = [\mathbf{x}_1\cos\boldsymbol\vartheta - \mathbf{x}_2
\sin\boldsymbol\vartheta,\ \mathbf{x}_2\cos\boldsymbol\vartheta + \mathbf{x}_1
\sin\boldsymbol\vartheta]`. Because every pair rotates by an angle linear in the coordinate,
:math:`\langle R(\mathbf{p})\mathbf{q}, R(\mathbf{p}')\mathbf{k}\rangle` depends only on
:math:`\mathbf{p} - \mathbf{p}'`. Prefix tokens (registers, CLS) are left unrotated.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._checks import check_int


class RotaryND(nn.Module):
    """N-D RoPE (see the module docstring).

    Args:
        head_dim: ``D`` (divisible by ``2 * n_axes``).
        n_axes: Number of coordinate axes (1, 2 or 3 typically).
        base: Largest period (> 0).
        min_period: Smallest period (> 0).
        periods: Explicit ``[D / (2 n)]`` periods (overrides ``base``/``min_period``); all
            finite and > 0.

    Shapes:
        - **input:** floating ``x [T, H, D]``, real ``pos [T - prefix, n_axes]`` (coordinates
          of the non-prefix tokens, which follow the ``prefix`` tokens; ``0 <= prefix <= T``)
        - **output:** ``[T, H, D]``
    """

    def __init__(self, head_dim: int, n_axes: int = 2, base: float = 100.0,
                 min_period: float = 1.0, periods: Tensor | None = None) -> None:
        super().__init__()
        check_int(head_dim, "head_dim", 1)
        check_int(n_axes, "n_axes", 1)
        if head_dim % (2 * n_axes):
            raise ValueError(f"head_dim ({head_dim}) must be divisible by 2 * n_axes "
                             f"({2 * n_axes})")
        F_ = head_dim // (2 * n_axes)
        if periods is None:
            expo = torch.arange(F_, dtype=torch.float64) / max(F_ - 1, 1)
            periods = min_period * (base / min_period) ** expo
        periods = torch.as_tensor(periods, dtype=torch.float64)
        if periods.shape != (F_,):
            raise ValueError(f"periods must have {F_} entries, got {tuple(periods.shape)}")
        if not (torch.isfinite(periods) & (periods > 0)).all():
            raise ValueError(f"periods (or base and min_period) must be finite and > 0, got "
                             f"periods {periods.tolist()}")
        self.head_dim, self.n_axes = head_dim, n_axes
        self.register_buffer("omega", 2 * math.pi / periods, persistent=False)

    def angles(self, pos: Tensor) -> Tensor:
        """``[T, D/2]`` rotation angles of coordinates ``pos [T, n_axes]``."""
        if (not isinstance(pos, Tensor) or pos.dim() != 2 or pos.size(1) != self.n_axes
                or pos.dtype == torch.bool or pos.is_complex()):
            got = f"{pos.dtype} {tuple(pos.shape)}" if isinstance(pos, Tensor) else type(pos)
            raise ValueError(f"pos must be a real [T, {self.n_axes}] tensor, got {got}")
        return (pos.unsqueeze(-1).double() * self.omega).flatten(1)  # axis-major

    def forward(self, x: Tensor, pos: Tensor, prefix: int = 0) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.size(-1) != self.head_dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [T, H, {self.head_dim}], got {got}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}")
        check_int(prefix, "prefix", 0)
        if prefix > x.size(0):
            raise ValueError(f"prefix must be <= the {x.size(0)} tokens of x, got {prefix}")
        th = self.angles(pos)  # checks pos
        if pos.size(0) != x.size(0) - prefix:
            raise ValueError(f"pos must hold {x.size(0) - prefix} rows (tokens after the "
                             f"{prefix} prefix tokens), got {pos.size(0)}")
        th = th.to(x.dtype).unsqueeze(1)  # [T', 1, D/2]
        cos, sin = th.cos(), th.sin()
        body = x[prefix:]
        x1, x2 = body.chunk(2, dim=-1)
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return torch.cat([x[:prefix], rotated], dim=0)
