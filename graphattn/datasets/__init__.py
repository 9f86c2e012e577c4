"""Datasets of graphattn's examples; all offline (generated, shipped in packages, or read
from a local folder)."""

from .flows import CLASSES as FLOW_CLASSES
from .flows import FlowConfig, flow_graph, generate_flows, host_scoped_knn

__all__ = ["FLOW_CLASSES", "FlowConfig", "flow_graph", "generate_flows", "host_scoped_knn"]
