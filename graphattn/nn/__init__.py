"""Layers of graphattn, grouped by family; each hands its softmax and aggregation to
:mod:`graphattn.ops`."""

from .conv import GraphAttention

__all__ = ["GraphAttention"]
