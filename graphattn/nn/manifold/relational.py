r"""Relational message passing over typed edges with inverse relations (DyMRL's branches).

Each layer computes, for every entity :math:`o` with in-edges,

.. math::
    \mathbf{h}'_o = \frac{1}{\deg(o)}\sum_{(s, r) \to o} \mathbf{m}(\mathbf{h}_s, r) + \mathbf{b},

and leaves entities without in-edges unchanged (:math:`\mathbf{h}'_o = \mathbf{h}_o`), as the
released DyMRL code does. The mean runs in :func:`graphattn.ops.aggregate`. Inverse edges
:math:`(o, r + |R|, s)` are part of :class:`RelationalGraph`, so in- and out-degree agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ... import ops
from ...index import EdgeGraph, build_graph
from ._checks import check_float_tensor, check_real
from .messages import atth_message, complex_message, translation_message
from .poincare import PoincareBall


@dataclass
class RelationalGraph:
    """A snapshot: typed edges ``src -(rel)-> dst`` over ``num_nodes`` nodes, inverses
    included.

    Attributes:
        src, dst, rel: ``[E]`` int64.
        num_nodes: Number of nodes.
        graph: The :class:`~graphattn.index.EdgeGraph` of ``(src, dst)``.
        has_in: ``[num_nodes]`` bool, nodes with at least one in-edge.
        node_entity: ``[num_nodes]`` entity id of each node, when nodes are not entities
            themselves (unions of snapshots, compacted graphs); ``None`` means identity.
        num_relations: ``R`` of :meth:`from_triples` (inverse ids are ``r + R``), checked
            against the model's; ``None`` for graphs assembled by hand.
    """

    src: Tensor
    dst: Tensor
    rel: Tensor
    num_nodes: int
    graph: EdgeGraph
    has_in: Tensor
    node_entity: Tensor | None = None
    num_relations: int | None = None

    def entity_of(self, nodes: Tensor) -> Tensor:
        return nodes if self.node_entity is None else self.node_entity[nodes]

    def compact(self) -> tuple[RelationalGraph, Tensor]:
        """The subgraph on the nodes that have edges, renumbered ``0..n-1``, and those nodes'
        ids ``[n]`` in this graph. With inverse edges every source is also a destination, so
        the other nodes keep their vectors through every layer and can be left out."""
        nodes = torch.unique(torch.cat([self.src, self.dst]))
        local = torch.full((self.num_nodes,), -1, dtype=torch.long)
        local[nodes] = torch.arange(nodes.numel())
        s, d = local[self.src], local[self.dst]
        graph = build_graph(torch.stack([s, d]), nodes.numel(), cache=False)
        has_in = torch.zeros(nodes.numel(), dtype=torch.bool)
        has_in[d] = True
        return RelationalGraph(s, d, self.rel, nodes.numel(), graph, has_in,
                               self.entity_of(nodes), self.num_relations), nodes

    @classmethod
    def union(cls, graphs: list[RelationalGraph]) -> RelationalGraph:
        """Disjoint union: node ``i`` of ``graphs[j]`` becomes ``j * N + i`` (all graphs have
        ``N`` nodes), so ``k`` snapshots run as one graph over ``k N`` nodes.

        Raises:
            ValueError: No graphs, or graphs of different ``num_nodes`` / ``num_relations``.
        """
        if not graphs:
            raise ValueError("graphs must hold at least one RelationalGraph, got none")
        N = graphs[0].num_nodes
        if any(g.num_nodes != N for g in graphs):
            raise ValueError("all snapshots of a union must have the same number of nodes")
        src = torch.cat([g.src + j * N for j, g in enumerate(graphs)])
        dst = torch.cat([g.dst + j * N for j, g in enumerate(graphs)])
        rel = torch.cat([g.rel for g in graphs])
        graph = build_graph(torch.stack([src, dst]), N * len(graphs), cache=False)
        counts = {g.num_relations for g in graphs}
        if len(counts) > 1:
            raise ValueError(f"all snapshots of a union must have the same num_relations, got "
                             f"{sorted(counts, key=str)}")
        return cls(src, dst, rel, N * len(graphs), graph, torch.cat([g.has_in for g in graphs]),
                   torch.arange(N * len(graphs)) % N, counts.pop())

    @classmethod
    def from_triples(cls, s: Tensor, r: Tensor, o: Tensor, num_nodes: int,
                     num_relations: int) -> RelationalGraph:
        """Adds the inverse edge ``(o, r + num_relations, s)`` of every triple."""
        for name, t in (("s", s), ("r", r), ("o", o)):
            if t.dtype != torch.long or t.dim() != 1:
                raise TypeError(f"'{name}' must be a 1-D int64 tensor, got {t.dtype} {t.dim()}-D")
        if not s.numel() == r.numel() == o.numel():
            raise ValueError(f"s, r, o must have equal lengths, got {s.numel()}, {r.numel()}, "
                             f"{o.numel()}")
        if s.numel() and (r.min() < 0 or r.max() >= num_relations):
            raise ValueError(f"relation ids must be in [0, {num_relations}), got "
                             f"[{int(r.min())}, {int(r.max())}]")
        src, dst = torch.cat([s, o]), torch.cat([o, s])
        rel = torch.cat([r, r + num_relations])
        graph = build_graph(torch.stack([src, dst]), num_nodes, cache=False)
        has_in = torch.zeros(num_nodes, dtype=torch.bool)
        has_in[dst] = True
        return cls(src, dst, rel, num_nodes, graph, has_in, None, num_relations)

    def relabel(self, perm: Tensor) -> RelationalGraph:
        """The same graph with node ``i`` renamed ``perm[i]``.

        Args:
            perm: ``[num_nodes]`` int64, a permutation of ``0..num_nodes-1``.

        Raises:
            TypeError: ``perm`` not an int64 tensor.
            ValueError: ``perm`` of another length, or not a permutation (an id twice, or out
                of range), which would merge or drop nodes.
        """
        N = self.num_nodes
        if not isinstance(perm, Tensor) or perm.dtype != torch.long:
            raise TypeError(f"perm must be an int64 tensor, got "
                            f"{getattr(perm, 'dtype', type(perm).__name__)}")
        if perm.shape != (N,):
            raise ValueError(f"perm must be [num_nodes] = [{N}], got {list(perm.shape)}")
        if not torch.equal(perm.sort().values, torch.arange(N, device=perm.device)):
            raise ValueError(f"perm must be a permutation of 0..{N - 1} (each node id once), got "
                             f"{perm.tolist() if N <= 20 else 'repeated or out-of-range ids'}")
        s, d = perm[self.src], perm[self.dst]
        graph = build_graph(torch.stack([s, d]), self.num_nodes, cache=False)
        return RelationalGraph(s, d, self.rel, self.num_nodes, graph,
                               self.has_in[torch.argsort(perm)], None, self.num_relations)


class RelationalLayer(nn.Module):
    r"""One DyMRL branch layer: mean of typed messages plus a bias; isolated nodes keep
    their vector.

    Args:
        kind: ``"euclidean"``, ``"complex"`` or ``"hyperbolic"`` (see
            :mod:`graphattn.nn.manifold.messages`).
        num_nodes: Entities (the complex layer owns its imaginary table ``[N, d]``).
        dim: ``d``.
        ball: The shared :class:`PoincareBall` (hyperbolic kind).
        init_scale: Standard deviation of the imaginary table's initialisation.

    Shapes:
        - **input:** ``h [num_nodes, d]`` (nodes are entities, or map to entities through
          ``node_entity`` for unions and compacted graphs), a :class:`RelationalGraph`,
          relation tensors indexed by
          relation id: ``rel [2R, d]`` (euclidean), ``rel_re, rel_im [2R, d]`` (complex), or
          ``rot, ref, context, trans [2R, d]`` (hyperbolic)
        - **output:** ``[N, d]``, the dtype of ``h``

    ``h`` and every relation table must have the dtype of the layer's parameters, and each
    table one row for every relation id the graph uses (a ``TypeError`` or ``ValueError``
    naming the argument otherwise).
    """

    KINDS = ("euclidean", "complex", "hyperbolic")
    TABLES = {"euclidean": ("rel",), "complex": ("rel_re", "rel_im"),
              "hyperbolic": ("rot", "ref", "context", "trans")}

    def __init__(self, kind: str, num_nodes: int, dim: int, ball: PoincareBall | None = None,
                 init_scale: float = 1e-3) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        if kind == "hyperbolic" and ball is None:
            raise ValueError("the hyperbolic layer needs the shared PoincareBall 'ball'")
        init_scale = check_real(init_scale, "init_scale", allow_zero=True)
        self.kind = kind
        self.ball = ball
        self.bias = nn.Parameter(torch.zeros(dim))
        self.imag = (nn.Parameter(init_scale * torch.randn(num_nodes, dim))
                     if kind == "complex" else None)

    def forward(self, h: Tensor, g: RelationalGraph, *rel: Tensor) -> Tensor:
        check_float_tensor("h", h, self.bias.dtype)
        if h.dim() != 2 or h.size(0) != g.num_nodes:
            raise ValueError(f"h must be [{g.num_nodes}, d], got {tuple(h.shape)}")
        names = self.TABLES[self.kind]
        if len(rel) != len(names):
            raise TypeError(f"the {self.kind} layer takes {len(names)} relation table(s) "
                            f"({', '.join(names)}), got {len(rel)}")
        for i, t in enumerate(rel):  # one row per relation id, the width of h (no broadcast)
            check_float_tensor(f"relation table {i} ({names[i]})", t, h.dtype)
            if t.dim() != 2 or t.size(1) != h.size(1):
                raise ValueError(f"relation table {i} must be [num relation ids, d={h.size(1)}], "
                                 f"got {list(t.shape)}")
        if g.src.numel() == 0:
            return h
        top = int(g.rel.max())
        for i, t in enumerate(rel):
            if t.size(0) <= top:
                raise ValueError(f"relation table {i} ({names[i]}) has {t.size(0)} rows, but the "
                                 f"graph uses relation id {top} (inverses included): it must "
                                 f"be [num relation ids, d]")
        hs = h[g.src]
        rr = [t[g.rel] for t in rel]
        if self.kind == "euclidean":
            m = translation_message(hs, *rr)
        elif self.kind == "complex":
            m = complex_message(hs, self.imag[g.entity_of(g.src)], *rr)
        else:
            m = atth_message(self.ball, hs, *rr)
        out = ops.aggregate(m, g.graph, reduce="mean") + self.bias
        return torch.where(g.has_in.unsqueeze(1), out, h)
