"""Datasets of graphattn's examples; all offline (generated, shipped in packages, or read
from a local folder)."""

from .flows import CLASSES as FLOW_CLASSES
from .flows import FlowConfig, flow_graph, generate_flows, host_scoped_knn
from .tkg import TemporalKG, load_tkg, nations_facts, synthetic_tkg

__all__ = ["FLOW_CLASSES", "FlowConfig", "TemporalKG", "flow_graph", "generate_flows",
           "host_scoped_knn", "load_tkg", "nations_facts", "synthetic_tkg"]
