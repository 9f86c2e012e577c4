"""Datasets of graphattn's examples; all offline (generated, shipped in packages, or read
from a local folder). Processed or generated data is cached under :func:`cache_dir`, never
in the repository."""

from .cache import cache_dir
from .complexes import BindingSiteComplexes, dca_success, dcc_success, list_complexes
from .counterfactual import CounterfactualSet, load_counterfactuals
from .docstrings import RetrievalSet, harvest_docstrings, load_docstring_set
from .flows import CLASSES as FLOW_CLASSES
from .flows import FlowConfig, flow_graph, generate_flows, host_scoped_knn
from .molecules import MMFFConformers, QM9Energies, fit_atom_refs, group_split
from .tkg import TemporalKG, load_tkg, nations_facts, synthetic_tkg

__all__ = [
    "FLOW_CLASSES", "BindingSiteComplexes", "CounterfactualSet", "FlowConfig",
    "MMFFConformers", "QM9Energies", "RetrievalSet", "TemporalKG", "cache_dir", "dca_success",
    "dcc_success", "fit_atom_refs", "flow_graph", "generate_flows", "group_split",
    "harvest_docstrings", "host_scoped_knn", "list_complexes", "load_counterfactuals",
    "load_docstring_set", "load_tkg", "nations_facts", "synthetic_tkg",
]
