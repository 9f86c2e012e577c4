"""Argument checks shared by the DyMRL modules: errors that name the argument, the expected
type, shape or range and what came in (instead of NaN scores, a silent broadcast or torch's
messages from deep inside)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import check_real

__all__ = ["check_float_tensor", "check_real"]


def check_float_tensor(name: str, x: object, dtype: torch.dtype) -> Tensor:
    """``x`` as given, after checking that it is a tensor of ``dtype`` (the module's
    parameters'): no silent promotion of the output, no integer input."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"{name} must have the dtype of the module's parameters ({dtype}), got "
                        f"{x.dtype}")
    return x

