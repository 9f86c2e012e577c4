"""UGID: a transformer's computational graph (hidden states = nodes, attention = routing
edges), structural-invariance losses across counterfactual inputs, and networkx diagnostics.
Needs the ``llm`` extra for Hugging Face models and networkx."""

from .association import association, weat_effect_size
from .diagnostics import (
    aligned_edit_distance,
    attention_digraph,
    graph_edit_distance,
    is_isomorphic,
    spectral_distance,
)
from .graph import ComputationalGraph, extract_graph, rank_heads, route, sensitive_positions
from .losses import (
    UGIDLoss,
    anchor_loss,
    edge_invariance_loss,
    logit_constraint_loss,
    node_invariance_loss,
)

__all__ = [
    "ComputationalGraph", "UGIDLoss", "aligned_edit_distance", "anchor_loss",
    "attention_digraph", "edge_invariance_loss", "extract_graph", "graph_edit_distance",
    "is_isomorphic", "logit_constraint_loss", "node_invariance_loss", "rank_heads", "route",
    "association", "sensitive_positions", "spectral_distance", "weat_effect_size",
]
