"""Argument checks shared by the token-graph builders, attention and layers: errors that name
the argument, the expected type or range and what came in (instead of a torch message or a
silently reinterpreted value)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int as _check_int
from .._checks import is_bool


def check_int(value: object, name: str, minimum: int = 0) -> int:
    """``value`` as an ``int`` after checking it is an integer ``>= minimum``: a Python or
    NumPy integer or a 0-d integer tensor (bools refused; :func:`graphattn._checks.check_int`)."""
    if isinstance(value, Tensor) and value.dim() == 0 and not (
            value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        value = int(value)
    return _check_int(value, name, minimum)


def check_bool(value: object, name: str) -> bool:
    """``value`` as a ``bool`` after checking it is one (Python, NumPy or a 0-d tensor)."""
    if not is_bool(value):
        raise TypeError(f"'{name}' must be a bool, got {value!r}")
    return bool(value)


def check_mask(mask: object, name: str, shape: tuple[int, ...]) -> Tensor:
    """``mask`` as a bool tensor after checking its ``shape``; a mask of another dtype must hold
    only 0 and 1 (a 0.5 would otherwise silently count as True)."""
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(shape):
        got = list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"'{name}' must have shape {list(shape)}, got {got}")
    if mask.dtype != torch.bool:
        if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"'{name}' must be a bool mask (or hold only 0 and 1), got "
                             f"{mask.dtype} values other than 0 and 1")
        mask = mask.bool()
    return mask
