"""Input checks shared by the token-graph layers: token tensors of the layer's width and
dtype, with errors that name the argument (instead of torch's matmul or reshape messages)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_tokens(x: object, name: str, width: int, dtype: torch.dtype,
                 form: str = "[B, T, D]") -> Tensor:
    """``x`` as given, after checking that it is a floating tensor of the rank of ``form``
    whose last size is ``width``, in ``dtype`` (the layer's parameters')."""
    rank = form.count(",") + 1
    if (not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != rank
            or x.size(-1) != width):
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"'{name}' must be a floating {form} tensor with D={width}, got {got}")
    if x.dtype != dtype:
        raise TypeError(f"'{name}' must have the layer's dtype {dtype}, got {x.dtype}")
    return x
