r"""Radius, kNN and periodic neighbour graphs in plain PyTorch (no ``torch-cluster``).

All graphs follow PyG's ``source_to_target`` convention: ``edge_index[0]`` is the source
(neighbour) :math:`j`, ``edge_index[1]`` the target (centre) :math:`i`, so a message-passing
layer aggregates over :math:`j \in \mathcal{N}(i)`. Edges are returned sorted by target, then
source (then image, for periodic graphs), and the output is deterministic.

**Radius graph.** :math:`j \in \mathcal{N}(i) \iff \lVert x_j - x_i \rVert < r`, with
:math:`i, j` in the same graph of the batch (strict inequality, as in ``torch-cluster``).
Distances are computed from coordinate differences (not the
:math:`\lVert a\rVert^2 + \lVert b\rVert^2 - 2a\cdot b` expansion, which loses precision),
``block`` targets at a time, so memory is :math:`O(\text{block} \cdot N)` instead of
:math:`O(N^2)`. When ``batch`` is sorted (PyG's collation), each block of targets only
looks at the sources of the graphs it touches. On the CPU with the extension built, the
radius and periodic graphs come from C++ cell lists instead (:func:`radius_graph`), edge for
edge the same graph in ``O(N + E)``, and so does the kNN graph of 3-D points
(:func:`knn_graph`, ``O(N k)``).

**Bipartite queries.** :func:`radius` and :func:`knn` are PyG's ``radius(x, y, ...)`` and
``knn(x, y, ...)``: for each point of ``y`` the points of ``x`` of its graph, returned in
PyG's order (row 0 indexes ``y``, row 1 ``x``; ``flip(0)`` for messages from ``x`` to ``y``),
on the same kernels and blockwise fallback.

**Periodic radius graph.** With lattice vectors :math:`a_1, a_2, a_3` (rows of ``cell``) an
atom :math:`j` has images :math:`x_j + S a` for integer :math:`S \in \mathbb{Z}^3`. An edge
``(j, i, S)`` exists when :math:`0 < \lVert x_j + S a - x_i \rVert < r` (the zero-length
self-pair :math:`j = i, S = 0` is dropped; an atom's own images are kept). The returned
``shift`` is the Cartesian offset :math:`S a`, so

.. math::  v_{ij} = x_j + \text{shift}_{ij} - x_i \quad(\text{source image minus target}).

The needed image range per periodic axis :math:`k` follows from the lattice-plane spacing
:math:`d_k = V / \lVert a_l \times a_m \rVert = 1 / \lVert b_k \rVert` (:math:`b` the
reciprocal rows, :math:`B = (A^{-1})^\top`): the fractional component of any vector
satisfies :math:`|f_k| \le \lVert v \rVert / d_k`, hence :math:`|S_k + \Delta f_k| < r/d_k` and
:math:`|S_k| \le \lceil r / d_k + \text{span}_k \rceil` where :math:`\text{span}_k` is the
range of the atoms' fractional coordinates (at most 1 for wrapped positions; larger when
atoms sit outside the cell — nothing is wrapped). So a cutoff larger than the cell simply
uses more images.

:func:`edge_vectors` returns :math:`v_{ij}` and :math:`\lVert v_{ij} \rVert` for either kind.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterator

import torch
from torch import Tensor

from ._checks import is_bool

__all__ = ["MAX_IMAGES", "edge_vectors", "knn", "knn_graph", "periodic_radius_graph", "radius",
           "radius_graph"]


def _check_pos(pos: Tensor, name: str = "pos") -> None:
    if not isinstance(pos, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [N, 3], got {type(pos).__name__}")
    if pos.dim() != 2 or pos.size(1) != 3:
        raise ValueError(f"{name} must have shape [N, 3], got {tuple(pos.shape)}")
    if not pos.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {pos.dtype}")


def _check_batch(batch: Tensor | None, n: int, device: torch.device) -> Tensor:
    if batch is None:
        return torch.zeros(n, dtype=torch.long, device=device)
    if not isinstance(batch, Tensor):
        raise TypeError(f"batch must be a torch.Tensor of shape [N], got {type(batch).__name__}")
    if batch.dim() != 1 or batch.numel() != n:
        raise ValueError(f"batch must have shape [N] = [{n}] (one graph id per row of pos), "
                         f"got {tuple(batch.shape)}")
    if batch.is_floating_point() or batch.dtype == torch.bool:
        raise TypeError(f"batch must be an integer tensor, got {batch.dtype}")
    if n and int(batch.min()) < 0:
        raise ValueError("batch must hold non-negative graph ids")
    return batch.long()


def _check_finite(t: Tensor, name: str) -> None:
    """A NaN or inf coordinate fails every distance comparison, so the graph builders would
    drop its atom's pairs without a word: they refuse it instead."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite: it holds NaN or inf entries")


