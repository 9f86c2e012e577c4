r"""The attention core: edge softmax, fused edge attention, segment reductions and the
channel-scaled aggregation of the equivariant layers.

Every op is functional (tensors in, tensors out) and works on an
:class:`~graphattn.index.EdgeGraph` (destination-sorted CSR, built once per ``edge_index``
and cached). Two implementations stand behind each op:

* ``native``: the fused kernels of ``graphattn._C`` (``torch.ops.graphattn.*``): C++/OpenMP
  on the CPU and CUDA on the GPU (when built with a CUDA toolkit), which never materialise
  an ``[E, H, C]`` tensor, forward or backward (:func:`aggregate_scaled`,
  :func:`edge_query_dot` and :func:`edge_pair_dot` have CPU kernels only; on the GPU they take
  the reference form);
* ``reference``: pure torch (:mod:`graphattn.ops._reference`), the fallback when the
  extension is not built and the oracle of the tests.

:func:`backend` tells which one runs; :class:`set_backend` forces one (globally, or as a
context manager). The layers' dense projections go through :func:`linear` (``F.linear``, on
oneDNN for large float32 CPU products, where torch's MKL path is 2x slower on AMD CPUs;
:mod:`graphattn.ops.dense`), except with the backend forced to ``reference``. Per-edge
tensors passed to and returned by the public ops are in the caller's edge order (the order
of ``edge_index``). Forward-mode AD (``torch.autograd.forward_ad``) and ``torch.func``
transforms always take the reference path: the kernels carry reverse-mode formulas only.
"""

from __future__ import annotations

import operator
import threading

import torch
from torch import Tensor

from ..index import EdgeGraph, build_graph
from . import _native, _reference
from ._reference import KINDS
from .dense import _forward_ad_active, _functorch_active, linear

__all__ = [
    "EdgeGraph",
    "aggregate",
    "aggregate_scaled",
    "heads_to_channels",
    "backend",
    "build_graph",
    "edge_attention",
    "edge_pair_dot",
    "edge_query_dot",
    "linear",
    "segment_max",
    "segment_mean",
    "segment_softmax",
    "segment_sum",
    "set_backend",
    "native_available",
    "projected_additive_attention",
    "projected_attention",
    "projected_v2_attention",
    "split_heads",
]

_BACKENDS = ("auto", "reference", "native")
_state = threading.local()


def _requested() -> str:
    return getattr(_state, "backend", "auto")


def native_available() -> bool:
    """Whether ``graphattn._C`` is built and loaded."""
    return _native.WITH_EXT


class set_backend:
    r"""Selects the implementation of the core ops: ``"auto"``, ``"reference"`` or ``"native"``.

    Works as a plain call (sets the backend of this thread) and as a context manager
    (restores the previous one on exit)::

        with graphattn.ops.set_backend("reference"):
            out = layer(x, edge_index)

    Raises:
        ValueError: on an unknown name.
        RuntimeError: if ``"native"`` is forced but the extension is not built.
    """

    def __init__(self, name: str) -> None:
        if name not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
        if name == "native" and not _native.WITH_EXT:
            raise RuntimeError(
                "graphattn: backend 'native' was requested but graphattn._C is not built "
                f"({_native.LOAD_ERROR}); rebuild with: {_native.REBUILD}"
            )
        self.prev = _requested()
        _state.backend = name

    def __enter__(self) -> set_backend:
        return self

    def __exit__(self, *exc) -> None:
        _state.backend = self.prev


def backend() -> str:
    """The path the ops take for float32/float64 inputs now: ``native`` or ``reference``.

    ``native`` covers CUDA tensors only when the extension was built with CUDA
    (``graphattn.ops._native.CUDA_VERSION > 0``); otherwise CUDA inputs take the reference path.
    Inside forward-mode AD and ``torch.func`` transforms the ops take the reference path
    whatever this says (the kernels carry reverse-mode formulas only).
    """
    req = _requested()
    if req == "reference" or not _native.WITH_EXT:
        return "reference"
    return "native"


