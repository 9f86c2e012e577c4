r"""DyMRL's shared fusion attention ``TF`` and its modality GRU.

``TF`` (one module, the same weights for space fusion, modality fusion and history
evolution; DyMRL's released code, ``../shared/papers/GRAPH_PAPERS.md`` section 4.3). Its
query is always the static entity table :math:`\mathbf{E}_0`; for each entity the ``m`` key
vectors :math:`\mathbf{z}^1..\mathbf{z}^m` are keys and values:

.. math::
    \mathbf{a} = \big\Vert_{h=1}^{H}\sum_{j=1}^{m}\operatorname{softmax}_j
        \frac{\langle\mathbf{W}^Q_h\mathbf{E}_0, \mathbf{W}^K_h\mathbf{z}^j\rangle}{\sqrt{d_k}}
        \mathbf{W}^V_h\mathbf{z}^j, \qquad
    \mathbf{u} = \mathrm{Dropout}(\mathbf{W}_o\mathbf{a}) + \mathbf{E}_0, \qquad
    \mathrm{TF} = \mathbf{W}_2\,\mathrm{ReLU}\big(\mathbf{W}_1(\mathbf{u} + \mathbf{E}_0)\big),

with ``H = 2`` heads of ``d_k = d / 2``, no positional or time encoding (so ``TF`` is
invariant to the order of its keys). The per-entity softmax over its ``m`` keys and the
weighted sum run in :func:`graphattn.ops.edge_attention` on a bipartite key → entity graph.
The Q/K/V projections are bias-free, as in the Transformer-style attention block the code
uses; no layer norm is applied (none in the spec).

Shapes:
    - **input:** ``e0 [N, d]``, ``keys [N, m, d]``
    - **output:** ``[N, d]``
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn

from ... import ops
from ..._checks import check_int
from ...index import EdgeGraph, build_graph
from ._checks import check_float_tensor


@lru_cache(maxsize=32)
def _key_graph(num_entities: int, m: int) -> EdgeGraph:
    src = torch.arange(num_entities * m)
    dst = torch.arange(num_entities).repeat_interleave(m)
    return build_graph(torch.stack([src, dst]), (num_entities * m, num_entities), cache=False)


class FusionAttention(nn.Module):
    """DyMRL's ``TF`` (see the module docstring).

    Args:
        dim: ``d`` (an int >= 1, divisible by ``heads``).
        heads: Attention heads (an int >= 1).
        dropout: Dropout after ``W_o``.

    ``e0`` and ``keys`` must have the dtype of the module's parameters (``TypeError``
    otherwise) and the shapes of the module docstring (``ValueError``).
    """

    def __init__(self, dim: int, heads: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        dim, heads = check_int(dim, "dim", 1), check_int(heads, "heads", 1)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads, self.dk = heads, dim // heads
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.w_o = nn.Linear(dim, dim, bias=False)
        self.w_1 = nn.Linear(dim, dim)
        self.w_2 = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, e0: Tensor, keys: Tensor, return_weights: bool = False):
        dtype = self.w_q.weight.dtype
        check_float_tensor("e0", e0, dtype)
        check_float_tensor("keys", keys, dtype)
        if e0.dim() != 2 or e0.size(1) != self.w_q.in_features:
            raise ValueError(f"e0 must be [N, d={self.w_q.in_features}], got {list(e0.shape)}")
        if keys.dim() != 3 or keys.shape[0] != e0.shape[0] or keys.shape[2] != e0.shape[1]:
            raise ValueError(f"keys must be [N, m, d] = [{e0.shape[0]}, m, {e0.shape[1]}], got "
                             f"{tuple(keys.shape)}")
        N, m, d = keys.shape
        H, dk = self.heads, self.dk
        q = self.w_q(e0).view(N, H, dk)
        k = self.w_k(keys).reshape(N * m, H, dk)
        v = self.w_v(keys).reshape(N * m, H, dk)
        a, w = ops.edge_attention(q, k, v, _key_graph(N, m), kind="dot", return_weights=True)
        u = self.dropout(self.w_o(a.reshape(N, d))) + e0
        out = self.w_2(torch.relu(self.w_1(u + e0)))
        return (out, w.view(N, m, H)) if return_weights else out


class ModalityGRU(nn.Module):
    r"""The shared ``GRUCell`` of DyMRL's modality fusion, with hidden state always
    :math:`\mathbf{E}_0`: :math:`\mathbf{x}' = \mathrm{GRU}(\mathbf{x}\mathbf{W}, \mathbf{E}_0)`,
    with a per-modality projection :math:`\mathbf{W}` (identity for the structural stream).

    Args:
        dim: ``d``.
        modality_dims: Input sizes of the extra modalities (e.g. ``{"image": 4096,
            "text": 768}``); each gets a bias-free projection to ``d``.
    """

    def __init__(self, dim: int, modality_dims: dict[str, int] | None = None) -> None:
        super().__init__()
        self.gru = nn.GRUCell(dim, dim)
        self.proj = nn.ModuleDict({k: nn.Linear(n, dim, bias=False)
                                   for k, n in (modality_dims or {}).items()})

    def forward(self, e0: Tensor, structural: Tensor, modalities: dict[str, Tensor]
                ) -> list[Tensor]:
        """``[GRU(structural, E0), GRU(X_m W_m, E0) for each modality m]`` in the order of
        ``modality_dims``; ``modalities`` maps every one of its names (and no other) to a
        ``[N, n_m]`` feature matrix."""
        if not isinstance(modalities, dict) or set(modalities) != set(self.proj):
            got = sorted(modalities) if isinstance(modalities, dict) else type(modalities).__name__
            raise ValueError(f"modalities must give the features of exactly the modalities the "
                             f"model was built with {sorted(self.proj)}, got {got}")
        out = [self.gru(structural, e0)]
        for name, proj in self.proj.items():
            feats = modalities[name]
            want = [e0.size(0), proj.in_features]
            if not isinstance(feats, Tensor) or list(feats.shape) != want:
                raise ValueError(f"modality '{name}' must be a {want} feature matrix (one row per "
                                 f"entity), got {list(getattr(feats, 'shape', []))}")
            if feats.dtype != proj.weight.dtype:
                raise TypeError(f"modality '{name}' must have the dtype of the model "
                                f"({proj.weight.dtype}), got {feats.dtype}")
            out.append(self.gru(proj(feats), e0))
        return out
