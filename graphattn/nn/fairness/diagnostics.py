r"""networkx diagnostics of structural discrepancy between counterfactual attention graphs.

An attention map :math:`A\in\mathbb{R}^{T\times T}` is thresholded into a directed graph by
keeping, for each query token :math:`i`, its ``top_k`` strongest in-edges :math:`j\to i`
(self-loops dropped). Two counterfactual inputs of equal length then give two graphs on the
same token positions, compared by

* :func:`is_isomorphic` (networkx VF2), ignoring token identity;
* :func:`graph_edit_distance`, networkx's exact GED (exponential: tiny graphs only, with a
  timeout) — a lower bound on the position-aligned distance;
* :func:`aligned_edit_distance`, the edit distance under the identity node map
  :math:`|E_1\,\triangle\,E_2|` (linear; an upper bound on the GED);
* :func:`spectral_distance`, the :math:`\ell_2` distance between the sorted Laplacian spectra
  of the symmetrised weighted attention graphs, usable on long inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_int

__all__ = ["aligned_edit_distance", "attention_digraph", "graph_edit_distance",
           "is_isomorphic", "spectral_distance"]


def _nx():
    try:
        import networkx
    except ModuleNotFoundError as e:  # pragma: no cover - networkx is in the llm extra
        raise ModuleNotFoundError("graphattn.nn.fairness diagnostics need networkx: "
                                  "pip install 'graphattn[llm]'") from e
    return networkx


def _check_map(attn: Tensor, name: str = "attn") -> None:
    if not isinstance(attn, Tensor) or attn.dim() != 2 or attn.shape[0] != attn.shape[1]:
        shape = list(attn.shape) if isinstance(attn, Tensor) else type(attn).__name__
        raise ValueError(f"'{name}' must be a square [T, T] attention map, got {shape}")


def attention_digraph(attn: Tensor, top_k: int = 2, self_loops: bool = False):
    """The top-``k`` in-edges of every query token as a ``networkx.DiGraph`` (edge ``j -> i``
    with attribute ``weight``). ``top_k`` must be an int ``>= 1`` (a bool is refused)."""
    nx = _nx()
    _check_map(attn)
    top_k = check_int(top_k, "top_k", 1)
    A = attn.detach().double().cpu().clone()
    if not self_loops:
        A.fill_diagonal_(float("-inf"))
    T = A.shape[0]
    g = nx.DiGraph()
    g.add_nodes_from(range(T))
    k = min(top_k, T - (0 if self_loops else 1))
    if k > 0:
        j = A.topk(k, dim=1).indices
        for i in range(T):
            for src in j[i].tolist():
                g.add_edge(src, i, weight=float(attn[i, src]))
    return g


def is_isomorphic(attn: Tensor, attn_cf: Tensor, top_k: int = 2) -> bool:
    """Whether the thresholded graphs of two maps are isomorphic."""
    return bool(_nx().is_isomorphic(attention_digraph(attn, top_k),
                                    attention_digraph(attn_cf, top_k)))


def graph_edit_distance(attn: Tensor, attn_cf: Tensor, top_k: int = 2,
                        timeout: float = 5.0) -> float:
    """networkx's graph edit distance of the thresholded graphs (unit costs). Exponential in
    the number of nodes: when the timeout hits, the best distance found so far is returned."""
    g1, g2 = attention_digraph(attn, top_k), attention_digraph(attn_cf, top_k)
    d = _nx().graph_edit_distance(g1, g2, timeout=timeout)
    return float("nan") if d is None else float(d)


def aligned_edit_distance(attn: Tensor, attn_cf: Tensor, top_k: int = 2) -> int:
    """Number of edges in one thresholded graph but not the other, nodes aligned by position."""
    _check_map(attn_cf, "attn_cf")
    if attn.shape != attn_cf.shape:
        raise ValueError(f"maps of equal size expected, got {list(attn.shape)} and "
                         f"{list(attn_cf.shape)}")
    e1 = set(attention_digraph(attn, top_k).edges)
    e2 = set(attention_digraph(attn_cf, top_k).edges)
    return len(e1 ^ e2)


def spectral_distance(attn: Tensor, attn_cf: Tensor) -> float:
    r""":math:`\|\lambda(L_1)-\lambda(L_2)\|_2` with :math:`L = D - W`,
    :math:`W = (A + A^\top)/2` without self-loops, spectra sorted (zero-padded to equal size).
    Invariant to relabelling the nodes of either graph."""
    _check_map(attn)
    _check_map(attn_cf, "attn_cf")

    def spectrum(a: Tensor) -> Tensor:
        W = 0.5 * (a + a.T).detach().double().cpu()
        W.fill_diagonal_(0.0)
        L = torch.diag(W.sum(1)) - W
        return torch.linalg.eigvalsh(L)

    s1, s2 = spectrum(attn), spectrum(attn_cf)
    n = max(s1.numel(), s2.numel())
    s1 = torch.cat([s1.new_zeros(n - s1.numel()), s1])
    s2 = torch.cat([s2.new_zeros(n - s2.numel()), s2])
    return float((s1 - s2).norm())
