r"""The equivariant attention convolution shared by MLANet and GDEGAN: attention weights
(invariant, per head) in, gated tensor-product messages, weighted sum through
:mod:`graphattn.ops`, gated residual update out.

.. math::
    m_{ij} = \sigma\big(g(s_i, s_j, R(r_{ij}))\big) \odot
        \mathrm{TP}^{uvu}_{w(R(r_{ij}))}\big(x_j, Y(\hat r_{ij})\big),\qquad
    x_i \leftarrow x_i + \mathrm{Gate}\Big(W \sum_{j\in\mathcal{N}(i)} \alpha^{h(c)}_{ij}\,
        m_{ij}\Big)

with :math:`s` the scalar (``0e``) channels of :math:`x`, :math:`R` the radial basis,
:math:`Y` the spherical harmonics up to :math:`l_{max}` of the edge direction
:math:`\hat r_{ij} = (r_j - r_i)/|r_j - r_i|`, :math:`\sigma` a sigmoid per message channel and
:math:`h(c)` the head that owns channel :math:`c` (channels are dealt to heads round-robin);
the tensor product is channel-wise (:func:`depthwise_tensor_product`) and :math:`W` mixes
channels after the aggregation.
Every operation is O(3)-equivariant when :math:`\alpha` is invariant (e3nn tensor products
respect parity), so models built on it are E(3)-equivariant: energies invariant under
rotations, translations and reflections, ``1o`` outputs (forces) rotating and flipping with
the coordinates.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ... import ops
from ...geometry import _check_batch, _check_pos, edge_vectors
from ...index import EdgeGraph
from .products import (
    DepthwiseTensorProduct,
    IrrepsGate,
    IrrepsLinear,
    _e3nn,
    depthwise_tensor_product,
)
from .radial import apply_folded, folded_layers

__all__ = ["EquivariantAttentionConv", "check_batch", "check_edges_within",
           "depthwise_tensor_product", "geometry_graph", "scalar_irreps_first"]


def irreps_blocks(irreps) -> tuple[tuple[int, int], ...]:
    """``((mul, 2l + 1), ...)`` of ``irreps``: plain ints for the forward passes (no e3nn
    ``Irreps`` object reaches ``torch.compile``'s guards)."""
    o3, _ = _e3nn()
    return tuple((int(mul), int(ir.dim)) for mul, ir in o3.Irreps(irreps))


def scalar_irreps_first(irreps) -> tuple:
    """Checks that ``irreps`` (simplified, sorted) starts with its ``0e`` block and returns
    ``(irreps, n_scalars)``."""
    o3, _ = _e3nn()
    irreps = o3.Irreps(irreps)
    if irreps != irreps.sort().irreps.simplify():
        raise ValueError(f"'irreps' must be sorted and simplified (e.g. '32x0e+8x1o+4x2e'), "
                         f"got {irreps}")
    if len(irreps) == 0 or str(irreps[0].ir) != "0e":
        raise ValueError(f"'irreps' must start with scalars (0e), got {irreps}")
    return irreps, irreps[0].mul


class EquivariantAttentionConv(nn.Module):
    r"""Gated tensor-product messages weighted by given attention (module docstring).

    Args:
        irreps_node: node feature irreps, sorted, scalars first (e.g. ``"32x0e+8x1o+4x2e"``).
        lmax (int): degree of the edge spherical harmonics.
        num_basis (int): size of the radial basis :math:`R`.
        heads (int): attention heads (channels dealt round-robin).
        radial_hidden (int): width of the radial and gate MLPs.
        gated_messages (bool): apply the message gate :math:`\sigma(g(\cdot))`.

    Irreps:
        in and out ``irreps_node``; edge attributes ``Y`` are
        ``Irreps.spherical_harmonics(lmax)``.

    Shapes:
        - **x**: :math:`(N, \dim x)`; **alpha**: :math:`(E, H)`; **radial**: :math:`(E, B)`;
          **sh**: :math:`(E, (l_{max}+1)^2)`; output :math:`(N, \dim x)`.
    """

    def __init__(self, irreps_node, lmax: int = 2, num_basis: int = 8, heads: int = 4,
                 radial_hidden: int = 32, gated_messages: bool = True) -> None:
        super().__init__()
        o3, enn = _e3nn()
        self.irreps_node, self.n_scalars = scalar_irreps_first(irreps_node)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.heads, self.gated_messages = int(heads), gated_messages
        self.tp = DepthwiseTensorProduct(self.irreps_node, self.irreps_sh, self.irreps_node)
        self.irreps_mid = self.tp.irreps_out
        self.radial = enn.FullyConnectedNet([num_basis, radial_hidden, self.tp.weight_numel],
                                            torch.nn.functional.silu)
        n_ch = self.irreps_mid.num_irreps
        self.mid_blocks = irreps_blocks(self.irreps_mid)
        if gated_messages:
            self.msg_gate = enn.FullyConnectedNet(
                [2 * self.n_scalars + num_basis, radial_hidden, n_ch], torch.nn.functional.silu)
        scalars = o3.Irreps([(m, ir) for m, ir in self.irreps_node if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in self.irreps_node if ir.l > 0])
        self.gate = IrrepsGate(scalars, [torch.nn.functional.silu] * len(scalars),
                             f"{gated.num_irreps}x0e" if gated.num_irreps else "",
                             [torch.sigmoid] if gated.num_irreps else [], gated)
        self.lin = IrrepsLinear(self.irreps_mid, self.gate.irreps_in)

    def edge_features(self, x: Tensor, src: Tensor, radial: Tensor, sh: Tensor) -> Tensor:
        r""":math:`\mathrm{TP}^{uvu}_{w(R)}(x_j, Y(\hat r_{ij}))`, ``[E, dim irreps_mid]``: the
        neighbour's features rotated by the edge direction (messages before gating; MLANet's
        geometric keys are a linear map of them)."""
        return self.tp(x.index_select(0, src), sh, self.tp_weights(radial), prescaled=True)

    def tp_weights(self, radial: Tensor) -> Tensor:
        r"""The tensor product's per-edge weights :math:`w(R)` times its path constants,
        ``[E, weight_numel]``: ``radial`` (the e3nn MLP) evaluated with its normalisation
        constants and the path constants folded into its weight matrices
        (:func:`~graphattn.nn.equivariant.radial.folded_layers`; equal to
        ``self.radial(radial) * self.tp.path_const``, tested)."""
        layers, scale = folded_layers(self.radial)
        const = self.tp.path_const.to(radial.dtype) * scale
        w, act = layers[-1]
        return apply_folded([*layers[:-1], (w * const, act)], radial)

    def message_gate(self, s: Tensor, src: Tensor, dst: Tensor, radial: Tensor) -> Tensor:
        r""":math:`\sigma(g(s_i, s_j, R(r_{ij})))`, ``[E, num channels]``: the gate MLP ``g``
        applied to ``[s_i, s_j, R]`` with its first (linear) layer split by input block,
        :math:`W [s_i; s_j; R] = (s W_i)_i + (s W_j)_j + R W_R`, so the node products are taken
        once per node and gathered, and no ``[E, 2 n_scalars + B]`` input is built; e3nn's
        constants are folded into the weights (:func:`~graphattn.nn.equivariant.radial.
        folded_layers`). Same function as ``msg_gate(torch.cat([s_i, s_j, R], -1))``, tested."""
        layers, scale = folded_layers(self.msg_gate)
        C = self.n_scalars
        (w, act), rest = layers[0], layers[1:]
        h = torch.addmm((s @ w[:C]).index_select(0, dst) + (s @ w[C: 2 * C]).index_select(0, src),
                        radial, w[2 * C:])
        if act is not None:
            h = act(h)
        h = apply_folded(rest, h)
        return torch.sigmoid(h * scale if scale != 1.0 else h)

    def forward(self, x: Tensor, alpha: Tensor, graph: EdgeGraph, src: Tensor, dst: Tensor,
                radial: Tensor, sh: Tensor, edge_features: Tensor | None = None) -> Tensor:
        if alpha.dim() != 2 or alpha.shape[1] != self.heads:
            raise ValueError(f"'alpha' must be [E, heads={self.heads}], got {list(alpha.shape)}")
        m = self.edge_features(x, src, radial, sh) if edge_features is None else edge_features
        # sum_j coef_ij * m_ij channel by channel, without writing the scaled messages; with
        # the gate, alpha (per head) and the gate (per channel) are multiplied in the kernel
        if self.gated_messages:
            gate = self.message_gate(x[:, : self.n_scalars], src, dst, radial)
            agg = ops.aggregate_scaled(m, gate, graph, self.mid_blocks, head_coef=alpha)
        else:
            agg = ops.aggregate_scaled(m, ops.heads_to_channels(alpha, self.mid_blocks), graph,
                                       self.mid_blocks)
        return x + self.gate(self.lin(agg))


class EdgeGeometry(nn.Module):
    r"""Per-edge geometry: vector :math:`r_j - r_i` (+ periodic shift), length, radial basis
    :math:`R(r)`, cutoff envelope :math:`f_c(r)` and spherical harmonics
    :math:`Y(\hat r_{ij})` (``component`` normalisation).

    Shapes:
        - **pos**: :math:`(N, 3)`; **edge_index**: :math:`(2, E)` (row 0 source :math:`j`,
          row 1 target :math:`i`); **shift**: :math:`(E, 3)` or ``None``;
        - output: dict with ``vec`` :math:`(E, 3)`, ``r`` :math:`(E)`, ``radial``
          :math:`(E, B)`, ``fc`` :math:`(E)`, ``sh`` :math:`(E, (l_{max}+1)^2)` and ``graph``,
          the edges' :class:`~graphattn.index.EdgeGraph` (CSR by target), built once here for
          every interaction of the model.
    """

    def __init__(self, cutoff: float, lmax: int = 2, num_basis: int = 8) -> None:
        super().__init__()
        from .radial import BesselBasis, PolynomialCutoff

        o3, _ = _e3nn()
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True,
                                        normalization="component")
        self.basis = BesselBasis(cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff)

    def forward(self, pos: Tensor, edge_index: Tensor, shift: Tensor | None = None) -> dict:
        _check_pos(pos)
        # the graph first: building it checks the indices against the atoms (a message that
        # names them) before any gather of positions meets an out-of-range one
        graph = ops.build_graph(edge_index, pos.shape[0], cache=False)
        vec, r = edge_vectors(pos, edge_index, shift, check_index=False)  # build_graph did
        if r.numel() and bool((r == 0).any()):
            raise ValueError("two atoms joined by an edge sit at the same position (r = 0)")
        fc = self.envelope(r)
        return {"vec": vec, "r": r, "fc": fc, "radial": self.basis(r) * fc.unsqueeze(-1),
                "sh": self.sh(vec), "graph": graph}


