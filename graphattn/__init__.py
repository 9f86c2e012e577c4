"""graphattn: fast, faithful graph-attention layers for PyTorch Geometric.

One attention core (:mod:`graphattn.ops`, fused C++/OpenMP kernels with a pure-torch
reference) does every layer's softmax and aggregation; the layers of :mod:`graphattn.nn`
compute their own scores, values and edge sets and hand them to it.
"""

from . import ops
from .index import EdgeGraph, build_graph

__version__ = "0.1.0"

__all__ = ["EdgeGraph", "__version__", "build_graph", "ops"]
