r"""A transformer's computational graph per input, as UGID reads it: hidden states are nodes,
attention maps are weighted routing edges.

For layer :math:`\ell` and head :math:`h` the routing edge :math:`j \to i` carries
:math:`A^{\ell h}_{ij} = \operatorname{softmax}_j(q_i^{\ell h}\cdot k_j^{\ell h}/\sqrt{d})`, and
the layer's attention context is the weighted sum over in-edges,
:math:`c^{\ell h}_i = \sum_j A^{\ell h}_{ij}\, v^{\ell h}_j` (:func:`route` replays it through
:mod:`graphattn.ops`, which is how the tests prove the extraction matches the model).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ... import ops
from ._checks import check_int, check_mask

__all__ = ["ComputationalGraph", "check_layers", "counterfactual_masks", "extract_graph",
           "rank_heads", "route", "sensitive_positions"]


@dataclass
class ComputationalGraph:
    r"""The computational graphs of a batch of inputs.

    Shapes:
        - **hidden**: :math:`(B, L+1, T, D)`, the embedding output then each layer's output;
        - **attention**: :math:`(B, L, H, T, T)`, rows (queries) stochastic over valid keys;
        - **mask**: :math:`(B, T)` bool (or integer 0/1, a tokenizer's ``attention_mask``),
          valid (non-padding) tokens;
        - **sensitive**: :math:`(B, T)` bool or ``None``, the positions in :math:`S` (an
          integer tensor is refused by the losses: it may hold positions, not a mask);
        - **input_ids**: :math:`(B, T)` or ``None``.
    """

    hidden: Tensor
    attention: Tensor
    mask: Tensor
    sensitive: Tensor | None = None
    input_ids: Tensor | None = None

    @property
    def num_layers(self) -> int:
        return self.attention.shape[1]

    @property
    def num_heads(self) -> int:
        return self.attention.shape[2]

    def to_data(self, b: int, layer: int, top_k: int | None = None):
        r"""Input ``b``'s graph at ``layer`` as a PyG :class:`~torch_geometric.data.Data`.

        Nodes are the valid tokens with ``x`` = the hidden states entering ``layer``
        (``hidden[b, layer]``); edges ``j -> i`` carry ``edge_attr[E, H]`` = the attention of
        every head. With ``top_k`` only the ``k`` strongest in-edges of each node (by the
        head-mean weight) are kept. ``sensitive`` and ``input_ids`` are node attributes.
        ``b``, ``layer`` and ``top_k`` must be ints (a bool or a float is refused).
        """
        from torch_geometric.data import Data

        b = check_int(b, "b", 0, self.hidden.shape[0])
        layer = check_int(layer, "layer", 0, self.num_layers)
        if top_k is not None:
            top_k = check_int(top_k, "top_k", 1)
        idx = self.mask[b].nonzero().flatten()
        A = self.attention[b, layer][:, idx][:, :, idx]  # [H, n, n]
        n = idx.numel()
        keep = torch.ones(n, n, dtype=torch.bool, device=A.device)
        if top_k is not None:
            k = min(top_k, n)
            top = A.mean(0).topk(k, dim=-1).indices
            keep = torch.zeros_like(keep).scatter_(1, top, True)
        dst, src = keep.nonzero(as_tuple=True)
        data = Data(x=self.hidden[b, layer][idx], edge_index=torch.stack([src, dst]),
                    edge_attr=A[:, dst, src].T.contiguous(), num_nodes=n)
        if self.sensitive is not None:
            data.sensitive = self.sensitive[b][idx]
        if self.input_ids is not None:
            data.input_ids = self.input_ids[b][idx]
        return data


def sensitive_positions(input_ids: Tensor, token_ids: Iterable[int]) -> Tensor:
    """``[B, T]`` bool: where ``input_ids`` holds one of ``token_ids``."""
    ids = torch.as_tensor(sorted(set(int(t) for t in token_ids)), dtype=input_ids.dtype,
                          device=input_ids.device)
    return torch.isin(input_ids, ids)


def extract_graph(model: torch.nn.Module, inputs: Mapping[str, Tensor],
                  sensitive: Tensor | None = None) -> ComputationalGraph:
    r"""Runs a Hugging Face transformer and returns its computational graph.

    Args:
        model: a ``transformers`` model loaded with ``attn_implementation="eager"`` (the
            fused kernels return no attention maps).
        inputs: the tokenizer's batch (``input_ids``, ``attention_mask``, ...).
        sensitive (Tensor, optional): ``[B, T]`` bool, the positions in :math:`S`.

    Gradients flow when called outside ``torch.no_grad()`` (training with UGID does that).
    """
    if "input_ids" not in inputs:
        raise ValueError("'inputs' must hold 'input_ids' (a tokenizer batch)")
    ids = inputs["input_ids"]
    out = model(**inputs, output_attentions=True, output_hidden_states=True)
    if out.attentions is None or any(a is None for a in out.attentions):
        raise ValueError("the model returned no attention maps; load it with "
                         "attn_implementation='eager'")
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    if sensitive is not None:
        if isinstance(sensitive, Tensor) and sensitive.shape != ids.shape:
            raise ValueError(f"'sensitive' must have the shape of input_ids {list(ids.shape)}, "
                             f"got {list(sensitive.shape)}")
        check_mask(sensitive, "sensitive", tuple(ids.shape))
    return ComputationalGraph(hidden=torch.stack(out.hidden_states, 1),
                              attention=torch.stack(out.attentions, 1), mask=mask,
                              sensitive=sensitive, input_ids=ids)


def route(data, values: Tensor) -> Tensor:
    r"""Replays the routing of a layer's graph: :math:`c_i = \sum_j A_{ij} v_j` per head,
    through :func:`graphattn.ops.aggregate`.

    Args:
        data: a graph from :meth:`ComputationalGraph.to_data` (``edge_attr[E, H]``).
        values (Tensor): ``[N, H, D_h]`` per-head values of the nodes.

    Returns:
        ``[N, H, D_h]``.
    """
    N, H = data.num_nodes, data.edge_attr.shape[1]
    if values.dim() != 3 or values.shape[0] != N or values.shape[1] != H:
        raise ValueError(f"'values' must have shape [N={N}, H={H}, D], got {list(values.shape)}")
    graph = ops.build_graph(data.edge_index, N)
    msg = data.edge_attr.unsqueeze(-1).to(values.dtype) * values[data.edge_index[0]]
    return ops.aggregate(msg.flatten(1), graph, "sum").view(N, H, -1)


def counterfactual_masks(graph: ComputationalGraph, graph_cf: ComputationalGraph
                         ) -> tuple[Tensor, Tensor]:
    """Checks that two graphs form a counterfactual pair (equal attention shapes, both with
    ``[B, T]`` sensitive and valid-token masks) and returns the positions excluded from the
    invariance terms (sensitive in either) and those valid in both, each ``[B, T]`` bool.
    ``sensitive`` must be bool; ``mask`` bool or integer 0/1 (other dtypes are refused)."""
    if graph_cf.attention.shape != graph.attention.shape:
        raise ValueError("counterfactual graphs must have equal shapes "
                         f"({list(graph.attention.shape)} vs {list(graph_cf.attention.shape)})")
    B, T = graph.attention.shape[0], graph.attention.shape[-1]
    for g, name in ((graph, "graph"), (graph_cf, "graph_cf")):
        for field in ("sensitive", "mask"):
            m = getattr(g, field)
            if not isinstance(m, Tensor) or tuple(m.shape) != (B, T):
                got = list(m.shape) if isinstance(m, Tensor) else m
                hint = ": mark the sensitive positions first" if m is None else ""
                raise ValueError(f"'{name}.{field}' must be a [B={B}, T={T}] bool mask, got "
                                 f"{got}{hint}")
    S = (check_mask(graph.sensitive, "graph.sensitive", (B, T))
         | check_mask(graph_cf.sensitive, "graph_cf.sensitive", (B, T)))
    return S, (check_mask(graph.mask, "graph.mask", (B, T), allow_01=True)
               & check_mask(graph_cf.mask, "graph_cf.mask", (B, T), allow_01=True))


def check_layers(layers: Iterable[int] | None, L: int) -> list[int]:
    """``layers`` as a non-empty list of int indices in ``[0, L)`` (all by default). A negative
    index is refused: it would pick layer ``L + i`` of the attention but hidden output
    ``i + 1``; so are a bool or a float (``True`` would be layer 1, ``0.9`` layer 0) and an
    empty selection (nothing to compare: the terms would be a silent 0)."""
    if layers is None:
        return list(range(L))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise TypeError(f"'layers' must be a list of int layer indices, got "
                        f"{type(layers).__name__}")
    layers = list(layers)
    for i in layers:
        try:
            check_int(i, "layers")
        except TypeError:
            raise TypeError(f"'layers' must hold int layer indices, got {i!r} "
                            f"({getattr(i, 'dtype', type(i).__name__)}) in {layers}") from None
    layers = [int(i) for i in layers]
    if not layers:
        raise ValueError(f"'layers' must select at least one layer in [0, {L}), got []")
    if any(not 0 <= i < L for i in layers):
        raise ValueError(f"'layers' must hold layer indices in [0, {L}), got {layers}")
    return layers


def rank_heads(graph: ComputationalGraph, graph_cf: ComputationalGraph, k: int,
               layers: list[int] | None = None) -> Tensor:
    r"""Picks the ``k`` most bias-sensitive heads: those whose attention differs most between
    the counterfactual inputs (the edge term per head, sensitive rows/columns excluded).

    Args:
        k (int): heads to pick, ``>= 1`` (all of them if more than ``len(layers) * H``).
        layers (list of int, optional): non-empty, int layer indices in ``[0, L)`` (default
            all; bools, floats and an empty list are refused).

    Returns:
        ``[len(layers), H]`` bool.
    """
    from .losses import edge_invariance_loss

    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"'k' must be an int >= 1, got {k!r}")
    layers = check_layers(layers, graph.num_layers)
    S, mask = counterfactual_masks(graph, graph_cf)
    with torch.no_grad():
        score = torch.stack([torch.stack([
            edge_invariance_loss(graph.attention[:, layer, h], graph_cf.attention[:, layer, h],
                                 S, mask) for h in range(graph.num_heads)])
            for layer in layers])
    sel = torch.zeros_like(score, dtype=torch.bool)
    sel.view(-1)[score.flatten().topk(min(k, score.numel())).indices] = True
    return sel