def check_batch(batch: Tensor | None, num_nodes: int, device: torch.device) -> Tensor:
    """``batch`` as an int64 tensor (all zeros when ``None``) after the checks of the radius
    and kNN graphs (:mod:`graphattn.geometry`: an integer ``[num_nodes]`` tensor of graph ids
    >= 0) and one more: sorted, as PyG's ``Batch`` gives it, since the segment reductions of
    the readouts take each structure's nodes as one contiguous segment."""
    batch = _check_batch(batch, num_nodes, device)
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("'batch' must be sorted (PyG's Batch is)")
    return batch


def check_edges_within(graph: EdgeGraph, batch: Tensor) -> None:
    """The edges of a caller's ``edge_index`` (as the validated ``graph`` of
    :class:`EdgeGeometry`) must stay inside one structure of ``batch``: an edge between two
    would let one structure's atoms change the other's energy. Skipped under
    ``torch.compile`` (a host sync)."""
    if torch.compiler.is_compiling():
        return
    if bool((batch.index_select(0, graph.src) != batch.index_select(0, graph.dst)).any()):
        raise ValueError("'edge_index' joins atoms of different structures of 'batch'")


def geometry_graph(geom: dict, edge_index: Tensor, num_nodes: int) -> EdgeGraph:
    """The ``graph`` of an :class:`EdgeGeometry` dict, or one built from ``edge_index`` when the
    dict was assembled by hand without it."""
    graph = geom.get("graph")
    if graph is None:
        return ops.build_graph(edge_index, num_nodes, cache=False)
    if graph.src.shape[0] != edge_index.shape[1] or graph.num_dst != num_nodes:
        raise ValueError(f"'geom' holds the graph of {graph.src.shape[0]} edges over "
                         f"{graph.num_dst} nodes, but 'edge_index' has {edge_index.shape[1]} "
                         f"edges and 'x' {num_nodes} nodes: compute 'geom' from this graph")
    return graph
