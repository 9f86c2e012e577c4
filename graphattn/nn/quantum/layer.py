r"""Q-AGNN: parameterised quantum circuits inside attentive graph learning.

Reconstructed from "Quantum-Enhanced Attentive Graph Neural Networks for intrusion
detection" (Q-AGNN; Chaudhary, Rajasegarar, Pokhrel). The abstract fixes the ingredients
(flows as nodes, similarity edges, PQCs encoding multi-hop neighbourhoods as a bounded
second-order polynomial graph filter, attention over the quantum embeddings, noisy and IBM
hardware runs); the architecture below is the reconstruction of
``../shared/papers/GRAPH_PAPERS.md`` section 5.2, because the paper's methods text and code
were not available. Reconstructed choices: the encoding :math:`\pi\,\sigma(\cdot)`, the
attention after (not inside) the circuit, ``Z`` read-out on every qubit, and the defaults of
``num_qubits``/``reps``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from ... import ops
from ..._checks import check_int
from ...index import build_graph, validate_edge_index
from ..conv import GraphAttention
from .circuit import CircuitSpec
from .execution import Executor, quantum_expectations


class MultiHopEncoder(nn.Module):
    r"""The pre-quantum polynomial filter of Q-AGNN:

    .. math::
        \mathbf{z}_i = \sum_{k=0}^{K} (\hat{\mathbf{A}}^k \mathbf{X})_i \mathbf{W}_k + \mathbf{b},
        \qquad \hat{\mathbf{A}} = \mathbf{D}^{-1/2}(\mathbf{A} + \mathbf{I})\mathbf{D}^{-1/2},

    i.e. a linear map of :math:`[\mathbf{x}_i \,\|\, (\hat{\mathbf{A}}\mathbf{X})_i \,\|\,
    (\hat{\mathbf{A}}^2\mathbf{X})_i]` for ``K = 2``. It equals PyG's ``TAGConv(K)`` on the same
    normalisation (``add_self_loops=False`` gives TAGConv's own
    :math:`\mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}`). Propagation goes through
    :func:`graphattn.ops.aggregate`.

    Args:
        in_channels: ``F``.
        out_channels: Output size (the number of qubits in Q-AGNN).
        K: Number of hops (an ``int`` >= 0, not a ``bool``).
        add_self_loops: Use :math:`\mathbf{A} + \mathbf{I}` (default, the paper's
            :math:`\hat{\mathbf{A}}`) or :math:`\mathbf{A}`.
        bias: Learn :math:`\mathbf{b}`.

    Shapes:
        - **input:** ``x [N, F]``, ``edge_index [2, E]``, ``edge_weight [E]`` (optional)
        - **output:** ``[N, out_channels]``
    """

    def __init__(self, in_channels: int, out_channels: int, K: int = 2,
                 add_self_loops: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.K = check_int(K, "K", 0)
        self.add_self_loops = add_self_loops
        self.lin = nn.Linear((K + 1) * in_channels, out_channels, bias=bias)

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()

    def hops(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        r""":math:`[\mathbf{X} \,\|\, \hat{\mathbf{A}}\mathbf{X} \,\|\, \dots \,\|\,
        \hat{\mathbf{A}}^K\mathbf{X}]`, ``[N, (K+1) F]``."""
        self._check(x, edge_index, edge_weight)
        N = x.size(0)
        ei, w = gcn_norm(edge_index, edge_weight, N, improved=False,
                         add_self_loops=self.add_self_loops, dtype=x.dtype)
        graph = build_graph(ei, N)
        out, h = [x], x
        for _ in range(self.K):
            h = ops.aggregate(w.unsqueeze(1) * h[ei[0]], graph)
            out.append(h)
        return torch.cat(out, dim=1)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        return self.lin(self.hops(x, edge_index, edge_weight))

    def _check(self, x: object, edge_index: object, edge_weight: object) -> None:
        """Named errors for inputs the filter cannot take (instead of torch's messages from
        deep inside, or NaN from the normalisation of a negative degree)."""
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"x must be a [N, F] tensor, got {getattr(x, 'shape', type(x))}")
        F_in = self.lin.in_features // (self.K + 1)
        if x.size(1) != F_in:
            raise ValueError(f"x must have {F_in} features (in_channels), got {list(x.shape)}")
        w = self.lin.weight
        if x.dtype != w.dtype:
            raise TypeError(f"x must have the dtype of the layer's parameters ({w.dtype}), got "
                            f"{x.dtype}")
        validate_edge_index(edge_index, x.size(0), x.size(0))
        if edge_weight is None:
            return
        if not isinstance(edge_weight, Tensor) or not edge_weight.is_floating_point():
            raise TypeError(f"edge_weight must be a floating-point tensor, got "
                            f"{getattr(edge_weight, 'dtype', type(edge_weight).__name__)}")
        if tuple(edge_weight.shape) != (edge_index.size(1),):
            raise ValueError(f"edge_weight must have shape [E] = [{edge_index.size(1)}], got "
                             f"{list(edge_weight.shape)}")
        if edge_weight.numel() and not bool(((edge_weight >= 0) & edge_weight.isfinite()).all()):
            raise ValueError("edge_weight must be finite and non-negative (the symmetric "
                             "normalisation takes the inverse square root of each degree)")


class QuantumGraphAttention(nn.Module):
    r"""Q-AGNN layer: quantum node embeddings of multi-hop features, then GAT attention.

    .. math::
        \boldsymbol\phi_i = \pi\,\sigma\Big(\textstyle\sum_{k=0}^{2}
            (\hat{\mathbf{A}}^k\mathbf{X})_i\mathbf{W}_k + \mathbf{b}\Big) \in (0, \pi)^n,
        \qquad
        e_{i,q} = \langle 0|\,U(\boldsymbol\phi_i, \boldsymbol\theta)^\dagger Z_q\,
            U(\boldsymbol\phi_i, \boldsymbol\theta)\,|0\rangle \in [-1, 1],

    with :math:`U = U_{\mathrm{SU2}}(\boldsymbol\theta)\bigotimes_q R_Y(\phi_{i,q})` (see
    :mod:`graphattn.nn.quantum.circuit`), and GAT attention over the bounded embeddings,

    .. math::
        \alpha_{ij} = \operatorname{softmax}_{j\in\mathcal{N}(i)\cup\{i\}}
            \mathrm{LeakyReLU}\big(\mathbf{a}^\top[\mathbf{W}\mathbf{e}_i \,\|\,
            \mathbf{W}\mathbf{e}_j]\big), \qquad
        \mathbf{h}_i = \mathrm{ELU}\Big(\sum_j \alpha_{ij}\mathbf{W}\mathbf{e}_j\Big),

    computed by :class:`~graphattn.nn.GraphAttention` on graphattn's fused core.

    The circuit runs on the exact torch statevector simulator (float64/complex128, autograd)
    unless an ``executor`` (:func:`~graphattn.nn.quantum.make_executor`) is set, in which case
    each forward pass is one primitive job over all ``N`` nodes and gradients come from the
    parameter-shift rule.

    Cost:
        ``N`` circuit evaluations per forward pass, plus ``2 N (n + 2 n (L+1))`` per backward
        pass on an executor (see :mod:`graphattn.nn.quantum.execution`).

    Args:
        in_channels: ``F``.
        out_channels: ``C`` per head.
        num_qubits: ``n``.
        reps: ``L`` of the EfficientSU2 ansatz.
        heads: Attention heads (concatenated).
        hops: ``K`` of the multi-hop encoder (2 in the paper).
        add_self_loops: Self-loops in :math:`\hat{\mathbf{A}}` and in the attention.
        negative_slope: LeakyReLU slope of the attention.
        dropout: Attention dropout.
        executor: Execution backend; ``None`` for the exact simulator.

    Shapes:
        - **input:** ``x [N, F]``, ``edge_index [2, E]``, ``edge_weight [E]`` (optional)
        - **output:** ``[N, heads * C]``
    """

    def __init__(self, in_channels: int, out_channels: int, num_qubits: int = 4, reps: int = 2,
                 heads: int = 1, hops: int = 2, add_self_loops: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0,
                 executor: Executor | None = None) -> None:
        super().__init__()
        self.spec = CircuitSpec(num_qubits, reps)
        self.encoder = MultiHopEncoder(in_channels, num_qubits, hops, add_self_loops)
        self.weights = nn.Parameter(torch.empty(self.spec.num_weights))
        self.attention = GraphAttention(num_qubits, out_channels, heads=heads, mode="gat",
                                        negative_slope=negative_slope, dropout=dropout,
                                        add_self_loops=add_self_loops)
        self.executor = executor
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        nn.init.uniform_(self.weights, -math.pi / 4, math.pi / 4)
        self.attention.reset_parameters()

    def angles(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        r"""Encoding angles :math:`\boldsymbol\phi`, ``[N, n]`` in :math:`(0, \pi)`."""
        return math.pi * torch.sigmoid(self.encoder(x, edge_index, edge_weight))

    def embed(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        r"""Quantum embeddings :math:`\mathbf{e}`, ``[N, n]`` in :math:`[-1, 1]`."""
        phi = self.angles(x, edge_index, edge_weight)
        e = quantum_expectations(self.spec, phi.double(), self.weights.double(), self.executor)
        return e.to(x.dtype)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        e = self.embed(x, edge_index, edge_weight)
        return F.elu(self.attention(e, edge_index))


class QAGNN(nn.Module):
    r"""Q-AGNN node classifier: :class:`QuantumGraphAttention` then an MLP head,
    :math:`\hat y_i = \sigma(\mathrm{MLP}(\mathbf{h}_i))`, trained with binary cross-entropy
    (:meth:`loss`).

    Args:
        in_channels: ``F``.
        hidden: Attention width per head and MLP width.
        num_qubits, reps, heads, hops, dropout, executor: As in :class:`QuantumGraphAttention`.

    Shapes:
        - **input:** ``x [N, F]``, ``edge_index [2, E]``
        - **output:** logits ``[N]``
    """

    def __init__(self, in_channels: int, hidden: int = 8, num_qubits: int = 4, reps: int = 2,
                 heads: int = 2, hops: int = 2, dropout: float = 0.0,
                 executor: Executor | None = None) -> None:
        super().__init__()
        self.conv = QuantumGraphAttention(in_channels, hidden, num_qubits, reps, heads, hops,
                                          executor=executor)
        self.head = nn.Sequential(nn.Linear(heads * hidden, hidden), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, 1))

    @property
    def executor(self) -> Executor | None:
        return self.conv.executor

    @executor.setter
    def executor(self, value: Executor | None) -> None:
        self.conv.executor = value

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        return self.head(self.conv(x, edge_index, edge_weight)).squeeze(-1)

    @staticmethod
    def loss(logits: Tensor, target: Tensor, pos_weight: float | Tensor | None = None) -> Tensor:
        """Binary cross-entropy on logits, averaged over the nodes.

        Args:
            logits: ``[N]`` floating logits, at least one (torch's mean over no elements
                would be NaN).
            target: Probabilities in [0, 1] of the shape of ``logits`` (the labels 0 / 1, or
                soft labels).
            pos_weight: One positive weight of the positive class, shared by all nodes: a
                finite number > 0 (a Python ``float`` / ``int`` or a 0-d or one-element
                tensor), or ``None`` (weight 1).

        Returns:
            A 0-d tensor in the dtype of ``logits``.

        Raises:
            TypeError: ``logits`` that are not a floating tensor; a ``pos_weight`` that is
                not a real number or real tensor (``bool`` included).
            ValueError: ``target`` of another shape or outside [0, 1]; an empty batch; a
                ``pos_weight`` with more than one element or not finite and > 0.
        """
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            raise TypeError(f"logits must be a floating-point tensor, got "
                            f"{getattr(logits, 'dtype', type(logits).__name__)}")
        if not isinstance(target, Tensor) or target.shape != logits.shape:
            raise ValueError(f"target must have the shape of logits {list(logits.shape)}, got "
                             f"{list(getattr(target, 'shape', [type(target).__name__]))}")
        if logits.numel() == 0:
            raise ValueError("logits must hold at least one node: the mean loss over an empty "
                             "batch is undefined (torch would return NaN)")
        if not bool(((target >= 0) & (target <= 1)).all()):
            raise ValueError(f"target must hold probabilities in [0, 1] (labels 0 / 1), got values "
                             f"in [{float(target.min())}, {float(target.max())}]")
        if pos_weight is not None:
            pos_weight = _scalar_pos_weight(pos_weight, logits)
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype),
                                                  pos_weight=pos_weight)


def _scalar_pos_weight(pos_weight: object, logits: Tensor) -> Tensor:
    """``pos_weight`` as a 0-d tensor of the dtype and device of ``logits``, after checking
    that it is one finite number > 0 (no per-node weights broadcast over the batch)."""
    if isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float, Tensor)) or (
            isinstance(pos_weight, Tensor)
            and (pos_weight.dtype == torch.bool or pos_weight.is_complex())):
        raise TypeError(f"pos_weight must be a real number or a real 0-d tensor, got "
                        f"{getattr(pos_weight, 'dtype', type(pos_weight).__name__)}")
    if isinstance(pos_weight, Tensor) and (pos_weight.dim() > 1 or pos_weight.numel() != 1):
        raise ValueError(f"pos_weight must be one weight shared by all nodes (a 0-d or "
                         f"one-element tensor), got shape {list(pos_weight.shape)}")
    pw = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device).reshape(())
    if not bool(torch.isfinite(pw) & (pw > 0)):
        raise ValueError(f"pos_weight must be positive (a finite number > 0), got {pw.item()}")
    return pw
