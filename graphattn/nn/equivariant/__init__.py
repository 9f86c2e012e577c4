"""E(3)-equivariant attention on e3nn (extra ``equivariant``): MLANet's dual-path dynamic
attention for interatomic potentials and GDEGAN's Gaussian dynamic attention for binding
sites, both normalising and aggregating through :mod:`graphattn.ops`."""

from .conv import EdgeGeometry, EquivariantAttentionConv
from .gdegan import GDEGAN, GaussianDynamicAttention, GDEGANInteraction
from .mlanet import MLANet, MLANetInteraction, default_irreps
from .products import DepthwiseTensorProduct, IrrepsGate, IrrepsLinear
from .radial import BesselBasis, PolynomialCutoff

__all__ = [
    "BesselBasis", "DepthwiseTensorProduct", "EdgeGeometry", "EquivariantAttentionConv", "GDEGAN",
    "GDEGANInteraction", "GaussianDynamicAttention", "IrrepsGate", "IrrepsLinear", "MLANet",
    "MLANetInteraction", "PolynomialCutoff", "default_irreps",
]
