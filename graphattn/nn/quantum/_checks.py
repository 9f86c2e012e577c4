"""Argument checks shared by the Q-AGNN modules: errors that name the argument, the expected
type and range and what came in (``True`` is an ``int`` to Python, not a size here)."""

from __future__ import annotations

import numbers

import numpy as np


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an ``int``, after checking that it is an integer (Python or NumPy; not a
    ``bool``) in ``[low, high]`` (``high=None``: no upper bound); ``ValueError`` otherwise."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
            or value < low or (high is not None and value > high)):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return int(value)
