r"""Generic graph attention (GAT, GATv2, Transformer) on graphattn's fused core."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter
from torch.nn.parameter import UninitializedParameter
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import glorot, zeros

from ... import ops
from ...index import EdgeGraph, build_graph

MODES = ("gat", "gatv2", "transformer")


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _plain(lin: torch.nn.Module) -> bool:
    """Whether ``lin(x)`` is exactly ``F.linear(x, lin.weight, lin.bias)``: PyG's or torch's
    ``Linear`` itself (not a subclass with its own forward, e.g. a LoRA adapter), its weight
    materialised (not lazy), and no forward or backward hooks on it or on all modules
    (``weight_norm``'s pre-hook, user hooks), which calling its weights directly would skip."""
    from torch.nn.modules import module as nn_module

    return (
        type(lin).forward in (Linear.forward, torch.nn.Linear.forward)
        and not isinstance(lin.weight, UninitializedParameter)
        and not any(getattr(lin, h, None) for h in _HOOKS)
        and not any(getattr(nn_module, "_global" + h, None) for h in _HOOKS)
    )


def _lin(lin: Linear, x: Tensor) -> Tensor:
    """``lin(x)`` through :func:`graphattn.ops.linear` (oneDNN on the CPU where faster) when
    that is the same computation (:func:`_plain`); else the module is called as it is (a lazy
    ``Linear`` then materialises its weight, hooks and adapters run)."""
    if not _plain(lin):
        return lin(x)
    return ops.linear(x, lin.weight, lin.bias)


def _check_width(x: Tensor, lin: Linear, name: str, arg: str = "in_channels") -> None:
    """``x [*, F]`` fits ``lin`` (``F`` its input width unless lazy, the layer's argument
    ``arg``; its dtype)."""
    width = getattr(lin, "in_channels", getattr(lin, "in_features", -1))
    if width > 0 and x.size(-1) != width:
        raise ValueError(f"'{name}' must have {width} features (the layer's {arg}), got "
                         f"{list(x.shape)}")
    w = lin.weight
    if not isinstance(w, UninitializedParameter) and x.dtype != w.dtype:
        raise TypeError(f"'{name}' must have the layer's dtype {w.dtype}, got {x.dtype}")


def _fold(weight: Tensor, att: Tensor) -> Tensor:
    """``[H, F]`` rows ``att_h^T W_h`` of a bias-free ``Linear(F, H*C)`` and ``att [1, H, C]``."""
    H, C = att.shape[-2:]
    return (weight.view(H, C, -1) * att.view(H, C, 1)).sum(1)


class GraphAttention(MessagePassing):
    r"""Multi-head graph attention in the three classic forms, on graphattn's fused core.

    ``mode="gat"``, from `"Graph Attention Networks" <https://arxiv.org/abs/1710.10903>`_
    (PyG's ``GATConv``):

    .. math::
        \alpha_{ij} = \operatorname{softmax}_{j \in \mathcal{N}(i)} \mathrm{LeakyReLU}\big(
        \mathbf{a}_{s}^{\top}\mathbf{W}\mathbf{x}_j + \mathbf{a}_{t}^{\top}\mathbf{W}\mathbf{x}_i
        + \mathbf{a}_{e}^{\top}\mathbf{W}_e\mathbf{e}_{ij}\big), \qquad
        \mathbf{x}_i' = \sum_{j} \alpha_{ij}\mathbf{W}\mathbf{x}_j

    ``mode="gatv2"``, from `"How Attentive are Graph Attention Networks?"
    <https://arxiv.org/abs/2105.14491>`_ (PyG's ``GATv2Conv``):

    .. math::
        \alpha_{ij} = \operatorname{softmax}_{j} \mathbf{a}^{\top}\mathrm{LeakyReLU}\big(
        \mathbf{W}_l\mathbf{x}_j + \mathbf{W}_r\mathbf{x}_i + \mathbf{W}_e\mathbf{e}_{ij}\big),
        \qquad \mathbf{x}_i' = \sum_{j} \alpha_{ij}\mathbf{W}_l\mathbf{x}_j

    ``mode="transformer"``, from `"Masked Label Prediction: Unified Message Passing Model for
    Semi-Supervised Classification" <https://arxiv.org/abs/2009.03509>`_ (PyG's
    ``TransformerConv``):

    .. math::
        \alpha_{ij} = \operatorname{softmax}_{j} \frac{(\mathbf{W}_q\mathbf{x}_i)^{\top}
        (\mathbf{W}_k\mathbf{x}_j + \mathbf{W}_e\mathbf{e}_{ij})}{\sqrt{C}}, \qquad
        \mathbf{x}_i' = \mathbf{W}_s\mathbf{x}_i + \sum_{j} \alpha_{ij}
        (\mathbf{W}_v\mathbf{x}_j + \mathbf{W}_e\mathbf{e}_{ij})

    Each head computes only its node terms; the per-edge softmax and the weighted sum run in
    :func:`graphattn.ops.edge_attention`, which on the native path never materialises the
    ``[E, H, C]`` messages that PyG's layers allocate. Parameter names and shapes are those
    of the PyG layer of the same mode, so ``load_state_dict`` moves weights both ways, and the
    outputs and attention weights are equal.

    Args:
        in_channels (int or (int, int)): input size, ``-1`` for lazy; a pair for bipartite
            ``(x_src, x_dst)`` inputs with different sizes.
        out_channels (int): size ``C`` of each head's output.
        heads (int): number of heads ``H``. (default: :obj:`1`)
        mode (str): ``"gat"``, ``"gatv2"`` or ``"transformer"``. (default: :obj:`"gat"`)
        concat (bool): concatenate the heads (``H * C`` outputs) or average them (``C``).
        negative_slope (float): LeakyReLU slope (``gat``, ``gatv2``). (default: :obj:`0.2`)
        dropout (float): dropout on the attention weights in training; with ``dropout > 0``
            the op takes the reference path (the native kernel has no fused dropout).
        add_self_loops (bool, optional): remove self-loops and add one per node, as PyG.
            (default: :obj:`True` for ``gat``/``gatv2``, :obj:`False` for ``transformer``)
        edge_dim (int, optional): edge feature size; enables ``edge_attr``.
        fill_value (float or Tensor or str): edge features of the added self-loops, as in
            PyG (``"mean"``: mean of the incoming edge features). (default: :obj:`"mean"`)
        bias (bool): learn an additive bias (``gat``, ``gatv2``) or biases of the linear
            maps (``transformer``). (default: :obj:`True`)
        residual (bool): add a linear residual of ``x_dst`` (``gat``, ``gatv2``).
        share_weights (bool): ``gatv2`` only, use one matrix for sources and destinations.
        root_weight (bool): ``transformer`` only, add the skip term ``W_s x_i``.
        beta (bool): ``transformer`` only, gate the skip term as in the paper.
        **kwargs (optional): additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})` or
          :math:`((|\mathcal{V}_s|, F_{s}), (|\mathcal{V}_t|, F_{t}))` if bipartite,
          edge indices :math:`(2, |\mathcal{E}|)` or a prebuilt
          :class:`~graphattn.index.EdgeGraph`, edge features :math:`(|\mathcal{E}|, D)`
          *(optional)*
        - **output:** node features :math:`(|\mathcal{V}_t|, H \cdot C)` or
          :math:`(|\mathcal{V}_t|, C)` if ``concat=False``. With
          ``return_attention_weights=True``: ``(out, (edge_index, alpha))`` with
          ``edge_index`` :math:`(2, |\mathcal{E}'|)` (self-loops included when added) and
          ``alpha`` :math:`(|\mathcal{E}'|, H)`, the weights before dropout.

    .. note::
        PyG's ``propagate`` hooks, ``explain`` and ``decomposed_layers`` do not apply: the
        layer calls the core directly. For ``torch.compile(fullgraph=True)`` pass a prebuilt
        ``EdgeGraph`` (``graphattn.build_graph(edge_index, n, self_loops=True)``) or set
        ``add_self_loops=False``: removing loops has a data-dependent size.
    """

    def __init__(
        self,
        in_channels: int | tuple[int, int],
        out_channels: int,
        heads: int = 1,
        mode: str = "gat",
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool | None = None,
        edge_dim: int | None = None,
        fill_value: float | Tensor | str = "mean",
        bias: bool = True,
        residual: bool = False,
        share_weights: bool = False,
        root_weight: bool = True,
        beta: bool = False,
        **kwargs,
    ) -> None:
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        if mode not in MODES:
            raise ValueError(f"'mode' must be one of {MODES}, got {mode!r}")
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
            raise ValueError(f"'heads' must be a positive int, got {heads!r}")
        if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels < 1:
            raise ValueError(f"'out_channels' must be a positive int, got {out_channels!r}")
        widths = in_channels if isinstance(in_channels, (tuple, list)) else (in_channels,)
        if len(widths) not in (1, 2) or not all(
                isinstance(w, numbers.Integral) and not isinstance(w, bool) and (w > 0 or w == -1)
                for w in widths):
            raise ValueError(f"'in_channels' must be a positive int, -1 (lazy) or a pair of "
                             f"them, got {in_channels!r}")
        in_channels = (tuple(int(w) for w in in_channels) if isinstance(in_channels, (tuple, list))
                       else int(in_channels))  # NumPy ints (a size from np.max(...) + 1) too
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"'dropout' must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.mode, self.concat, self.negative_slope = mode, concat, negative_slope
        self.dropout, self.edge_dim, self.fill_value = dropout, edge_dim, fill_value
        self.add_self_loops = (mode != "transformer") if add_self_loops is None else add_self_loops
        self.residual = residual and mode != "transformer"
        self.share_weights = share_weights
        self.root_weight = root_weight
        self.beta = beta and root_weight
        H, C = heads, out_channels
        pair = in_channels if isinstance(in_channels, (tuple, list)) else (in_channels, in_channels)
        total = H * C if concat else C
        self.lin_edge = None
        if mode == "gat":
            self.lin = self.lin_src = self.lin_dst = None
            if isinstance(in_channels, int):
                self.lin = Linear(in_channels, H * C, bias=False, weight_initializer="glorot")
            else:
                self.lin_src = Linear(pair[0], H * C, False, weight_initializer="glorot")
                self.lin_dst = Linear(pair[1], H * C, False, weight_initializer="glorot")
            self.att_src = Parameter(torch.empty(1, H, C))
            self.att_dst = Parameter(torch.empty(1, H, C))
            if edge_dim is not None:
                self.lin_edge = Linear(edge_dim, H * C, bias=False, weight_initializer="glorot")
                self.att_edge = Parameter(torch.empty(1, H, C))
            else:
                self.register_parameter("att_edge", None)
        elif mode == "gatv2":
            self.lin_l = Linear(pair[0], H * C, bias=bias, weight_initializer="glorot")
            self.lin_r = (
                self.lin_l
                if share_weights
                else Linear(pair[1], H * C, bias=bias, weight_initializer="glorot")
            )
            self.att = Parameter(torch.empty(1, H, C))
            if edge_dim is not None:
                self.lin_edge = Linear(edge_dim, H * C, bias=False, weight_initializer="glorot")
        else:
            self.lin_key = Linear(pair[0], H * C, bias=bias)
            self.lin_query = Linear(pair[1], H * C, bias=bias)
            self.lin_value = Linear(pair[0], H * C, bias=bias)
            if edge_dim is not None:
                self.lin_edge = Linear(edge_dim, H * C, bias=False)
            self.lin_skip = Linear(pair[1], total, bias=bias) if root_weight else None
            self.lin_beta = Linear(3 * total, 1, bias=False) if self.beta else None
        if mode != "transformer":
            self.res = (
                Linear(pair[1], total, bias=False, weight_initializer="glorot")
                if self.residual
                else None
            )
            if bias:
                self.bias = Parameter(torch.empty(total))
            else:
                self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for m in self.children():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        for name in ("att_src", "att_dst", "att_edge", "att"):
            glorot(getattr(self, name, None))
        zeros(getattr(self, "bias", None))

    # ---- helpers --------------------------------------------------------------------------
    def _graph(self, edge_index: Tensor | EdgeGraph, n_src: int, n_dst: int) -> EdgeGraph:
        if isinstance(edge_index, EdgeGraph):
            if (edge_index.num_src, edge_index.num_dst) != (n_src, n_dst):
                raise ValueError(
                    f"'edge_index' is an EdgeGraph over ({edge_index.num_src}, "
                    f"{edge_index.num_dst}) nodes but the features give ({n_src}, {n_dst})"
                )
            return edge_index
        if not isinstance(edge_index, Tensor):
            raise TypeError(
                f"'edge_index' must be a Tensor or an EdgeGraph, got {type(edge_index).__name__}"
            )
        return build_graph(edge_index, (n_src, n_dst), self_loops=self.add_self_loops)

    def _edge_features(self, edge_attr: Tensor | None, graph: EdgeGraph) -> Tensor | None:
        """Projects ``edge_attr`` to ``[E', H, C]`` in the graph's caller order (loops added)."""
        if edge_attr is None or self.lin_edge is None:
            return None
        if not isinstance(edge_attr, Tensor):
            raise TypeError(f"'edge_attr' must be a Tensor, got {type(edge_attr).__name__}")
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.view(-1, 1)
        _check_width(edge_attr, self.lin_edge, "edge_attr", "edge_dim")  # as the caller gave it
        if graph.kept is not None:
            n_in = graph.input_index.shape[1]
            if edge_attr.dim() != 2 or edge_attr.size(0) != n_in:
                raise ValueError(f"'edge_attr' must have one row per edge of 'edge_index' "
                                 f"([{n_in}, edge_dim]), got {list(edge_attr.shape)}")
            kept = edge_attr.index_select(0, graph.kept)
            n_loops = graph.num_edges - graph.kept.numel()
            if isinstance(self.fill_value, str):
                if self.fill_value not in ("mean", "add", "sum", "max", "min", "mul"):
                    raise ValueError(f"unknown 'fill_value' {self.fill_value!r}")
                from torch_geometric.utils import scatter

                # the kept edges' destinations, without forming (and caching on the graph)
                # the loop-added [2, E'] edge list (a graph with kept has its input_index);
                # reduced over every destination, of which the first n_loops have a loop
                # (a bipartite graph with more destinations than sources has more rows)
                dst = graph.input_index[1].index_select(0, graph.kept)
                reduce = "sum" if self.fill_value == "add" else self.fill_value
                loop_attr = scatter(kept, dst, 0, graph.num_dst, reduce)[:n_loops]
            else:
                fill = torch.as_tensor(
                    self.fill_value, dtype=edge_attr.dtype, device=edge_attr.device
                )
                loop_attr = fill.expand(n_loops, *edge_attr.shape[1:]).clone()
            edge_attr = torch.cat([kept, loop_attr], dim=0)
        if edge_attr.dim() != 2 or edge_attr.size(0) != graph.num_edges:
            raise ValueError(f"'edge_attr' must have one row per edge ([{graph.num_edges}, "
                             f"edge_dim]), got {list(edge_attr.shape)}")
        return self.lin_edge(edge_attr).view(-1, self.heads, self.out_channels)

    # ---- forward ----------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor | None],
        edge_index: Tensor | EdgeGraph,
        edge_attr: Tensor | None = None,
        size: tuple[int, int] | None = None,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        r"""Runs the layer.

        Args:
            x (Tensor or (Tensor, Tensor)): node features, or ``(x_src, x_dst)``.
            edge_index (Tensor or EdgeGraph): ``[2, E]`` edges ``j -> i``, or a prebuilt graph
                (used as it is: no self-loops are added to it).
            edge_attr (Tensor, optional): ``[E, edge_dim]`` edge features.
            size ((int, int), optional): ``(num_src, num_dst)`` when ``x_dst`` is ``None``.
            return_attention_weights (bool, optional): also return ``(edge_index, alpha)``.
        """
        H, C = self.heads, self.out_channels
        if isinstance(x, Tensor):
            x_src, x_dst = x, x
        elif isinstance(x, (tuple, list)) and len(x) == 2:
            x_src, x_dst = x
        else:
            raise TypeError("'x' must be a Tensor or a pair (x_src, x_dst)")
        if not isinstance(x_src, Tensor) or x_src.dim() != 2:
            raise ValueError(
                "'x' must be a 2-D tensor [num_nodes, in_channels], got "
                f"{getattr(x_src, 'shape', type(x_src).__name__)}"
            )
        if x_dst is not None and (not isinstance(x_dst, Tensor) or x_dst.dim() != 2):
            raise ValueError("'x_dst' must be a 2-D tensor [num_dst, in_channels] or None")
        if self.mode == "gat":
            lin_s = self.lin if self.lin is not None else self.lin_src
            lin_d = self.lin if self.lin is not None else self.lin_dst
        elif self.mode == "gatv2":
            lin_s, lin_d = self.lin_l, self.lin_r
        else:
            lin_s, lin_d = self.lin_key, self.lin_query
        pair = self.in_channels if isinstance(self.in_channels, (tuple, list)) else None
        if x_src is x_dst and pair is not None and pair[0] != pair[1]:
            raise ValueError(f"the layer was built bipartite (in_channels={tuple(pair)}): pass "
                             f"'x' as (x_src, x_dst), got one tensor {list(x_src.shape)}")
        _check_width(x_src, lin_s, "x" if x_src is x_dst else "x_src")
        if x_dst is not None and x_dst is not x_src:
            _check_width(x_dst, lin_d, "x_dst")
        n_src = x_src.size(0) if size is None else size[0]
        n_dst = (x_dst.size(0) if x_dst is not None else None) if size is None else size[1]
        if n_dst is None:
            raise ValueError("'size' is required when 'x_dst' is None")
        if size is not None and (x_src.size(0) != n_src
                                 or (x_dst is not None and x_dst.size(0) != n_dst)):
            got = (x_src.size(0), None if x_dst is None else x_dst.size(0))
            raise ValueError(f"'size' {tuple(size)} does not match the features' node counts "
                             f"(x_src, x_dst) = {got}")
        if edge_attr is not None and self.lin_edge is None:
            raise ValueError("'edge_attr' was given but the layer was built with edge_dim=None")
        graph = self._graph(edge_index, n_src, n_dst)
        e = self._edge_features(edge_attr, graph)

        want_w = bool(return_attention_weights)
        drop = self.dropout if self.training else 0.0
        if self.mode == "gat":
            shared = x_dst is x_src and lin_d is lin_s
            if shared and e is None and not want_w and drop == 0.0 and _plain(lin_s):
                # projection and attention in one autograd node whose backward holds blocks
                # of the values' gradient, not all of it (ops.projected_additive_attention)
                a_src, a_dst = self._shared_scores(x_src, lin_s)
                out = ops.projected_additive_attention(
                    x_src, lin_s.weight, lin_s.bias, a_dst, a_src, graph, H,
                    negative_slope=self.negative_slope)
                return self._finish(out, x_dst, graph, None)
            h_src = _lin(lin_s, x_src).view(-1, H, C)
            if not (_plain(lin_s) and _plain(lin_d)):
                # hooks, adapters or a lazy lin_dst: scores from the modules' own outputs
                a_src = (h_src * self.att_src).sum(-1)
                if x_dst is None:
                    a_dst = h_src.new_zeros(n_dst, H)
                else:
                    h_dst = h_src if shared else lin_d(x_dst).view(-1, H, C)
                    a_dst = (h_dst * self.att_dst).sum(-1)
            # a_src = <att_src, W x_j> per head, computed as x_j @ (att_src^T W): the same
            # numbers without an [N, H, C] temporary (and its [N, H, C] gradient)
            elif shared:
                a_src, a_dst = self._shared_scores(x_src, lin_s)
            else:
                a_src = x_src @ _fold(lin_s.weight, self.att_src).t()
                if x_dst is not None:
                    a_dst = x_dst @ _fold(lin_d.weight, self.att_dst).t()
                else:
                    a_dst = h_src.new_zeros(n_dst, H)
            bias = (e * self.att_edge).sum(-1) if e is not None else None
            out = ops.edge_attention(
                a_dst,
                a_src,
                h_src,
                graph,
                "additive",
                bias=bias,
                dropout=drop,
                return_weights=want_w,
                negative_slope=self.negative_slope,
                training=self.training,
            )
        elif self.mode == "gatv2":
            if x_dst is None:
                raise ValueError("mode 'gatv2' needs destination features 'x_dst'")
            if (e is None and not want_w and drop == 0.0 and self.lin_r is not self.lin_l
                    and _plain(self.lin_l) and _plain(self.lin_r)):
                # projections and attention in one autograd node that holds blocks of rows,
                # not whole gradients (ops.projected_v2_attention)
                out = ops.projected_v2_attention(
                    x_dst, x_src, self.lin_r.weight, self.lin_r.bias, self.lin_l.weight,
                    self.lin_l.bias, self.att, graph, H, negative_slope=self.negative_slope)
                return self._finish(out, x_dst, graph, None)
            h_l = _lin(self.lin_l, x_src).view(-1, H, C)
            h_r = (
                h_l
                if (self.share_weights and x_dst is x_src)
                else _lin(self.lin_r, x_dst).view(-1, H, C)
            )
            if e is None:
                out = ops.edge_attention(
                    h_r,
                    h_l,
                    h_l,
                    graph,
                    "v2",
                    att=self.att,
                    dropout=drop,
                    return_weights=want_w,
                    negative_slope=self.negative_slope,
                    training=self.training,
                )
            else:  # edge features enter inside the LeakyReLU: scores are formed per edge
                ei = graph.edge_index
                z = h_r.index_select(0, ei[1]) + h_l.index_select(0, ei[0]) + e
                s = (F.leaky_relu(z, self.negative_slope) * self.att).sum(-1)
                empty = h_l.new_empty(n_dst, H, 0), h_l.new_empty(n_src, H, 0)
                out = ops.edge_attention(
                    empty[0],
                    empty[1],
                    h_l,
                    graph,
                    "dot",
                    bias=s,
                    dropout=drop,
                    return_weights=want_w,
                    scale=1.0,
                    training=self.training,
                )
        else:
            if x_dst is None:
                raise ValueError("mode 'transformer' needs destination features 'x_dst'")
            lins = (self.lin_query, self.lin_key, self.lin_value)
            if e is None and not want_w and drop == 0.0 and all(_plain(lin) for lin in lins):
                # projections, attention and the root term in one autograd node that holds
                # blocks of rows, not whole gradients (ops.projected_attention)
                skip = self.lin_skip
                root = (skip is not None and self.lin_beta is None and self.concat
                        and _plain(skip))
                out = ops.projected_attention(
                    x_dst, x_src, *(t for lin in lins for t in (lin.weight, lin.bias)), graph, H,
                    scale=1.0 / math.sqrt(C), weight_skip=skip.weight if root else None,
                    bias_skip=skip.bias if root else None,
                )
                return self._finish(out, x_dst, graph, None, root_added=root)
            q = _lin(self.lin_query, x_dst).view(-1, H, C)
            k = _lin(self.lin_key, x_src).view(-1, H, C)
            v = _lin(self.lin_value, x_src).view(-1, H, C)
            bias = None
            if e is not None:
                bias = (q.index_select(0, graph.edge_index[1]) * e).sum(-1) / math.sqrt(C)
            out = ops.edge_attention(
                q,
                k,
                v,
                graph,
                "dot",
                bias=bias,
                dropout=drop,
                return_weights=want_w or e is not None,
                scale=1.0 / math.sqrt(C),
                training=self.training,
            )
            if e is not None:
                out, w = out
                w_used = F.dropout(w, p=drop, training=self.training) if drop > 0 else w
                out = out + ops.aggregate(
                    (e * w_used.unsqueeze(-1)).reshape(-1, H * C), graph
                ).view(-1, H, C)
                out = (out, w) if want_w else out
        alpha = None
        if want_w:
            out, alpha = out
        return self._finish(out, x_dst, graph, alpha)

    def _shared_scores(self, x: Tensor, lin: Linear) -> tuple[Tensor, Tensor]:
        """GAT's score terms ``(a_src, a_dst)`` ``[N, H]`` of one node set under one
        projection, in one pass over ``x``: ``x @ [att_src^T W; att_dst^T W]^T`` (:func:`_fold`)."""
        H = self.heads
        a = x @ torch.cat([_fold(lin.weight, self.att_src), _fold(lin.weight, self.att_dst)]).t()
        return a[:, :H], a[:, H:]

    def _finish(self, out: Tensor, x_dst: Tensor | None, graph: EdgeGraph,
                alpha: Tensor | None, root_added: bool = False
                ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Heads concatenated (or averaged), skip / residual and bias added (the transformer's
        skip unless ``root_added``: already in ``out``); with ``alpha``, also
        ``(edge_index, alpha)``."""
        # `out` [N, H, C] is this layer's own tensor and no backward saved it: the skip,
        # residual and bias are added into it in place (on the tensor itself, never on a view
        # of it, which autograd would have to copy), without another [N, H * C] buffer
        if not self.concat:
            out = out.mean(dim=1)
        shape = out.shape

        def add(t: Tensor) -> Tensor:
            return out.add_(t.view(-1, *shape[1:]) if t.dim() == 2 else t.view(shape[1:]))

        if self.mode == "transformer":
            if self.lin_skip is not None and not root_added:
                x_r = _lin(self.lin_skip, x_dst)
                if self.lin_beta is not None:
                    out = out.reshape(-1, x_r.size(-1))
                    b = self.lin_beta(torch.cat([out, x_r, out - x_r], dim=-1)).sigmoid()
                    out = b * x_r + (1 - b) * out
                else:
                    out = add(x_r)
        else:
            if self.res is not None and x_dst is not None:
                out = add(_lin(self.res, x_dst))
            if self.bias is not None:
                out = add(self.bias)
        out = out.reshape(shape[0], math.prod(shape[1:]))  # explicit: -1 is ambiguous at N = 0
        if alpha is not None:
            return out, (graph.edge_index, alpha)
        return out

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads}, mode={self.mode!r})"
        )
