"""Small argument checks shared by the UGID modules: each error names the argument, what was
expected and what came in."""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from ..._checks import check_real, is_bool


def check_int(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int in ``[low, high)``; a bool or a float is refused (``True``
    would silently be index 1, ``0.9`` index 0)."""
    try:
        if is_bool(value) or (isinstance(value, Tensor) and value.dtype == torch.bool):
            raise TypeError  # bool tensors of any shape, not only 0-d
        i = operator.index(value)
    except TypeError:
        kind = getattr(value, "dtype", type(value).__name__)
        raise TypeError(f"'{name}' must be an int, got {value!r} ({kind})") from None
    if (low is not None and i < low) or (high is not None and i >= high):
        lo = "-inf" if low is None else low
        rng = f"in [{lo}, {high})" if high is not None else f">= {lo}"
        raise ValueError(f"'{name}' must be {rng}, got {i}")
    return i


def check_weight(value, name: str) -> float:
    """A loss weight: a finite real number ``>= 0`` (Python, NumPy or a one-element real
    tensor; a bool or NaN is refused): :func:`graphattn._checks.check_real` with the
    argument's name quoted, as UGID's other messages have it."""
    return check_real(value, f"'{name}'", allow_zero=True)


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"'{name}' must be one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")
    return value


def check_mask(m, name: str, shape: tuple[int, int], allow_01: bool = False) -> Tensor:
    """``m`` as a ``[B, T]`` bool mask. With ``allow_01`` an integer tensor of 0/1 values
    (a tokenizer's ``attention_mask``) is accepted too; anything else (a float mask, an
    integer tensor of positions) is refused instead of being cast to bool."""
    if not isinstance(m, Tensor):
        raise TypeError(f"'{name}' must be a tensor, got {type(m).__name__}")
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"'{name}' must have shape [B, T] = {list(shape)}, got {list(m.shape)}")
    if m.dtype == torch.bool:
        return m
    kinds = "a bool tensor or an integer tensor of 0/1 values" if allow_01 else "a bool tensor"
    if not allow_01 or m.is_floating_point() or m.is_complex():
        raise TypeError(f"'{name}' must be {kinds}, got {m.dtype}")
    if m.numel() and not bool(((m == 0) | (m == 1)).all()):
        bad = m[(m != 0) & (m != 1)][:4].tolist()
        raise ValueError(f"'{name}' must be {kinds}, got {m.dtype} holding {bad} (positions "
                         f"instead of a mask?)")
    return m.bool()
