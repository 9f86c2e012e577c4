r"""Destination-sorted CSR (and transposed CSC) views of an ``edge_index``.

Every op of :mod:`graphattn.ops` works on an :class:`EdgeGraph`: the edges sorted by
destination, so that the in-edges of destination :math:`i` are the contiguous range
``ptr[i]:ptr[i+1]`` of ``src``, plus the permutation back to the caller's edge order and
the transposed view used by the backward pass to reduce over sources without atomics.

Building a graph is a counting sort of the edges by destination and one by source (C++, on
the CPU with the extension built; O(E + N), no temporaries of the edges' size) or two stable
``torch.sort`` calls (elsewhere); both give the same tensors. :func:`build_graph` caches the
result per ``edge_index`` tensor (the same object, unmodified, with the same node counts) so a
layer stack over the same graph pays it once.

Example:
    >>> import torch
    >>> from graphattn.index import build_graph
    >>> edge_index = torch.tensor([[0, 1, 2, 2], [1, 2, 0, 1]])
    >>> g = build_graph(edge_index, num_nodes=3)
    >>> g.ptr.tolist(), g.src.tolist()
    ([0, 1, 3, 4], [2, 0, 2, 1])
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["EdgeGraph", "build_graph", "clear_graph_cache", "validate_edge_index"]


class _cached:
    """``functools.cached_property`` without its lock (Python 3.11's takes an ``RLock``, which
    ``torch.compile`` cannot trace): the value is formed on first access and kept in the
    instance (a frozen dataclass too: its ``__dict__`` is written directly). Under
    ``torch.compile`` it is formed in the graph and not kept, so a compiled region has no side
    effect on the graph object."""

    def __init__(self, fn) -> None:
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        value = self.fn(obj)
        if not torch.compiler.is_compiling():
            obj.__dict__[self.name] = value
        return value


@dataclass(frozen=True, eq=False)
class EdgeGraph:
    r"""A bipartite edge set :math:`j \to i` in destination-sorted CSR form.

    Attributes:
        ptr (Tensor): ``[num_dst + 1]`` int64, row pointers of the in-edges of each
            destination.
        src (Tensor): ``[E]`` int64, source of each edge in CSR order.
        dst (Tensor): ``[E]`` int64, destination of each edge in CSR order (formed from
            ``ptr`` on first use by graphs of the native builder, then kept).
        perm (Tensor): ``[E]`` int64, ``perm[c]`` is the caller's id of the edge at CSR
            position ``c``.
        csc_ptr (Tensor): ``[num_src + 1]`` int64, row pointers of the out-edges of each
            source.
        csc_eid (Tensor): ``[E]`` int64, CSR position of each edge in CSC order.
        csc_dst (Tensor): ``[E]`` int64, destination of each edge in CSC order.
        num_src (int): number of source nodes.
        num_dst (int): number of destination nodes.
        edge_index (Tensor): ``[2, E]`` the edge list this graph represents, in the
            caller's order (with self-loops added when built with ``self_loops=True``;
            formed from ``input_index`` and ``kept`` on first use, then kept; for a graph
            assembled without ``input_index``, its CSR endpoints put back in caller order).
        input_index (Tensor, optional): the ``edge_index`` given to :func:`build_graph`.
        kept (Tensor, optional): for graphs built with ``self_loops=True``, the ids (in the
            original ``edge_index``) of the non-loop edges, which come first; the
            ``min(num_src, num_dst)`` added loops follow them.
        presorted (bool): the caller's edges were already sorted by destination, so ``perm``
            is the identity and :meth:`to_csr` / :meth:`from_csr` return their input
            unchanged (no gather forward, no scatter into zeros backward). Set by
            :func:`build_graph` outside ``torch.compile``.
        iperm (Tensor, optional): ``[E]`` int64, the inverse of ``perm`` (CSR position of
            each caller's edge), so that :meth:`to_csr` and :meth:`from_csr` are gathers
            forward and backward (:class:`_Permute`); ``None`` for a presorted graph. Formed
            on first use by graphs of the native builder, then kept.
        validated_index (tuple, optional): set by :func:`build_graph` when it checked the
            ``edge_index``, so that ``ptr``, ``src`` and the CSC view are valid by
            construction: those five tensors with their version counters at the time, and
            ``(num_src, num_dst)`` (see :meth:`indices_trusted`).

    ``dst``, ``iperm`` and ``edge_index`` are cached on first use (:class:`_cached`): a
    graph of the native builder holds only the six index tensors (and ``kept``) until one of
    them is asked for, so that the layers, which need none of them, pay no memory for them;
    the torch builder (GPU, ``torch.compile``, backend ``"reference"``) fills them in at
    construction.
    """

    ptr: Tensor
    src: Tensor
    perm: Tensor
    csc_ptr: Tensor
    csc_eid: Tensor
    csc_dst: Tensor
    num_src: int
    num_dst: int
    input_index: Tensor | None = None
    kept: Tensor | None = None
    presorted: bool = False
    validated_index: tuple[tuple[Tensor, int], ...] | None = None
    validated_sizes: tuple[int, int] | None = None

    @_cached
    def dst(self) -> Tensor:
        nodes = torch.arange(self.num_dst, device=self.ptr.device, dtype=torch.long)
        return torch.repeat_interleave(nodes, self.in_degree(), output_size=self.num_edges)

    @_cached
    def iperm(self) -> Tensor | None:
        if self.presorted:
            return None
        return _inverse(self.perm)

    @_cached
    def edge_index(self) -> Tensor:
        if self.input_index is None:  # assembled by hand: its CSR endpoints in caller order
            return torch.stack([self.from_csr(self.src), self.from_csr(self.dst)])
        if self.kept is None:
            return self.input_index
        return _append_loops(self.input_index.index_select(1, self.kept), self.num_src,
                             self.num_dst)

    @property
    def num_edges(self) -> int:
        return self.src.size(0)

    @property
    def device(self) -> torch.device:
        return self.src.device

    def to_csr(self, edge_values: Tensor) -> Tensor:
        """Reorders a per-edge tensor from the caller's order into CSR order."""
        if self.presorted:
            return edge_values
        if not torch.compiler.is_compiling() and self.iperm is not None:
            return _Permute.apply(edge_values, self.perm, self.iperm)
        return edge_values.index_select(0, self.perm)

    def from_csr(self, csr_values: Tensor) -> Tensor:
        """Reorders a per-edge tensor from CSR order back to the caller's order."""
        if self.presorted:
            return csr_values
        if not torch.compiler.is_compiling() and self.iperm is not None:
            return _Permute.apply(csr_values, self.iperm, self.perm)
        out = torch.empty_like(csr_values)
        return out.index_copy_(0, self.perm, csr_values)

    def _index_tensors(self) -> tuple[Tensor, ...]:
        return (self.ptr, self.src, self.csc_ptr, self.csc_eid, self.csc_dst)

    @property
    def validated(self) -> bool:
        """Built by :func:`build_graph` from an ``edge_index`` it checked."""
        return self.validated_index is not None

    def indices_trusted(self) -> bool:
        """Whether the kernels may skip reading the index contents to check them: the graph
        was built from a validated ``edge_index``, and its index tensors are still the ones
        built then (not swapped by ``dataclasses.replace``), unmodified in place (same version
        counters), over the node counts validated then (a ``replace`` of ``num_src`` or
        ``num_dst`` would let an index run past the features). The native ops then check
        dtypes, devices and sizes only; on the GPU that saves a host sync per index (seven per
        attention forward + backward). Always ``False`` under ``torch.compile``, where the
        kernels check everything as for any other caller."""
        if self.validated_index is None or torch.compiler.is_compiling():
            return False
        if self.validated_sizes != (self.num_src, self.num_dst):
            return False
        return all(t is cur and t._version == version for (t, version), cur
                   in zip(self.validated_index, self._index_tensors()))

    def in_degree(self) -> Tensor:
        """Number of in-edges of each destination, ``[num_dst]``."""
        return self.ptr[1:] - self.ptr[:-1]

    def __repr__(self) -> str:
        return (
            f"EdgeGraph(num_src={self.num_src}, num_dst={self.num_dst}, "
            f"num_edges={self.num_edges}, device={self.device})"
        )


class _Permute(torch.autograd.Function):
    r"""``x.index_select(0, perm)`` for a permutation ``perm`` with inverse ``iperm``: the
    gradient is the gather ``g.index_select(0, iperm)``, not ``index_select``'s general
    backward (a scatter-add into zeros). At E = 200k, H = 4 on 2 threads the general forms
    took 12 ms (to CSR) and 6 ms (back) of forward + backward, as gathers 4 and 2 ms.
    Differentiable to any order, in forward mode too (``jvp``: the same gather of the
    tangent; also through a backward recorded outside the dual level), and under ``torch.func``
    transforms; ``torch.compile``, which makes its own backward and does not trace a custom
    ``jvp``, takes the plain forms (:meth:`EdgeGraph.to_csr`, :meth:`EdgeGraph.from_csr`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, perm: Tensor, iperm: Tensor) -> Tensor:
        return x.index_select(0, perm)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, perm, iperm = inputs
        ctx.save_for_backward(perm, iperm)
        ctx.perm = perm  # an index, not differentiated: read by jvp

    @staticmethod
    def backward(ctx, grad: Tensor):
        perm, iperm = ctx.saved_tensors
        return _Permute.apply(grad, iperm, perm), None, None

    @staticmethod
    def jvp(ctx, tangent: Tensor, *_):
        return tangent.index_select(0, ctx.perm)


def validate_edge_index(edge_index: Tensor, num_src: int, num_dst: int) -> None:
    """Raises a clear error if ``edge_index`` is not a valid ``[2, E]`` int64 index.

    This check reads the index on the host (one sync); :func:`build_graph` calls it once per
    cached graph, never under ``torch.compile``.
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"'edge_index' must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype != torch.long:
        raise TypeError(
            f"'edge_index' must have dtype torch.int64 (long), got {edge_index.dtype}"
        )
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(
            f"'edge_index' must have shape [2, num_edges], got {list(edge_index.shape)}"
        )
    if num_src < 0 or num_dst < 0:
        raise ValueError(f"node counts must be non-negative, got ({num_src}, {num_dst})")
    if edge_index.numel() == 0:
        return
    lo = int(edge_index.min())
    if lo < 0:
        raise ValueError(f"'edge_index' must be non-negative, found the index {lo}")
    src_max, dst_max = int(edge_index[0].max()), int(edge_index[1].max())
    if src_max >= num_src:
        raise ValueError(
            f"'edge_index[0]' (sources) holds {src_max}, out of range for {num_src} source nodes"
        )
    if dst_max >= num_dst:
        raise ValueError(
            f"'edge_index[1]' (destinations) holds {dst_max}, out of range for "
            f"{num_dst} destination nodes"
        )


def _inverse(perm: Tensor) -> Tensor:
    iperm = torch.empty_like(perm)
    iperm[perm] = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    return iperm


def _append_loops(edge_index: Tensor, num_src: int, num_dst: int) -> Tensor:
    loop = torch.arange(min(num_src, num_dst), device=edge_index.device, dtype=torch.long)
    return torch.cat([edge_index, loop.unsqueeze(0).repeat(2, 1)], dim=1)


def _build(
    edge_index: Tensor, num_src: int, num_dst: int, kept: Tensor | None = None,
    presorted: bool = False, validated: bool = False, input_index: Tensor | None = None,
) -> EdgeGraph:
    """The torch builder (two stable sorts); every attribute is formed here."""
    src, dst = edge_index[0], edge_index[1]
    # stable sorts keep the caller's order among equal keys (deterministic CSR)
    perm = torch.sort(dst, stable=True).indices
    src_csr, dst_csr = src.index_select(0, perm), dst.index_select(0, perm)
    nodes_d = torch.arange(num_dst + 1, device=dst.device, dtype=torch.long)
    ptr = torch.searchsorted(dst_csr, nodes_d)
    csc_eid = torch.sort(src_csr, stable=True).indices
    src_csc = src_csr.index_select(0, csc_eid)
    nodes_s = torch.arange(num_src + 1, device=src.device, dtype=torch.long)
    csc_ptr = torch.searchsorted(src_csc, nodes_s)
    csc_dst = dst_csr.index_select(0, csc_eid)
    index = [t.contiguous() for t in (ptr, src_csr, csc_ptr, csc_eid, csc_dst)]
    graph = _graph(index, perm.contiguous(), num_src, num_dst,
                   edge_index if input_index is None else input_index, kept, presorted,
                   validated)
    # the cached properties, filled in (object.__setattr__: the dataclass is frozen)
    object.__setattr__(graph, "dst", dst_csr.contiguous())
    object.__setattr__(graph, "iperm", None if presorted else _inverse(perm))
    object.__setattr__(graph, "edge_index", edge_index)
    return graph


def _graph(index: list[Tensor], perm: Tensor, num_src: int, num_dst: int,
           input_index: Tensor, kept: Tensor | None, presorted: bool,
           validated: bool) -> EdgeGraph:
    return EdgeGraph(
        ptr=index[0],
        src=index[1],
        perm=perm,
        csc_ptr=index[2],
        csc_eid=index[3],
        csc_dst=index[4],
        num_src=num_src,
        num_dst=num_dst,
        input_index=input_index,
        kept=kept,
        presorted=presorted,
        # an in-range edge_index makes every index above valid by construction (searchsorted
        # pointers over sorted keys, permutations of range(E), gathers of in-range ids)
        validated_index=tuple((t, t._version) for t in index) if validated else None,
        validated_sizes=(num_src, num_dst) if validated else None,
    )


def _native_builder(edge_index: Tensor) -> bool:
    """Whether :func:`build_graph` takes the C++ counting sort (``graphattn::edge_csr``): CPU
    indices, the extension loaded, outside ``torch.compile`` and backend ``"reference"``."""
    from .ops import _native_cpu_op

    return _native_cpu_op(edge_index, "edge_csr")


def _build_native(edge_index: Tensor, num_src: int, num_dst: int, self_loops: bool,
                  validated: bool) -> EdgeGraph:
    """The C++ builder (csrc/cpu/graph_build.cpp): the same tensors as :func:`_build`, with
    no temporaries of the edges' size; ``dst``, ``iperm`` and ``edge_index`` are left to
    their first use."""
    ptr, perm, src, csc_ptr, csc_eid, csc_dst, kept = torch.ops.graphattn.edge_csr(
        edge_index, num_src, num_dst, self_loops)
    return _graph([ptr, src, csc_ptr, csc_eid, csc_dst], perm, num_src, num_dst, edge_index,
                  kept if self_loops else None, not self_loops and _dst_sorted(edge_index),
                  validated)


def _dst_sorted(edge_index: Tensor) -> bool:
    """Whether the edges come sorted by destination (then the CSR order is theirs)."""
    dst = edge_index[1]
    return dst.numel() < 2 or bool((dst[1:] >= dst[:-1]).all())


def _with_self_loops(edge_index: Tensor, num_src: int, num_dst: int) -> tuple[Tensor, Tensor]:
    """PyG's ``remove_self_loops`` + ``add_self_loops``: drops every loop, appends one per node."""
    kept = (edge_index[0] != edge_index[1]).nonzero().view(-1)
    return _append_loops(edge_index.index_select(1, kept), num_src, num_dst), kept


_CACHE: OrderedDict[tuple, tuple[weakref.ref, EdgeGraph]] = OrderedDict()
_CACHE_SIZE = 16


def clear_graph_cache() -> None:
    """Empties the per-``edge_index`` cache of :func:`build_graph`."""
    _CACHE.clear()


def build_graph(
    edge_index: Tensor | EdgeGraph,
    num_nodes: int | tuple[int, int] | None = None,
    *,
    cache: bool = True,
    validate: bool = True,
    self_loops: bool = False,
) -> EdgeGraph:
    r"""Builds (or fetches from the cache) the :class:`EdgeGraph` of ``edge_index``.

    Args:
        edge_index (Tensor or EdgeGraph): ``[2, E]`` int64, row 0 sources, row 1
            destinations (PyG's ``flow="source_to_target"``). An :class:`EdgeGraph` is
            returned as it is.
        num_nodes (int or (int, int)): number of nodes, or ``(num_src, num_dst)`` for a
            bipartite graph. Required: graphattn never infers sizes with a host sync.
        cache (bool): reuse the graph built for the same ``edge_index`` tensor.
        validate (bool): check dtype, shape and index range (one host sync per new graph).
            A validated graph lets the native kernels skip their own index checks
            (:meth:`EdgeGraph.indices_trusted`); with ``validate=False`` they check every
            index on every call (on the GPU, a host sync each). The reference (torch) path
            has no such check: there an unvalidated out-of-range source raises from torch's
            gather, but a destination beyond ``num_dst`` leaves its edge outside every row
            (dropped without a word), so keep the default unless the indices are known good.
        self_loops (bool): remove the self-loops of ``edge_index`` and add one per node (the
            first ``min(num_src, num_dst)`` nodes), exactly as PyG's ``GATConv`` does;
            ``graph.kept`` then maps the remaining edges to their original ids. This needs a
            data-dependent shape, so it is not available under ``torch.compile``: build the
            graph once outside and pass it in.

    Under ``torch.compile`` the cache and the validation are skipped, so the build traces
    without graph breaks.
    """
    if isinstance(edge_index, EdgeGraph):
        return edge_index
    if num_nodes is None:
        raise ValueError("'num_nodes' is required: pass an int or (num_src, num_dst)")
    if isinstance(num_nodes, (tuple, list)):
        if len(num_nodes) != 2:
            raise ValueError(f"'num_nodes' must be an int or a pair, got {num_nodes!r}")
        num_src, num_dst = num_nodes
    else:
        num_src = num_dst = num_nodes
    if torch.compiler.is_compiling():
        if self_loops:
            raise RuntimeError(
                "build_graph(self_loops=True) has a data-dependent size and cannot run under "
                "torch.compile; build the EdgeGraph outside the compiled region and pass it in"
            )
        return _build(edge_index, num_src, num_dst)
    for n in (num_src, num_dst):
        # anything with __index__ (ints, NumPy ints, 0-d integer tensors) or a SymInt;
        # not floats, strings or bools
        if isinstance(n, bool) or (isinstance(n, Tensor) and (
                n.dtype == torch.bool or n.is_floating_point() or n.is_complex())) or (
                not isinstance(n, torch.SymInt) and not hasattr(type(n), "__index__")):
            raise TypeError(f"'num_nodes' must be a non-negative int or a pair of them, "
                            f"got {num_nodes!r}")
        if int(n) < 0:
            raise ValueError(f"'num_nodes' must be non-negative, got {num_nodes!r}")
    key = None
    if cache:
        # id() plus a weak reference: a freed tensor whose id is reused never hits
        key = (id(edge_index), edge_index._version, int(num_src), int(num_dst), self_loops)
        hit = _CACHE.get(key)
        # a graph cached unvalidated is not returned to a call that asks for the check
        if hit is not None and hit[0]() is edge_index and (hit[1].validated or not validate):
            _CACHE.move_to_end(key)
            return hit[1]
    if validate:
        validate_edge_index(edge_index, int(num_src), int(num_dst))
    if _native_builder(edge_index):
        graph = _build_native(edge_index, int(num_src), int(num_dst), self_loops, validate)
    elif self_loops:
        with_loops, kept = _with_self_loops(edge_index, int(num_src), int(num_dst))
        graph = _build(with_loops, int(num_src), int(num_dst), kept, validated=validate,
                       input_index=edge_index)
    else:
        graph = _build(edge_index, int(num_src), int(num_dst),
                       presorted=_dst_sorted(edge_index), validated=validate)
    if key is not None:
        _CACHE[key] = (weakref.ref(edge_index), graph)
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return graph
