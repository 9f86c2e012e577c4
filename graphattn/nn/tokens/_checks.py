"""Input checks shared by the token-graph layers: token tensors of the layer's width and
dtype, with errors that name the argument (instead of torch's matmul or reshape messages)."""

from __future__ import annotations

import torch
from torch import Tensor

from ...tokens._checks import check_bool, check_int, check_mask

__all__ = ["check_bool", "check_int", "check_mask", "check_tokens"]


def check_tokens(x: object, name: str, width: int | None = None,
                 dtype: torch.dtype | None = None, form: str = "[B, T, D]") -> Tensor:
    """``x`` as given, after checking that it is a floating tensor of the rank of ``form``
    whose last size is ``width``, in ``dtype`` (the layer's parameters'; either ``None``: any)."""
    rank = form.count(",") + 1
    if (not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != rank
            or (width is not None and x.size(-1) != width)):
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        d = "" if width is None else f" with D={width}"
        raise ValueError(f"'{name}' must be a floating {form} tensor{d}, got {got}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"'{name}' must have the layer's dtype {dtype}, got {x.dtype}")
    return x
