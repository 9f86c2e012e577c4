"""Manifold-valued attention for temporal knowledge graphs (DyMRL; extra ``manifold``:
geoopt)."""

from .dymrl import DyMRL, sqdist_to_all
from .fusion import FusionAttention, ModalityGRU
from .givens import givens_reflection, givens_rotation
from .messages import atth_message, atth_point, atth_query, complex_message, translation_message
from .poincare import PoincareBall
from .relational import RelationalGraph, RelationalLayer

__all__ = [
    "DyMRL", "FusionAttention", "ModalityGRU", "PoincareBall", "RelationalGraph",
    "RelationalLayer", "atth_message", "atth_point", "atth_query", "complex_message",
    "givens_reflection", "givens_rotation", "sqdist_to_all", "translation_message",
]
