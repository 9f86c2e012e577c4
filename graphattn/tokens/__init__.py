"""Graph-of-tokens: attention patterns as edge sets, N-D RoPE, and attention over them."""

from .attention import batch_token_graphs, token_attention
from .graph import (
    DENSE_KINDS,
    TokenGraph,
    bipartite,
    causal,
    dilated,
    full,
    grid,
    grouped,
    knn,
    memory,
    multiscale,
    window,
)
from .kv_budget import heavy_hitter, sink_window
from .rope import RotaryND

__all__ = [
    "DENSE_KINDS", "RotaryND", "TokenGraph", "batch_token_graphs", "bipartite", "causal",
    "dilated", "full", "grid", "grouped", "knn", "memory", "multiscale", "token_attention",
    "window", "heavy_hitter", "sink_window",
]