def _check_r(r) -> None:
    ok = isinstance(r, (int, float)) and not isinstance(r, bool)
    try:
        ok = ok and math.isfinite(r) and r >= 0
    except OverflowError:  # an int beyond the largest double
        ok = False
    if not ok:
        raise ValueError(f"r must be a finite non-negative float, got {r!r}")


def _check_limit(value, name: str, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def _check_block(block: int) -> None:
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")


_MAX_PAIRS = 1 << 24  # pair-distance entries per step (~64 MB of float32)


def _blocks(batch: Tensor, block: int, sorted_batch: bool,
            ptr: Tensor | None) -> Iterator[tuple[int, int, int, int]]:
    """``(lo, hi, c0, c1)``: targets ``lo:hi`` and the columns ``c0:c1`` that can hold their
    neighbours (all nodes when ``batch`` is unsorted, else the graphs the block touches).
    Blocks shrink below ``block`` rows so that one step never exceeds ``_MAX_PAIRS`` pairs."""
    n = batch.numel()
    if sorted_batch and ptr is not None and ptr.numel() > 2:
        # Many graphs: a block costs rows x (rows + graph sizes) pair distances, so keep the
        # row count near the graph size instead of computing cross-graph pairs.
        largest = int((ptr[1:] - ptr[:-1]).max())
        block = min(block, max(256, 2 * largest))
    lo = 0
    while lo < n:
        hi = min(lo + block, n)
        while True:
            if sorted_batch and ptr is not None:
                c0, c1 = int(ptr[batch[lo]]), int(ptr[batch[hi - 1] + 1])
            else:
                c0, c1 = 0, n
            if (hi - lo) * (c1 - c0) <= _MAX_PAIRS or hi - lo == 1:
                break
            hi = lo + max(1, min(hi - lo - 1, _MAX_PAIRS // max(c1 - c0, 1)))
        yield lo, hi, c0, c1
        lo = hi


def _sq_dist(src: Tensor, tgt: Tensor) -> Tensor:
    """``[T, S]`` squared distances from coordinate differences, one axis at a time (no
    ``[T, S, D]`` temporary). On the CPU each product and sum is rounded on its own (not
    ``addcmul_``, whose vectorised CPU kernel fuses them into one rounding and its scalar tail
    does not), so the value does not depend on a pair's position in the block and equals the
    C++ cell lists' (``csrc/cpu/radius.cpp``) bit for bit; elsewhere ``addcmul_``."""
    d2 = torch.zeros(tgt.size(0), src.size(0), dtype=src.dtype, device=src.device)
    fused = src.device.type != "cpu"
    diff, sq = torch.empty_like(d2), None if fused else torch.empty_like(d2)
    for k in range(src.size(1)):
        torch.sub(src[:, k].unsqueeze(0), tgt[:, k].unsqueeze(1), out=diff)
        if fused:
            d2.addcmul_(diff, diff)
        else:
            d2.add_(torch.mul(diff, diff, out=sq))
    return d2


def _first(d2: Tensor, valid: Tensor, m: int) -> Tensor:
    """The mask of each row's ``m`` smallest valid entries of ``d2`` (ties to the lower
    column). Invalid entries rank after every number (NaN sorts last): a valid pair whose
    squared distance overflows to inf still ranks before them."""
    keep = torch.zeros_like(valid)
    if m > 0 and d2.size(1):
        order = torch.sort(d2.masked_fill(~valid, math.nan), dim=1, stable=True).indices
        keep.scatter_(1, order[:, :m], True)
    return keep & valid


def _batch_layout(batch: Tensor) -> tuple[bool, Tensor | None, Tensor]:
    """``(sorted, ptr, batch)``: for a sorted ``batch``, its graphs' offsets ``ptr`` and the
    ids relabelled ``0, 1, ...`` in order (so that ``ptr`` has one entry per graph present,
    not per id up to the largest: ids may have gaps or be huge); otherwise ``batch`` as is."""
    n = batch.numel()
    if n == 0:
        return True, None, batch
    is_sorted = bool((batch[1:] >= batch[:-1]).all())
    if not is_sorted:
        return False, None, batch
    _, counts = torch.unique_consecutive(batch, return_counts=True)
    ptr = torch.zeros(counts.numel() + 1, dtype=torch.long, device=batch.device)
    ptr[1:] = torch.cumsum(counts, 0)
    relabelled = torch.repeat_interleave(torch.arange(counts.numel(), device=batch.device),
                                         counts, output_size=n)
    return True, ptr, relabelled


def _native_cells(pos: Tensor, op: str = "radius") -> bool:
    """Whether a graph builder takes the C++ cell lists (``graphattn::radius`` of
    :func:`radius_graph` and :func:`periodic_radius_graph`, ``graphattn::knn`` of
    :func:`knn_graph`): float32 / float64 coordinates on the CPU, the extension loaded,
    outside ``torch.compile`` and backend ``"reference"``
    (:func:`graphattn.ops.set_backend`). (The kNN kernel is for 3-D points.)"""
    from .ops import _native_cpu_op

    return pos.dtype in (torch.float32, torch.float64) and _native_cpu_op(pos, op)


def _ranges(g: Tensor, G: int) -> tuple[Tensor | None, Tensor]:
    """``(perm, ptr)`` of graph ids ``g`` in ``0 .. G - 1``: the stable sort of an unsorted
    ``g`` (``None`` when sorted) and the graphs' offsets ``[G + 1]`` in that order."""
    perm = None if bool((g[1:] >= g[:-1]).all()) else torch.sort(g, stable=True).indices
    return perm, torch.cat([g.new_zeros(1), torch.bincount(g, minlength=G).cumsum(0)])


def _on_ranges(x: Tensor, y: Tensor, x_ranges: tuple[Tensor | None, Tensor],
               y_ranges: tuple[Tensor | None, Tensor], build) -> tuple[Tensor, Tensor]:
    """``(src, tgt)`` of a C++ graph builder whose graphs are ranges of the sources ``x`` and
    of the targets ``y`` (``build(xs, ys, ptr_x, ptr_y)`` -> ``[2, E]`` over the sorted
    sides; ``x_ranges`` / ``y_ranges`` from :func:`_ranges`): an unsorted side is sorted
    first, and the edges are mapped back to the caller's indices, by target, then source."""
    (px, ptr_x), (py, ptr_y) = x_ranges, y_ranges
    xs = x.detach() if px is None else x.detach()[px]
    ys = xs if y is x and py is px else (y.detach() if py is None else y.detach()[py])
    src, tgt = build(xs, ys, ptr_x, ptr_y)
    if px is None and py is None:  # already by target, then source
        return src, tgt
    src = src if px is None else px[src]
    tgt = tgt if py is None else py[tgt]
    order = torch.sort(tgt * max(x.size(0), 1) + src).indices
    return src[order], tgt[order]


def _on_node_ranges(pos: Tensor, batch: Tensor, build) -> Tensor:
    """``[2, E]`` (sources, targets) of a C++ builder of one point set's graph, ``build(x,
    ptr)`` over sorted node ranges, for any ``batch`` (:func:`_on_ranges`)."""
    is_sorted, ptr, _ = _batch_layout(batch)
    perm = None
    if not is_sorted:
        perm = torch.sort(batch, stable=True).indices
        ptr = _batch_layout(batch[perm])[1]
    if ptr is None:  # no nodes
        ptr = torch.zeros(1, dtype=torch.long)
    ranges = (perm, ptr)
    return torch.stack(_on_ranges(pos, pos, ranges, ranges,
                                  lambda xs, ys, px, py: build(xs, px)))


def radius_graph(pos: Tensor, r: float, batch: Tensor | None = None, loop: bool = False,
                 max_num_neighbors: int | None = None, block: int = 4096) -> Tensor:
    """All pairs closer than ``r`` inside each graph (see the module docstring).

    Args:
        pos: ``[N, 3]`` float coordinates.
        r: Cutoff (``>= 0``); pairs at distance exactly ``r`` are excluded.
        batch: ``[N]`` graph id per node (``None``: one graph). Need not be sorted.
        loop: Keep the self-pairs ``(i, i)``.
        max_num_neighbors: Keep at most this many sources per target: the closest ones,
            ties broken by the lower source index (``None``: no limit).
        block: The blockwise path only (see below): most targets processed per step (fewer
            for batches of small graphs, and never more than ``2**24`` pair distances at
            once); peak memory is ``O(block * N)``. Compute is ``O(N^2)`` for one graph
            (brute force), about ``O(N * (256 + largest graph))`` for a sorted batch of small
            graphs.

    On the CPU with the extension built (float32 / float64 ``pos``), the graph comes from
    cell lists in C++ (``csrc/cpu/radius.cpp``): each graph's bounding box is cut into
    cells of edge ``r / 2`` (or ``r`` and up, so that there are at most ``2 n + 8`` of them)
    and each target searches the 125 (27) cells around its own, so compute and memory are
    ``O(N + E)`` for atoms at bounded density, in parallel over targets. The result is the
    blockwise path's, edge for edge (the same squared distances, summed axis by axis from
    coordinate differences, and the same strict comparison); the blockwise path runs on
    other devices and dtypes, under ``torch.compile`` and with
    ``graphattn.ops.set_backend("reference")``.

    Returns:
        ``[2, E]`` int64 ``edge_index`` (row 0 source, row 1 target), sorted by target then
        source.
    """
    _check_pos(pos)
    _check_finite(pos, "pos")
    _check_r(r)
    if max_num_neighbors is not None:
        _check_limit(max_num_neighbors, "max_num_neighbors", 0)
    _check_block(block)
    n = pos.size(0)
    batch = _check_batch(batch, n, pos.device)
    if _native_cells(pos):  # the cell lists of csrc/cpu/radius.cpp
        # (a limit beyond the number of nodes changes nothing and must fit the op's int64)
        limit = -1 if max_num_neighbors is None else min(max_num_neighbors, n)
        return _on_node_ranges(pos, batch, lambda x, ptr: torch.ops.graphattn.radius(
            x, x, float(r), ptr, ptr, -1 if loop else 0, limit))
    sorted_batch, ptr, batch = _batch_layout(batch)
    r2 = float(r) * float(r)  # inf for r > ~1.3e154 (** would raise OverflowError)
    out = []
    for lo, hi, c0, c1 in _blocks(batch, block, sorted_batch, ptr):
        d2 = _sq_dist(pos[c0:c1], pos[lo:hi])
        mask = (d2 < r2) & (batch[lo:hi].unsqueeze(1) == batch[c0:c1].unsqueeze(0))
        tgt = torch.arange(lo, hi, device=pos.device)
        src = torch.arange(c0, c1, device=pos.device)
        if not loop:
            mask &= tgt.unsqueeze(1) != src.unsqueeze(0)
        if max_num_neighbors is not None and max_num_neighbors < c1 - c0:
            mask = _first(d2, mask, max_num_neighbors)
        ti, si = mask.nonzero(as_tuple=True)  # row-major: sorted by target, then source
        out.append(torch.stack([src[si], tgt[ti]]))
    if not out:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    return torch.cat(out, dim=1)


def knn_graph(pos: Tensor, k: int, batch: Tensor | None = None, loop: bool = False,
              block: int = 4096) -> Tensor:
    """Each node's ``k`` nearest nodes of its own graph as sources.

    Ties in distance go to the lower source index; a graph with fewer than ``k + 1`` nodes
    (``k`` with ``loop=True``) gives each target all the nodes it has. With ``loop=True`` the
    node itself counts as one of its ``k`` neighbours (distance 0). On the CPU with the
    extension built, 3-D points take C++ cell lists (``csrc/cpu/knn.cpp``: rings of cells
    searched outwards until no unseen point can come closer, ``O(N k)`` at bounded density),
    edge for edge the graph of the blockwise path here (``O(N^2)`` per graph), which serves
    other devices, dimensions and dtypes.

    Args:
        pos: ``[N, 3]`` (any ``[N, D]`` float works) coordinates.
        k: Number of neighbours, ``>= 1``.
        batch: ``[N]`` graph id per node (``None``: one graph).
        loop: Allow the self-pair.
        block: Targets processed per step (memory ``O(block * N)``).

    Returns:
        ``[2, E]`` ``edge_index`` (row 0 source, row 1 target), sorted by target then source.
    """
    if not isinstance(pos, Tensor):
        raise TypeError(f"pos must be a torch.Tensor of shape [N, D], got {type(pos).__name__}")
    if pos.dim() != 2 or not pos.is_floating_point():
        raise ValueError(f"pos must be a float tensor of shape [N, D], got {tuple(pos.shape)} "
                         f"{pos.dtype}")
    _check_finite(pos, "pos")
    _check_limit(k, "k", 1)
    _check_block(block)
    n = pos.size(0)
    batch = _check_batch(batch, n, pos.device)
    if pos.size(1) == 3 and _native_cells(pos, "knn"):
        return _on_node_ranges(pos, batch, lambda x, ptr: torch.ops.graphattn.knn(
            x, x, ptr, ptr, min(k, max(n, 1)), -1 if loop else 0))
    sorted_batch, ptr, batch = _batch_layout(batch)
    out = []
    for lo, hi, c0, c1 in _blocks(batch, block, sorted_batch, ptr):
        d2 = _sq_dist(pos[c0:c1], pos[lo:hi])
        valid = batch[lo:hi].unsqueeze(1) == batch[c0:c1].unsqueeze(0)
        tgt = torch.arange(lo, hi, device=pos.device)
        src = torch.arange(c0, c1, device=pos.device)
        if not loop:
            valid &= tgt.unsqueeze(1) != src.unsqueeze(0)
        ti, si = _first(d2, valid, k).nonzero(as_tuple=True)
        out.append(torch.stack([src[si], tgt[ti]]))
    if not out:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    return torch.cat(out, dim=1)



def _bipartite(x: Tensor, y: Tensor, batch_x: Tensor | None, batch_y: Tensor | None,
               block: int, native, select) -> Tensor:
    """The pairs (target ``y[i]``, source ``x[j]``) of one graph of the batch that ``select``
    keeps, as PyG's ``radius`` / ``knn`` return them: ``[2, E]``, row 0 indexing ``y``, row 1
    ``x``, sorted by ``y``, then ``x``. ``native(xs, ys, ptr_x, ptr_y)`` gives the C++ cell
    lists' ``[2, E]`` (sources, targets) over sorted batches; ``select(d2, valid)`` the kept
    ``[T, N_x]`` mask of a block of targets on the blockwise path (``valid``: same graph)."""
    for t, name in ((x, "x"), (y, "y")):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape [N, D], got "
                            f"{type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape [N, D], got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        _check_finite(t, name)
    if y.dtype != x.dtype:
        raise TypeError(f"y must have the dtype of x ({x.dtype}), got {y.dtype}")
    if y.size(1) != x.size(1) or y.device != x.device:
        raise ValueError(f"y must have the width and device of x ({x.size(1)}, {x.device}), got "
                         f"({y.size(1)}, {y.device})")
    _check_block(block)
    bx = _check_batch(batch_x, x.size(0), x.device)
    by = _check_batch(batch_y, y.size(0), y.device)
    # one relabelling of the graph ids of both sides: 0 .. G - 1
    ids = torch.unique(torch.cat([bx, by]))
    G = ids.numel()
    gx, gy = torch.searchsorted(ids, bx), torch.searchsorted(ids, by)
    x_ranges, y_ranges = _ranges(gx, G), _ranges(gy, G)
    if x.size(1) == 3 and _native_cells(x, native[0]):  # graphs as ranges of both sides
        src, tgt = _on_ranges(x, y, x_ranges, y_ranges, native[1])
        return torch.stack([tgt, src])
    ptr_x = x_ranges[1]
    sorted_x, sorted_y = x_ranges[0] is None, y_ranges[0] is None
    out = []
    lo = 0
    while lo < y.size(0):  # blocks of targets: at most `block` rows and _MAX_PAIRS pairs
        hi = min(lo + block, y.size(0))
        while True:
            # both sides sorted: only the sources of the graphs that the block touches
            c0, c1 = ((int(ptr_x[gy[lo]]), int(ptr_x[gy[hi - 1] + 1])) if sorted_x and sorted_y
                      else (0, x.size(0)))
            if (hi - lo) * (c1 - c0) <= _MAX_PAIRS or hi - lo == 1:
                break
            hi = lo + max(1, min(hi - lo - 1, _MAX_PAIRS // max(c1 - c0, 1)))
        keep = select(_sq_dist(x[c0:c1], y[lo:hi]),
                      gy[lo:hi].unsqueeze(1) == gx[c0:c1].unsqueeze(0))
        ti, si = keep.nonzero(as_tuple=True)  # row-major: by target, then source
        out.append(torch.stack([ti + lo, si + c0]))
        lo = hi
    if not out:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    return torch.cat(out, dim=1)


def radius(x: Tensor, y: Tensor, r: float, batch_x: Tensor | None = None,
           batch_y: Tensor | None = None, max_num_neighbors: int | None = None,
           block: int = 1024) -> Tensor:
    """For each point of ``y``, the points of ``x`` in its graph closer than ``r``, as
    ``torch_geometric.nn.radius`` (torch-cluster's ``radius``) returns them.

    Args:
        x: ``[N_x, D]`` float coordinates (the sources).
        y: ``[N_y, D]`` coordinates of the same dtype and device (the queries).
        r: Cutoff (``>= 0``); pairs at distance exactly ``r`` are excluded.
        batch_x, batch_y: Graph id per point (``None``: one graph); need not be sorted.
        max_num_neighbors: At most this many points of ``x`` per point of ``y``: the closest,
            ties to the lower index (``None``: no limit; PyG's default is 32, whose choice
            among more candidates depends on its backend).
        block: Points of ``y`` per step on the blockwise path (memory ``O(block * N_x)``;
            fewer where that would exceed ``2**24`` pair distances).

    On the CPU with the extension built, 3-D float32 / float64 points take the C++ cell lists
    of :func:`radius_graph`; other inputs the blockwise path (the same pairs).

    Returns:
        ``[2, E]`` int64: row 0 the index in ``y``, row 1 the index in ``x`` (PyG's order;
        ``flip(0)`` gives ``source_to_target`` message passing from ``x`` to ``y``), sorted
        by ``y``, then ``x``. Every point of ``x`` counts, whatever its position (there is no
        self-pair to leave out between two sets).
    """
    _check_r(r)
    if max_num_neighbors is not None:
        _check_limit(max_num_neighbors, "max_num_neighbors", 0)
    r2 = float(r) * float(r)

    def select(d2: Tensor, valid: Tensor) -> Tensor:
        valid = valid & (d2 < r2)
        return valid if max_num_neighbors is None else _first(d2, valid, max_num_neighbors)

    def native(xs: Tensor, ys: Tensor, px: Tensor, py: Tensor) -> Tensor:
        # (a limit beyond the number of sources changes nothing and must fit the op's int64)
        m = -1 if max_num_neighbors is None else min(max_num_neighbors, xs.size(0))
        return torch.ops.graphattn.radius(xs, ys, float(r), px, py, -1, m)

    return _bipartite(x, y, batch_x, batch_y, block, ("radius", native), select)


def knn(x: Tensor, y: Tensor, k: int, batch_x: Tensor | None = None,
        batch_y: Tensor | None = None, block: int = 1024) -> Tensor:
    """For each point of ``y``, its ``k`` nearest points of ``x`` in its graph, as
    ``torch_geometric.nn.knn`` (torch-cluster's ``knn``) returns them.

    Ties in distance go to the lower index of ``x``; a graph with fewer than ``k`` points of
    ``x`` gives each of its points of ``y`` all of them (and a graph without any, none).

    Args:
        x: ``[N_x, D]`` float coordinates (the sources).
        y: ``[N_y, D]`` coordinates of the same dtype and device (the queries).
        k: Number of neighbours, ``>= 1``.
        batch_x, batch_y: Graph id per point (``None``: one graph); need not be sorted.
        block: Points of ``y`` per step on the blockwise path (memory ``O(block * N_x)``;
            fewer where that would exceed ``2**24`` pair distances).

    On the CPU with the extension built, 3-D float32 / float64 points take the C++ cell lists
    of :func:`knn_graph`; other inputs the blockwise path (the same pairs).

    Returns:
        ``[2, E]`` int64: row 0 the index in ``y``, row 1 the index in ``x`` (PyG's order),
        sorted by ``y``, then ``x``.
    """
    _check_limit(k, "k", 1)
    return _bipartite(x, y, batch_x, batch_y, block, ("knn", lambda xs, ys, px, py: (
        torch.ops.graphattn.knn(xs, ys, px, py, min(k, max(xs.size(0), 1)), -1))),
        lambda d2, valid: _first(d2, valid, k))


def _effective_cell(cell: Tensor, pbc: tuple[bool, bool, bool]) -> Tensor:
    """``cell`` with each (near-)zero non-periodic row replaced by the unit normal of the
    others, so fractional coordinates exist for slabs/wires given with zero vectors."""
    cell = cell.clone()
    scale = float(cell.abs().max()) if cell.numel() else 0.0
    for k in range(3):
        if not pbc[k] and float(cell[k].norm()) <= 1e-12 * max(scale, 1.0):
            a, b = cell[(k + 1) % 3], cell[(k + 2) % 3]
            nrm = torch.linalg.cross(a, b)
            if float(nrm.norm()) <= 1e-12 * max(scale, 1.0) ** 2:
                # Fewer than two independent periodic vectors: pick any orthonormal completion.
                basis = torch.eye(3, dtype=cell.dtype, device=cell.device)
                others = [cell[j] for j in range(3) if j != k and float(cell[j].norm()) > 0]
                cand = [e for e in basis if all(abs(float(e @ o)) < 0.99 * float(o.norm())
                                                for o in others)]
                nrm = cand[0] if cand else basis[k]
                for o in others:  # Gram–Schmidt against the periodic vectors
                    nrm = nrm - (nrm @ o) / (o @ o) * o
            cell[k] = nrm / nrm.norm()
    return cell


#: Most periodic images :func:`periodic_radius_graph` enumerates (each costs one pass over
#: the atom pairs).
MAX_IMAGES = 100_000


def _flag(p) -> bool | None:
    """A periodicity flag: a bool (Python, NumPy, 0-d tensor) or a number equal to 0 or 1 (ASE's
    ``pbc=[1, 1, 0]``, a float array of them); ``None`` for anything else."""
    if getattr(p, "ndim", None) == 0 and hasattr(p, "item"):  # 0-d tensor or NumPy array
        if isinstance(p, Tensor) and p.is_complex():
            return None
        p = p.item()
    if is_bool(p):
        return bool(p)
    if isinstance(p, numbers.Real) and p in (0, 1):
        return bool(p)
    return None


def _check_pbc(pbc) -> tuple[bool, bool, bool]:
    """``pbc`` as three bools: three flags (:func:`_flag`), or one bool (Python, NumPy or 0-d)
    for all three; anything else (a string, a flag 2, two flags, ...) raises."""
    bad = TypeError(f"pbc must be three bools (or 0 / 1; one bool for all axes), got {pbc!r}")
    if is_bool(pbc) or getattr(pbc, "ndim", None) == 0:
        one = _flag(pbc)
        if one is None or not (is_bool(pbc) or is_bool(pbc.item())):
            raise bad
        return (one,) * 3
    if isinstance(pbc, (str, bytes)):
        raise bad
    try:
        items = tuple(pbc)
    except TypeError:
        raise bad from None
    flags = tuple(_flag(p) for p in items)
    if len(flags) != 3 or None in flags:
        raise bad
    return flags


def periodic_radius_graph(pos: Tensor, cell: Tensor, r: float,
                          pbc: tuple[bool, bool, bool] | list[bool] = (True, True, True),
                          block: int = 4096) -> tuple[Tensor, Tensor]:
    """Neighbour pairs with periodic images (see the module docstring for the convention).

    Args:
        pos: ``[N, 3]`` Cartesian coordinates (need not be wrapped into the cell).
        cell: ``[3, 3]`` lattice vectors as rows.
        r: Cutoff (``>= 0``, may exceed the cell size); edges have ``0 < |v_ij| < r``.
        pbc: Periodicity per lattice vector (three bools; one bool for all three, as in
            ASE); non-periodic rows may be zero.
        block: Targets per step of the blockwise path (memory ``O(block * N)`` per image).

    On the CPU with the extension built (float32 / float64 ``pos``), the images whose box can
    reach the atoms' box within ``r`` become the sources of the C++ cell lists of
    :func:`radius_graph` (``O(N + E)`` instead of ``O(N^2)`` per image), unless they would
    hold more than ``2**25`` points; the result is the blockwise path's, edge for edge.

    The images needed grow with ``r`` over the cell's plane spacings and with how many cells
    the positions span; more than :data:`MAX_IMAGES` raises (wrap far-out positions into
    the cell first, or check the cell's units).

    Returns:
        ``edge_index [2, E]`` (row 0 source ``j``, row 1 target ``i``) and ``shift [E, 3]``
        (same dtype as ``pos``) with ``v_ij = pos[j] + shift - pos[i]``; sorted by target,
        source, then image ``S`` (lexicographic).
    """
    _check_pos(pos)
    _check_finite(pos, "pos")
    if not isinstance(cell, Tensor):
        raise TypeError(f"cell must be a torch.Tensor of shape [3, 3], got {type(cell).__name__}")
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape [3, 3] (lattice vectors as rows), "
                         f"got {tuple(cell.shape)}")
    if cell.is_complex() or cell.dtype == torch.bool:
        raise TypeError(f"cell must be a real tensor, got {cell.dtype}")
    _check_finite(cell, "cell")
    _check_r(r)
    pbc = _check_pbc(pbc)
    _check_block(block)
    dev, dtype = pos.device, pos.dtype
    cell = cell.to(device=dev, dtype=torch.float64)
    eff = _effective_cell(cell, pbc)
    if abs(float(torch.linalg.det(eff))) < 1e-12:
        raise ValueError("cell must be non-singular: its periodic rows are linearly dependent")
    n = pos.size(0)
    if n == 0:
        return (torch.empty(2, 0, dtype=torch.long, device=dev),
                torch.empty(0, 3, dtype=dtype, device=dev))
    recip = torch.linalg.inv(eff).T  # rows b_k with a_i . b_k = delta_ik
    plane = 1.0 / recip.norm(dim=1)  # lattice-plane spacings d_k
    frac = pos.to(torch.float64) @ torch.linalg.inv(eff)
    span = (frac.max(0).values - frac.min(0).values)
    reps = [int(math.ceil(float(r) / float(plane[k]) + float(span[k]))) if pbc[k] else 0
            for k in range(3)]
    if math.prod(2 * m + 1 for m in reps) > MAX_IMAGES:
        raise ValueError(
            f"periodic_radius_graph would need {' x '.join(str(2 * m + 1) for m in reps)} "
            f"images (more than MAX_IMAGES = {MAX_IMAGES}): r = {r} against lattice-plane "
            f"spacings {[round(float(d), 6) for d in plane]}, with 'pos' spanning "
            f"{[round(float(x), 3) for x in span]} cells; wrap 'pos' into the cell or check "
            f"the units of 'cell' and 'r'")
    images = torch.tensor(list(itertools.product(*[range(-m, m + 1) for m in reps])),
                          dtype=torch.float64, device=dev)  # lexicographic order
    shifts = (images @ cell).to(dtype)
    zero = int(((images == 0).all(1)).nonzero()[0])
    if _native_cells(pos):
        out = _periodic_native(pos, float(r), shifts, zero)
        if out is not None:
            return out
    r2 = float(r) * float(r)  # inf for r > ~1.3e154 (** would raise OverflowError)
    ar = torch.arange(n, device=dev)
    srcs, tgts, imgs = [], [], []
    one = torch.zeros(n, dtype=torch.long, device=dev)
    for s_idx in range(images.size(0)):
        shifted = pos + shifts[s_idx]
        for lo, hi, _, _ in _blocks(one, block, False, None):
            mask = _sq_dist(shifted, pos[lo:hi]) < r2
            if s_idx == zero:
                mask &= ar[lo:hi].unsqueeze(1) != ar.unsqueeze(0)
            ti, si = mask.nonzero(as_tuple=True)
            srcs.append(si)
            tgts.append(ti + lo)
            imgs.append(torch.full_like(si, s_idx))
    src, tgt, img = torch.cat(srcs), torch.cat(tgts), torch.cat(imgs)
    n_img = images.size(0)
    key = (tgt * n + src) * n_img + img
    order = torch.argsort(key)
    src, tgt, img = src[order], tgt[order], img[order]
    return torch.stack([src, tgt]), shifts[img]


_MAX_IMAGE_POINTS = 1 << 25  # image coordinates the C++ periodic path may hold (~400 MB)


def _periodic_native(pos: Tensor, r: float, shifts: Tensor,
                     zero: int) -> tuple[Tensor, Tensor] | None:
    """The periodic graph through the C++ cell lists: the sources are the atoms' images
    ``pos + shift`` (the same sums as the blockwise path's), of the images whose box can come
    within ``r`` of the atoms' box (a generous margin for rounding; a pair is never lost), and
    the zero image's self-pairs are excluded; edges are then ordered by target, source, image.
    ``None`` (the blockwise path's turn) when the images would hold more than
    ``_MAX_IMAGE_POINTS`` points."""
    n = pos.size(0)
    x = pos.detach()
    box = (x.max(0).values - x.min(0).values).double()
    s64 = shifts.double()
    gap = (s64.abs() - box).clamp_min(0)
    scale = float(s64.abs().max()) + float(box.max()) + float(x.abs().max())
    bound = r * (1 + 1e-5) + 1e-5 * scale
    keep = (gap.square().sum(1) <= bound * bound).nonzero().view(-1)
    if keep.numel() * n > _MAX_IMAGE_POINTS:
        return None
    src = (x.unsqueeze(0) + shifts[keep].unsqueeze(1)).reshape(-1, 3)
    one = torch.tensor([0, n])
    at = int((keep == zero).nonzero()[0])  # the zero image is always kept (gap 0 <= bound)
    ei = torch.ops.graphattn.radius(src, x, r, one * keep.numel(), one, at * n, -1)
    img, j = keep[ei[0] // n], ei[0] % n
    order = torch.argsort((ei[1] * n + j) * shifts.size(0) + img)
    return torch.stack([j, ei[1]])[:, order], shifts[img[order]]


def edge_vectors(pos: Tensor, edge_index: Tensor, shift: Tensor | None = None, *,
                 check_index: bool = True) -> tuple[Tensor, Tensor]:
    """``vec = pos[src] + shift - pos[dst]`` (``[E, 3]``, pointing from the target ``i`` to
    its neighbour ``j``'s image) and ``length = |vec|`` (``[E]``). ``check_index=False`` skips
    the range check of ``edge_index`` (two host syncs) for a caller that made it already."""
    _check_pos(pos)
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        got = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index)
        raise ValueError(f"edge_index must have shape [2, E], got {got}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"edge_index must be an int64 (or int32) tensor, got {edge_index.dtype}")
    n = pos.size(0)
    if check_index and edge_index.numel() and (int(edge_index.min()) < 0
                                               or int(edge_index.max()) >= n):
        raise ValueError(f"edge_index must hold node indices in [0, {n}) (the rows of pos), "
                         f"got [{int(edge_index.min())}, {int(edge_index.max())}]")
    vec = pos.index_select(0, edge_index[0]) - pos.index_select(0, edge_index[1])
    if shift is not None:
        if not isinstance(shift, Tensor):
            raise TypeError(f"shift must be a torch.Tensor of shape [E, 3], got "
                            f"{type(shift).__name__}")
        if not shift.is_floating_point():
            raise TypeError(f"shift must be a real floating-point tensor, got {shift.dtype}")
        if shift.shape != vec.shape:
            raise ValueError(f"shift must have shape [E, 3] = {list(vec.shape)}, "
                             f"got {tuple(shift.shape)}")
        vec = vec + shift.to(vec.dtype)
    return vec, vec.norm(dim=-1)
