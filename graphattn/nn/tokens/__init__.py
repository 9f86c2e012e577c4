"""Token-graph attention layers of the 2026 LLM papers (MKA/FastMKA, IAM, PC-CrossDiff,
NeuroGame, ColBERT-Att); they run on :mod:`graphattn.tokens` graphs."""

from .colbert import ColBERTAttention, attention_importance
from .differential import DifferentialAttention
from .iam import ItemAwareAttention, ItemAwareBlock
from .mka import FastMKAttention, MKAttention, causal_ema, causal_ema_loop
from .neurogame import NeuroGameAttention, mean_field

__all__ = [
    "ColBERTAttention", "DifferentialAttention", "FastMKAttention", "ItemAwareAttention",
    "ItemAwareBlock", "MKAttention", "NeuroGameAttention", "attention_importance", "causal_ema",
    "causal_ema_loop", "mean_field",
]
