"""Generic graph-attention convolutions."""

from .graph_attention import GraphAttention

__all__ = ["GraphAttention"]
