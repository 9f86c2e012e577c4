"""Argument checks shared across graphattn: an integer size or count, a real number and a bool
flag, in the forms a caller may hold (Python, NumPy, 0-d tensors), with errors that name the
argument, the expected range and what came in (``True`` is an ``int`` to Python, not a size
here)."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_int", "check_real", "is_bool"]


def is_bool(value: object) -> bool:
    """A Python, NumPy or 0-d tensor bool."""
    if isinstance(value, Tensor):
        return value.dim() == 0 and value.dtype == torch.bool
    return isinstance(value, (bool, np.bool_))


def check_int(value: object, name: str, low: int = 0, high: int | None = None) -> int:
    """``value`` as an ``int``, after checking that it is a Python or NumPy integer (not a
    bool) in ``[low, high]`` (``high=None``: no upper bound); ``ValueError`` otherwise."""
    if (is_bool(value) or not isinstance(value, numbers.Integral) or value < low
            or (high is not None and value > high)):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return int(value)


def check_real(value: object, name: str, allow_zero: bool = False) -> float:
    """``value`` as a ``float``, after checking that it is a finite real number > 0 (>= 0
    with ``allow_zero``): a Python or NumPy real (not a bool) or a one-element floating
    tensor; ``TypeError`` for another type, ``ValueError`` for a value out of range."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
        value = float(value)
    if is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got "
                         f"{value!r}")
    return float(value)