def _native_cpu_op(t: Tensor, name: str) -> bool:
    """Whether the CPU-only native op ``graphattn::<name>`` (the graph builders: ``edge_csr``,
    ``radius``) serves ``t`` now: a CPU tensor, the extension loaded with that op, backend not
    ``"reference"`` and outside ``torch.compile`` (their outputs' sizes depend on the data)."""
    return (t.device.type == "cpu" and not torch.compiler.is_compiling()
            and backend() == "native" and hasattr(torch.ops.graphattn, name))


def _use_native(t: Tensor) -> bool:
    if backend() != "native":
        return False
    if _forward_ad_active() or _functorch_active():
        # the kernels have reverse-mode formulas only: forward-mode AD (dual tensors) and
        # torch.func transforms (vmap, jvp, ...) take the differentiable torch form
        return False
    ok = t.device.type == "cpu" or (t.device.type == "cuda" and _native.CUDA_VERSION > 0)
    ok = ok and t.dtype in (torch.float32, torch.float64)
    if not ok and _requested() == "native":
        raise RuntimeError(
            f"graphattn: backend 'native' is forced but has no kernel for {t.dtype} on "
            f"{t.device.type}"
        )
    return ok


# ---- validation ---------------------------------------------------------------------------
def _check_tensor(t: object, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"'{name}' must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _check_same(t: Tensor, ref: Tensor, name: str, ref_name: str) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"'{name}' has dtype {t.dtype} but '{ref_name}' has {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"'{name}' is on {t.device} but '{ref_name}' is on {ref.device}")


def _check_graph(graph: object, ref: Tensor) -> EdgeGraph:
    if not isinstance(graph, EdgeGraph):
        raise TypeError(
            "'graph' must be a graphattn EdgeGraph (build it with "
            f"graphattn.ops.build_graph(edge_index, num_nodes)), got {type(graph).__name__}"
        )
    if graph.device != ref.device:
        raise ValueError(f"'graph' is on {graph.device} but the features are on {ref.device}")
    return graph


def split_heads(x: Tensor, heads: int) -> Tensor:
    """Views ``x[N, F]`` as ``[N, heads, F // heads]``; ``heads`` must divide ``F``."""
    _check_tensor(x, "x")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ValueError(f"'heads' must be a positive int, got {heads!r}")
    if x.dim() != 2:
        raise ValueError(f"'x' must have shape [N, F], got {list(x.shape)}")
    if x.size(1) % heads != 0:
        raise ValueError(
            f"'heads' ({heads}) must divide the channel dimension of 'x' ({x.size(1)})"
        )
    return x.view(x.size(0), heads, x.size(1) // heads)


# ---- segment softmax ------------------------------------------------------------------------
def segment_softmax(scores: Tensor, graph: EdgeGraph) -> Tensor:
    r"""Softmax of edge scores over each destination's in-edges.

    .. math::
        \alpha_{ij} = \frac{\exp(s_{ij})}{\sum_{k \in \mathcal{N}(i)} \exp(s_{ik})}

    Args:
        scores (Tensor): ``[E]`` or ``[E, H]`` scores in the caller's edge order.
        graph (EdgeGraph): the edge set.

    Returns:
        Tensor of the shape of ``scores``. Destinations with no (or only ``-inf``) scores
        give zeros, never NaN.
    """
    _check_tensor(scores, "scores")
    graph = _check_graph(graph, scores)
    flat = scores.dim() == 1
    s = scores.unsqueeze(-1) if flat else scores
    if s.dim() != 2 or s.size(0) != graph.num_edges:
        raise ValueError(
            f"'scores' must have shape [E] or [E, H] with E = {graph.num_edges}, "
            f"got {list(scores.shape)}"
        )
    s = graph.to_csr(s)
    if _use_native(s):
        out = _native.call("segment_softmax", s, graph.ptr, graph.indices_trusted())
    else:
        out = _reference.segment_softmax(s, graph.dst, graph.num_dst)
    out = graph.from_csr(out)
    return out.squeeze(-1) if flat else out


# ---- segment reductions ---------------------------------------------------------------------
def _segment(src: Tensor, ptr: Tensor, reduce: str,
             validated: bool = False) -> tuple[Tensor, Tensor | None]:
    if reduce not in ("sum", "mean", "max"):
        raise ValueError(f"'reduce' must be 'sum', 'mean' or 'max', got {reduce!r}")
    _check_tensor(src, "src")
    if not isinstance(ptr, Tensor) or ptr.dtype != torch.long or ptr.dim() != 1:
        raise TypeError("'ptr' must be a 1-D int64 tensor of CSR row pointers")
    if ptr.device != src.device:
        raise ValueError(f"'ptr' is on {ptr.device} but 'src' is on {src.device}")
    if ptr.numel() < 1:
        raise ValueError("'ptr' must have at least one entry")
    flat = src.dim() == 1
    s = src.unsqueeze(-1) if flat else src
    if s.dim() != 2:
        raise ValueError(f"'src' must have shape [E] or [E, F], got {list(src.shape)}")
    ptr = ptr.contiguous()
    if _use_native(s):  # the kernel checks ptr (unless validated) with messages naming it
        out, arg = _native.call("segment_reduce", s, ptr, reduce, validated)
        arg = arg if reduce == "max" else None
    else:
        # on the CPU (on a GPU the two reads would be host syncs in every step)
        if not validated and ptr.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_ptr(ptr, s.size(0))
        out, arg = _reference.segment_reduce(s, ptr, reduce)
    if flat:
        out = out.squeeze(-1)
        arg = None if arg is None else arg.squeeze(-1)
    return out, arg


def _check_ptr(ptr: Tensor, num_rows: int) -> None:
    """CSR row pointers over ``num_rows`` rows: ``ptr[0] = 0``, non-decreasing,
    ``ptr[-1] = num_rows`` (what the native kernels check in C++)."""
    first, last = int(ptr[0]), int(ptr[-1])
    if first != 0 or last != num_rows:
        raise ValueError(f"'ptr' must start at 0 and end at the number of rows of 'src' "
                         f"({num_rows}), got {first} and {last}")
    if ptr.numel() > 1 and bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError("'ptr' must be non-decreasing (CSR row pointers)")


def segment_sum(src: Tensor, ptr: Tensor) -> Tensor:
    r"""Sum of ``src[E, F]`` (sorted by segment) over the CSR segments ``ptr[N + 1]``.

    Returns ``[N, F]``; empty segments give 0.
    """
    return _segment(src, ptr, "sum")[0]


def segment_mean(src: Tensor, ptr: Tensor) -> Tensor:
    r"""Mean over the CSR segments; empty segments give 0. ``[E, F]`` → ``[N, F]``."""
    return _segment(src, ptr, "mean")[0]


def segment_max(src: Tensor, ptr: Tensor) -> tuple[Tensor, Tensor]:
    r"""Max over the CSR segments and its argmax (position in ``src``; -1 for empty segments).

    Empty segments give 0. The gradient flows to the argmax entry only.
    """
    out, arg = _segment(src, ptr, "max")
    assert arg is not None
    return out, arg


def aggregate(messages: Tensor, graph: EdgeGraph, reduce: str = "sum") -> Tensor:
    r"""Reduces per-edge ``messages[E, F]`` (caller's order) onto their destinations.

    Args:
        messages (Tensor): ``[E]`` or ``[E, F]``.
        graph (EdgeGraph): the edge set.
        reduce (str): ``"sum"``, ``"mean"`` or ``"max"``.

    Returns:
        Tensor ``[num_dst]`` or ``[num_dst, F]``.
    """
    _check_tensor(messages, "messages")
    graph = _check_graph(graph, messages)
    if messages.dim() not in (1, 2) or messages.size(0) != graph.num_edges:
        raise ValueError(f"'messages' must have shape [E={graph.num_edges}] or "
                         f"[E={graph.num_edges}, F] (one row per edge), got "
                         f"{list(messages.shape)}")
    return _segment(graph.to_csr(messages), graph.ptr, reduce, graph.indices_trusted())[0]


def _parse_blocks(blocks: object) -> tuple[tuple[int, int], ...]:
    """``blocks`` as a tuple of int ``(mul, dim)`` pairs (integers, not floats cut to one),
    non-empty, ``mul >= 0``, ``dim >= 1``."""
    try:
        b = tuple((operator.index(mul), operator.index(d))
                  for mul, d in blocks)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(
            f"'blocks' must be a sequence of (mul, dim) pairs of ints, got {blocks!r}"
        ) from None
    if not b or any(mul < 0 or d < 1 for mul, d in b):
        raise ValueError(f"'blocks' must be non-empty (mul >= 0, dim >= 1) pairs, got {b}")
    return b


def _check_blocks(blocks: object, messages: Tensor, coef: Tensor) -> tuple[tuple[int, int], ...]:
    b = _parse_blocks(blocks)
    F, K = sum(mul * d for mul, d in b), sum(mul for mul, _ in b)
    if messages.dim() != 2 or messages.size(1) != F:
        raise ValueError(f"'messages' must have shape [E, {F}] (sum of mul * dim over 'blocks' "
                         f"{b}), got {list(messages.shape)}")
    if coef.dim() != 2 or coef.shape != (messages.size(0), K):
        raise ValueError(f"'coef' must have shape [E={messages.size(0)}, {K}] (one factor per "
                         f"channel of 'blocks'), got {list(coef.shape)}")
    return b


def aggregate_scaled(messages: Tensor, coef: Tensor, graph: EdgeGraph,
                     blocks: tuple[tuple[int, int], ...],
                     head_coef: Tensor | None = None) -> Tensor:
    r"""Sum over each destination's in-edges of messages whose channels are scaled per edge:

    .. math::
        \mathbf{o}_i[c] = \sum_{e = (j \to i)} w_e[k(c)]\, a_e[h(c)]\, \mathbf{m}_e[c]

    where the columns of ``messages`` are cut into ``blocks`` ``(mul, d)`` (``mul`` channels of
    ``d`` consecutive columns each, e.g. an e3nn irreps layout ``(mul, 2l + 1)``), channel
    :math:`k(c)` takes its factor :math:`w` from ``coef`` and, with ``head_coef``, also the
    weight :math:`a` of its head :math:`h(c) = u \bmod H` (channel ``u`` of its block: per-head
    attention weights dealt to the channels round-robin, :func:`heads_to_channels`); without it
    :math:`a = 1`. Equivariant whenever ``coef`` and ``head_coef`` are invariant. Equals
    ``aggregate(scale_channels(messages, coef * heads_to_channels(head_coef, blocks), blocks),
    graph)``; the native CPU kernel writes neither the scaled ``[E, F]`` messages nor the
    ``[E, K]`` product of the factors, and its backward is one pass over the edges (the
    reference path, and the CUDA device, compute both).

    Args:
        messages (Tensor): ``[E, F]`` with ``F = sum(mul * d)``, in the caller's edge order.
        coef (Tensor): ``[E, K]`` with ``K = sum(mul)``, same dtype and order.
        graph (EdgeGraph): the edge set.
        blocks: ``((mul, d), ...)``.
        head_coef (Tensor, optional): ``[E, H]`` per-head factors, same dtype and order.

    Returns:
        Tensor ``[num_dst, F]``.
    """
    _check_tensor(messages, "messages")
    _check_tensor(coef, "coef")
    _check_same(coef, messages, "coef", "messages")
    graph = _check_graph(graph, messages)
    if messages.size(0) != graph.num_edges:
        raise ValueError(
            f"'messages' must have {graph.num_edges} rows (one per edge), got {messages.size(0)}"
        )
    b = _check_blocks(blocks, messages, coef)
    if head_coef is not None:
        _check_tensor(head_coef, "head_coef")
        _check_same(head_coef, messages, "head_coef", "messages")
        if head_coef.dim() != 2 or head_coef.size(0) != messages.size(0) or head_coef.size(1) < 1:
            raise ValueError(f"'head_coef' must have shape [E={messages.size(0)}, H >= 1], got "
                             f"{list(head_coef.shape)}")
        head_coef = graph.to_csr(head_coef)
    m, c = graph.to_csr(messages), graph.to_csr(coef)
    if _use_native(m) and m.device.type == "cpu":
        return _native.call("scaled_aggregate", m, c, graph.ptr, [mul for mul, _ in b],
                            [d for _, d in b], head_coef)
    return _reference.scaled_aggregate(m, c, graph.ptr, b, head_coef)


def heads_to_channels(alpha: Tensor, blocks: tuple[tuple[int, int], ...]) -> Tensor:
    r"""Per-head weights ``alpha [E, H]`` dealt to the channels of the irreps ``blocks``
    ``((mul, d), ...)``: channel ``u`` of each block belongs to head ``u mod H``. Returns
    ``[E, sum mul]`` (the factors :func:`aggregate_scaled` forms from its ``head_coef``)."""
    _check_tensor(alpha, "alpha")
    if alpha.dim() != 2 or alpha.size(1) < 1:
        raise ValueError(f"'alpha' must have shape [E, H >= 1], got {list(alpha.shape)}")
    return _reference.heads_to_channels(alpha, _parse_blocks(blocks))


def _check_dst_rows(x: Tensor, y: Tensor, x_name: str, y_name: str,
                    graph: object) -> EdgeGraph:
    """Checks the two operands of a per-edge product (tensors of one dtype and device) and the
    graph, and that ``x`` holds one ``[H, F]`` row per destination node; returns the graph."""
    _check_tensor(x, x_name)
    _check_tensor(y, y_name)
    _check_same(x, y, x_name, y_name)
    graph = _check_graph(graph, x)
    if x.dim() != 3 or x.size(0) != graph.num_dst:
        raise ValueError(f"'{x_name}' must have shape [num_dst={graph.num_dst}, H, F], got "
                         f"{list(x.shape)}")
    return graph


def edge_query_dot(q: Tensor, k: Tensor, graph: EdgeGraph) -> Tensor:
    r"""Scores of per-node queries against per-edge keys, every head against one key row:

    .. math::
        s_{e}^{(h)} = \mathbf{q}_i^{(h)} \cdot \mathbf{k}_e, \qquad e = (j \to i).

    For keys that are a linear map of per-edge features, :math:`\mathbf{k}_e = W^\top
    \mathbf{m}_e`, pass :math:`W \mathbf{q}_i` and the features: the map is applied once per
    node instead of once per edge (MLANet's geometric attention). The native CPU kernel goes by
    destination rows, forward and backward, without an ``[E, H, F]`` temporary (the reference
    path, and the GPU, build it).

    Args:
        q (Tensor): ``[num_dst, H, F]``.
        k (Tensor): ``[E, F]``, in the caller's edge order.
        graph (EdgeGraph): the edge set.

    Returns:
        Tensor ``[E, H]`` in the caller's edge order.
    """
    graph = _check_dst_rows(q, k, "q", "k", graph)
    if k.dim() != 2 or k.size(0) != graph.num_edges or k.size(1) != q.size(2):
        raise ValueError(f"'k' must have shape [E={graph.num_edges}, F={q.size(2)}], got "
                         f"{list(k.shape)}")
    kc = graph.to_csr(k)
    if _use_native(kc) and kc.device.type == "cpu":
        s = _native.call("edge_query_dot", q, kc, graph.ptr)
    else:
        s = _reference.edge_query_dot(q, kc, graph.dst)
    return graph.from_csr(s)


def edge_pair_dot(a: Tensor, b: Tensor, graph: EdgeGraph) -> Tensor:
    r"""Per-head dot products of a destination row with a source row along every edge:

    .. math::
        s_{e}^{(h)} = \mathbf{a}_i^{(h)} \cdot \mathbf{b}_j^{(h)}, \qquad e = (j \to i)

    (dot-product attention scores without the softmax; MLANet's chemical path). The native CPU
    kernel reads both rows where they lie, and its gradients are weighted row sums over the CSR
    (for ``a``) and the CSC (for ``b``), so neither the ``[E, H, F]`` products nor gathered
    ``[E, H, F]`` copies of ``a`` and ``b`` (and their scatter-add gradients) are formed, at any
    order of differentiation (the reference path, and the GPU, form them).

    Args:
        a (Tensor): ``[num_dst, H, F]``.
        b (Tensor): ``[num_src, H, F]``.
        graph (EdgeGraph): the edge set.

    Returns:
        Tensor ``[E, H]`` in the caller's edge order.
    """
    graph = _check_dst_rows(a, b, "a", "b", graph)
    if b.dim() != 3 or b.size(0) != graph.num_src or b.shape[1:] != a.shape[1:]:
        raise ValueError(f"'b' must have shape [num_src={graph.num_src}, H={a.size(1)}, "
                         f"F={a.size(2)}], got {list(b.shape)}")
    if _use_native(a) and a.device.type == "cpu":
        s = _native.pair_dot(a, b, graph)
    else:
        s = _reference.edge_pair_dot(a, b, graph.src, graph.dst)
    return graph.from_csr(s)


# ---- fused edge attention -------------------------------------------------------------------
def edge_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    graph: EdgeGraph,
    kind: str = "dot",
    bias: Tensor | None = None,
    dropout: float = 0.0,
    return_weights: bool = False,
    *,
    att: Tensor | None = None,
    scale: float | None = None,
    negative_slope: float = 0.2,
    training: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Fused edge attention: scores → softmax over each destination's in-edges → weighted sum.

    .. math::
        \mathbf{o}_i^{(h)} = \sum_{j \in \mathcal{N}(i)} \alpha_{ij}^{(h)} \mathbf{v}_j^{(h)},
        \qquad
        \alpha_{ij}^{(h)} = \operatorname{softmax}_{j \in \mathcal{N}(i)} s_{ij}^{(h)}

    with the score :math:`s_{ij}^{(h)}` of ``kind``:

    * ``"dot"`` (Transformer): :math:`\mathbf{q}_i^{(h)} \cdot \mathbf{k}_j^{(h)} \cdot
      \text{scale} + b_{ij}^{(h)}`, ``scale`` defaulting to :math:`1/\sqrt{D}`;
    * ``"additive"`` (GAT): :math:`\mathrm{LeakyReLU}(q_i^{(h)} + k_j^{(h)} + b_{ij}^{(h)})`
      with per-head scalars :math:`q_i = \mathbf{a}_{dst} \cdot W\mathbf{x}_i` and
      :math:`k_j = \mathbf{a}_{src} \cdot W\mathbf{x}_j`;
    * ``"v2"`` (GATv2): :math:`\mathbf{a}^{(h)} \cdot \mathrm{LeakyReLU}(\mathbf{q}_i^{(h)} +
      \mathbf{k}_j^{(h)}) + b_{ij}^{(h)}`.

    Args:
        q (Tensor): destination terms, ``[N_dst, H, D]`` (``[N_dst, H]`` for ``additive``).
        k (Tensor): source terms, ``[N_src, H, D]`` (``[N_src, H]`` for ``additive``).
        v (Tensor): values, ``[N_src, H, Dv]``.
        graph (EdgeGraph): the edges ``j → i`` (:func:`~graphattn.index.build_graph`).
        kind (str): ``"dot"``, ``"additive"`` or ``"v2"``.
        bias (Tensor, optional): per-edge score bias, ``[E, H]`` or ``[E]`` (the same for all
            heads), in the caller's edge order; ``-inf`` masks an edge.
        dropout (float): dropout on the attention weights (training only). The native
            kernel has no fused dropout: with ``dropout > 0`` in training the reference path
            runs (documented fall-back).
        return_weights (bool): also return the attention weights ``[E, H]``.
        att (Tensor, optional): ``[H, D]`` (or ``[1, H, D]``) attention vector of ``v2``.
        scale (float, optional): score scale of ``dot``.
        negative_slope (float): LeakyReLU slope of ``additive`` and ``v2``.
        training (bool): whether dropout is active.

    Returns:
        ``out[N_dst, H, Dv]``, or ``(out, weights[E, H])``. Destinations without in-edges
        get zeros, never NaN.

    .. note::
        The native path keeps peak extra memory at :math:`O(N \cdot H \cdot D)`: it never
        materialises a per-edge tensor wider than ``[E, H]`` (the returned weights and the
        bias gradient), against :math:`O(E \cdot H \cdot D_v)` for the reference path and
        PyG. It runs for float32/float64 tensors on the CPU (C++/OpenMP) and, when the
        extension was built with CUDA, on the GPU (one warp per row and head; head dims up to
        256 there, larger heads take the reference path).
    """
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        _check_tensor(t, n)
    _check_same(k, q, "k", "q")
    _check_same(v, q, "v", "q")
    graph = _check_graph(graph, q)
    if kind not in KINDS:
        raise ValueError(f"'kind' must be one of {sorted(KINDS)}, got {kind!r}")
    if kind == "additive":
        if q.dim() == 2:
            q = q.unsqueeze(-1)
        if k.dim() == 2:
            k = k.unsqueeze(-1)
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            "'q', 'k', 'v' must be [N, H, D] tensors, got shapes "
            f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    H = q.size(1)
    if q.size(0) != graph.num_dst:
        raise ValueError(
            f"'q' must have one row per destination node ({graph.num_dst}), got {q.size(0)}"
        )
    if k.size(0) != graph.num_src or v.size(0) != graph.num_src:
        raise ValueError(
            f"'k' and 'v' must have one row per source node ({graph.num_src}), got "
            f"{k.size(0)} and {v.size(0)}"
        )
    if k.size(1) != H or v.size(1) != H:
        raise ValueError(
            f"'q', 'k', 'v' must share the head count {H}, got {k.size(1)}, {v.size(1)}"
        )
    if k.size(2) != q.size(2):
        raise ValueError(f"'k' must have head dim {q.size(2)} like 'q', got {k.size(2)}")
    if kind == "additive" and q.size(2) != 1:
        raise ValueError(
            f"kind 'additive' takes q, k of shape [N, H] (or [N, H, 1]), got {list(q.shape)}"
        )
    if kind == "v2":
        if att is None:
            raise ValueError("kind 'v2' needs the attention vector 'att' of shape [H, D]")
        _check_tensor(att, "att")
        _check_same(att, q, "att", "q")
        att = att.reshape(att.shape[-2:]) if att.dim() == 3 and att.size(0) == 1 else att
        if tuple(att.shape) != (H, q.size(2)):
            raise ValueError(f"'att' must have shape [{H}, {q.size(2)}], got {list(att.shape)}")
    elif att is not None:
        raise ValueError(f"'att' is the attention vector of kind 'v2' only; kind {kind!r} "
                         f"takes none (got one of shape {list(getattr(att, 'shape', []))})")
    if bias is not None:
        _check_tensor(bias, "bias")
        _check_same(bias, q, "bias", "q")
        if bias.dim() == 1:
            bias = bias.unsqueeze(-1).expand(-1, H)
        if tuple(bias.shape) != (graph.num_edges, H):
            raise ValueError(
                f"'bias' must have shape [E, H] = [{graph.num_edges}, {H}] or [E], got "
                f"{list(bias.shape)}"
            )
        bias = graph.to_csr(bias)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"'dropout' must be in [0, 1), got {dropout}")
    if scale is None and q.size(2) == 0:
        raise ValueError("'q' and 'k' have head dim 0 (scores from 'bias' alone): give 'scale' "
                         "explicitly, its default 1/sqrt(D) is undefined")
    scale = float(q.size(2)) ** -0.5 if scale is None else float(scale)

    # the CUDA kernels hold a head in registers: head dims up to 256 (documented fall-back)
    fits = q.device.type != "cuda" or max(q.size(2), v.size(2)) <= _native.CUDA_MAX_HEAD_DIM
    if _use_native(q) and fits and not (dropout > 0 and training):
        out, _, w = _native.call(
            "edge_attention",
            q,
            k,
            v,
            att,
            bias,
            graph.ptr,
            graph.src,
            graph.csc_ptr,
            graph.csc_eid,
            graph.csc_dst,
            KINDS[kind],
            scale,
            float(negative_slope),
            bool(return_weights),
            graph.indices_trusted(),
        )
        weights = w if return_weights else None
    else:
        out, weights = _reference.edge_attention(
            q,
            k,
            v,
            graph,
            kind,
            bias,
            att,
            scale,
            float(negative_slope),
            float(dropout),
            training,
            return_weights,
        )
    if return_weights:
        assert weights is not None
        return out, graph.from_csr(weights)
    return out


from .projected import (  # noqa: E402  (uses the helpers above)
    projected_additive_attention,
    projected_attention,
    projected_v2_attention,
)
