r"""Token graphs: tokens are nodes, the attention pattern is the edge set.

A :class:`TokenGraph` holds the edges ``j -> i`` (key/source ``j``, query/destination ``i``)
of one attention pattern, its kind and sizes, and optional token coordinates. Builders:

========================  ==============================================================
builder                   edges ``j -> i``
========================  ==============================================================
:func:`full`              all pairs
:func:`causal`            ``j <= i``
:func:`window`            ``|i - j| <= w`` (``i - w <= j <= i`` if causal)
:func:`dilated`           ``|i - j| <= w * dilation`` and ``(i - j) % dilation == 0``
:func:`multiscale`        union of dilated windows (one per scale)
:func:`grouped`           intra-item (``g(j) = g(i)``) and inter-item (``g(j) != g(i)``)
                          edge sets, each optionally causal; they partition the base set
:func:`bipartite`         queries ``0..Tq-1`` -> keys ``0..Tk-1``, all pairs, or the
                          causal-bipartite variant ``j <= floor((i + 1) Tk / Tq) - 1``
:func:`memory`            ``M`` memory slots readable by every token (+ a base pattern)
:func:`grid`              2-D/3-D grid cells within a Chebyshev radius, with coordinates
:func:`knn`               each token's ``k`` nearest tokens (cosine or Euclidean)
========================  ==============================================================

Kinds ``full``, ``causal``, ``bipartite`` and ``causal_bipartite`` are *dense*: the
attention runs ``torch.nn.functional.scaled_dot_product_attention`` with the matching mask
(or ``is_causal``); every other kind runs the fused sparse core
:func:`graphattn.ops.edge_attention`. Rows without keys give zeros on both paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..index import EdgeGraph, build_graph
from ._checks import check_bool, check_int

DENSE_KINDS = ("full", "causal", "bipartite", "causal_bipartite")


@dataclass(eq=False)
class TokenGraph:
    """One attention pattern over ``num_queries`` query tokens and ``num_keys`` key tokens.

    Attributes:
        edge_index: ``[2, E]`` int64, row 0 keys (sources), row 1 queries (destinations).
        num_queries, num_keys: Sizes (equal for self-attention patterns).
        kind: Builder name; dense kinds are listed in :data:`DENSE_KINDS`.
        pos: Optional ``[num_keys, n_axes]`` token coordinates (grids).
        params: The builder's arguments.
    """

    edge_index: Tensor
    num_queries: int
    num_keys: int
    kind: str = "custom"
    pos: Tensor | None = None
    params: dict = field(default_factory=dict)
    _graph: EdgeGraph | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.num_queries = check_int(self.num_queries, "num_queries")
        self.num_keys = check_int(self.num_keys, "num_keys")
        ei = self.edge_index
        if not isinstance(ei, Tensor) or ei.dtype != torch.long or ei.dim() != 2 or ei.size(0) != 2:
            raise ValueError(f"edge_index must be a [2, E] int64 tensor, got "
                             f"{getattr(ei, 'dtype', type(ei))} {tuple(getattr(ei, 'shape', ()))}")
        if ei.numel() and (ei[0].min() < 0 or ei[0].max() >= self.num_keys
                           or ei[1].min() < 0 or ei[1].max() >= self.num_queries):
            raise ValueError(f"edge_index out of range for {self.num_keys} keys and "
                             f"{self.num_queries} queries")

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    @property
    def is_dense(self) -> bool:
        return self.kind in DENSE_KINDS

    @property
    def graph(self) -> EdgeGraph:
        """The cached :class:`~graphattn.index.EdgeGraph` (keys -> queries)."""
        if self._graph is None:
            self._graph = build_graph(self.edge_index, (self.num_keys, self.num_queries),
                                      cache=False)
        return self._graph

    def dense_mask(self) -> Tensor:
        """``[num_queries, num_keys]`` bool, True where query ``i`` may attend to key ``j``."""
        m = torch.zeros(self.num_queries, self.num_keys, dtype=torch.bool)
        m[self.edge_index[1], self.edge_index[0]] = True
        return m

    def to_data(self):
        """A PyG ``Data`` (``num_nodes = num_keys``; for batching self-attention patterns)."""
        from torch_geometric.data import Data

        if self.num_queries != self.num_keys:
            raise ValueError("to_data batches self-attention patterns (num_queries == num_keys)")
        d = Data(edge_index=self.edge_index, num_nodes=self.num_keys)
        if self.pos is not None:
            d.pos = self.pos
        return d


def _self(src: Tensor, dst: Tensor, T: int, kind: str, **params) -> TokenGraph:
    return TokenGraph(torch.stack([src, dst]).long(), T, T, kind, params=params)


def _pairs(T: int, keep) -> tuple[Tensor, Tensor]:
    i = torch.arange(T).unsqueeze(1)
    j = torch.arange(T).unsqueeze(0)
    dst, src = keep(i, j).nonzero(as_tuple=True)
    return src, dst


def _check_len(T: int, name: str = "T") -> None:
    check_int(T, name, 0)


def full(T: int) -> TokenGraph:
    _check_len(T)
    return _self(*_pairs(T, lambda i, j: torch.ones_like(i - j, dtype=torch.bool)), T, "full")


def causal(T: int) -> TokenGraph:
    _check_len(T)
    return _self(*_pairs(T, lambda i, j: j <= i), T, "causal")


def window(T: int, w: int, causal: bool = True) -> TokenGraph:
    """Sliding window of half-width ``w`` (``O(T w)`` edges, built without a ``T x T`` mask)."""
    return dilated(T, w, 1, causal, _kind="window")


def dilated(T: int, w: int, dilation: int = 1, causal: bool = True,
            _kind: str = "dilated") -> TokenGraph:
    """Keys at offsets ``0, ±d, ±2d, ..., ±w d`` (only non-negative offsets if causal)."""
    _check_len(T)
    check_int(w, "w", 0)
    check_int(dilation, "dilation", 1)
    check_bool(causal, "causal")
    offs = torch.arange(0 if causal else -w, w + 1) * dilation  # i - j
    i = torch.arange(T).repeat_interleave(offs.numel())
    j = i - offs.repeat(T)
    ok = (j >= 0) & (j < T)
    return _self(j[ok], i[ok], T, _kind, w=w, dilation=dilation, causal=causal)


def multiscale(T: int, windows: tuple[int, ...], dilations: tuple[int, ...],
               causal: bool = True) -> TokenGraph:
    """Union of :func:`dilated` windows, one per ``(w, dilation)`` scale (duplicates removed)."""
    if (not isinstance(windows, (tuple, list)) or not isinstance(dilations, (tuple, list))
            or len(windows) != len(dilations) or not windows):
        raise ValueError(f"windows and dilations must be non-empty tuples of ints of equal "
                         f"length, got {windows!r} and {dilations!r}")
    ei = torch.cat([dilated(T, w, d, causal).edge_index for w, d in zip(windows, dilations)], 1)
    key = torch.unique(ei[1] * max(T, 1) + ei[0])
    return _self(key % max(T, 1), key // max(T, 1), T, "multiscale", windows=tuple(windows),
                 dilations=tuple(dilations), causal=causal)


def grouped(item_ids: Tensor, causal: bool = True) -> tuple[TokenGraph, TokenGraph]:
    """``(intra, inter)``: edges within the same item and across items (IAM); together they
    partition :func:`causal` (or :func:`full`) and share no edge."""
    if not isinstance(item_ids, Tensor) or item_ids.dim() != 1:
        raise ValueError("item_ids must be a 1-D tensor of item ids per token")
    check_bool(causal, "causal")
    T = item_ids.numel()
    src, dst = _pairs(T, (lambda i, j: j <= i) if causal else
                      (lambda i, j: torch.ones_like(i - j, dtype=torch.bool)))
    same = item_ids[src] == item_ids[dst]
    return (_self(src[same], dst[same], T, "intra_item", causal=causal),
            _self(src[~same], dst[~same], T, "inter_item", causal=causal))


def bipartite(Tq: int, Tk: int, causal: bool = False) -> TokenGraph:
    """Queries ``i < Tq`` attend to keys ``j < Tk``: all pairs, or with ``causal=True`` the
    causal-bipartite variant (query ``i`` sees keys ``j <= floor((i + 1) Tk / Tq) - 1``, i.e.
    the prefix of the key sequence aligned with its own position)."""
    _check_len(Tq, "Tq")
    _check_len(Tk, "Tk")
    check_bool(causal, "causal")
    i = torch.arange(Tq).unsqueeze(1)
    j = torch.arange(Tk).unsqueeze(0)
    keep = (j < ((i + 1) * Tk) // max(Tq, 1)) if causal else torch.ones(Tq, Tk, dtype=torch.bool)
    dst, src = keep.expand(Tq, Tk).nonzero(as_tuple=True)
    return TokenGraph(torch.stack([src, dst]), Tq, Tk,
                      "causal_bipartite" if causal else "bipartite")


def memory(T: int, slots: int, base: TokenGraph | None = None,
           slots_attend: bool = True) -> TokenGraph:
    """``slots`` memory tokens (ids ``0..slots-1``) before ``T`` sequence tokens: every
    sequence token reads every slot; slots read each other and (``slots_attend``) every
    sequence token; sequence tokens read each other through ``base`` (default causal)."""
    _check_len(T)
    _check_len(slots, "slots")
    check_bool(slots_attend, "slots_attend")
    base = base if base is not None else causal(T)
    if base.num_queries != T or base.num_keys != T:
        raise ValueError(f"base must be a self pattern over T={T} tokens")
    M = slots
    seq = base.edge_index + M
    s_all = torch.arange(M).repeat_interleave(T)
    read = torch.stack([s_all, torch.arange(T).repeat(M) + M])  # slot -> token
    s2s = torch.stack([torch.arange(M).repeat(M), torch.arange(M).repeat_interleave(M)])
    parts = [read, s2s, seq]
    if slots_attend:
        parts.append(torch.stack([torch.arange(T).repeat(M) + M, s_all]))  # token -> slot
    return TokenGraph(torch.cat(parts, 1), T + M, T + M, "memory",
                      params={"slots": M, "slots_attend": slots_attend})


def grid(shape: tuple[int, ...], radius: int = 1, extent: float = 1.0) -> TokenGraph:
    """2-D or 3-D grid of ``prod(shape)`` cells (row-major), edges between cells within
    Chebyshev distance ``radius`` (self-loops included); ``pos`` holds cell-centre
    coordinates in ``[-extent, extent]`` per axis."""
    if len(shape) not in (2, 3) or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape must be 2 or 3 positive ints, got {shape!r}")
    check_int(radius, "radius", 0)
    axes = [torch.arange(s) for s in shape]
    idx = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
    offs = torch.stack(torch.meshgrid(*[torch.arange(-radius, radius + 1)] * len(shape),
                                      indexing="ij"), -1).reshape(-1, len(shape))
    nb = idx.unsqueeze(1) + offs.unsqueeze(0)  # [T, O, n]
    ok = ((nb >= 0) & (nb < torch.tensor(shape))).all(-1)
    strides = torch.tensor([int(torch.tensor(shape[k + 1:]).prod()) for k in range(len(shape))])
    dst = torch.arange(idx.size(0)).unsqueeze(1).expand_as(ok)[ok]
    src = (nb[ok] * strides).sum(-1)
    sizes = torch.tensor(shape, dtype=torch.float32)
    pos = ((idx.float() + 0.5) / sizes * 2 - 1) * extent
    T = idx.size(0)
    return TokenGraph(torch.stack([src, dst]), T, T, "grid", pos=pos,
                      params={"shape": tuple(shape), "radius": radius})


def knn(x: Tensor, k: int, metric: str = "cosine", loop: bool = False) -> TokenGraph:
    """Each token reads its ``k`` nearest tokens by ``metric`` (``cosine`` or ``euclidean``)."""
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating [T, D] tensor, got {got}")
    check_int(k, "k", 1)
    check_bool(loop, "loop")
    T = x.size(0)
    if metric == "cosine":
        xn = F.normalize(x, dim=1)
        sim = xn @ xn.T
    elif metric == "euclidean":
        sim = -torch.cdist(x, x)
    else:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if not loop:
        sim.fill_diagonal_(float("-inf"))
    kk = min(k, T - (0 if loop else 1))
    nbr = sim.topk(max(kk, 0), dim=1).indices
    dst = torch.arange(T).repeat_interleave(max(kk, 0))
    return TokenGraph(torch.stack([nbr.reshape(-1), dst]), T, T, "knn",
                      params={"k": k, "metric": metric})
