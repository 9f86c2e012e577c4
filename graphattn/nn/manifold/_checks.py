"""Argument checks shared by the DyMRL modules: errors that name the argument, the expected
type, shape or range and what came in (instead of NaN scores, a silent broadcast or torch's
messages from deep inside)."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ..._checks import is_bool


def check_real(name: str, value: object, allow_zero: bool = False) -> float:
    """``value`` as a ``float``, after checking that it is a finite real number > 0 (>= 0
    with ``allow_zero``): a Python ``int`` / ``float`` (not a ``bool``) or a one-element
    floating tensor."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
        value = float(value)
    if is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got "
                         f"{value!r}")
    return float(value)


def check_float_tensor(name: str, x: object, dtype: torch.dtype) -> Tensor:
    """``x`` as given, after checking that it is a tensor of ``dtype`` (the module's
    parameters'): no silent promotion of the output, no integer input."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"{name} must have the dtype of the module's parameters ({dtype}), got "
                        f"{x.dtype}")
    return x

