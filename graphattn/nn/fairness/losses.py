r"""UGID structural-invariance losses between a transformer's computational graphs on
counterfactual inputs.

From *Unified Graph Isomorphism for Debiasing LLMs* (UGID; Ding, Yao, Li, Zhang, Jiang, Liu,
Hu, 2026). The paper's abstract fixes the idea: hidden states are nodes, attention maps are
routing edges, and fine-tuning makes this graph invariant across counterfactual inputs
:math:`(x, \tilde x)` except at the sensitive positions :math:`S`, with a log-space constraint
on sensitive logits and a selective anchor term on definitional inputs. **The distances,
normalisations and weights below are reconstructed** (the methods text was not available; see
``shared/papers/GRAPH_PAPERS.md`` section 6.2):

.. math::
    \mathcal{L}_A &= \operatorname{mean}_{(\ell,h)\in\mathcal{L}}\ \operatorname{mean}_{i\notin S}
        D\big(\hat A^{\ell h}_{i,\cdot\setminus S}(x)\,\big\|\,
               \hat A^{\ell h}_{i,\cdot\setminus S}(\tilde x)\big),\qquad
    \hat A_{i,j} = \frac{A_{ij}\,[j\notin S]}{\sum_{j'\notin S} A_{ij'} + \varepsilon}

    \mathcal{L}_H &= \operatorname{mean}_{\ell\in\mathcal{L}}\ \operatorname{mean}_{i\notin S}
        \big(1 - \cos(h^\ell_i(x), h^\ell_i(\tilde x))\big)

    \mathcal{L}_{\log} &= \operatorname{mean}_a
        \big(\log p_\theta(a\mid x) - \log p_\theta(\tilde a\mid \tilde x)\big)^2

    \mathcal{L}_{anc} &= \operatorname{KL}\big(p_{\theta_0}(\cdot\mid x_{def})\,\|\,
        p_\theta(\cdot\mid x_{def})\big)

with :math:`D` the symmetrised KL divergence (``"kl"``) or the squared distance (``"l2"``) of
the re-normalised rows. Means (not sums) keep the terms comparable across sentence lengths;
rows and columns of padding tokens are excluded like the sensitive ones. :math:`1-\cos` is
computed as :math:`\tfrac12\|\hat h-\hat h'\|^2` with :math:`\hat h = h/\max(\|h\|,
10^{-8})`: the same for non-zero vectors, and 0 for identical ones (two zero vectors included).
Empty inputs (no kept position, no scored word, an empty batch) give 0, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_choice, check_mask, check_weight

__all__ = [
    "UGIDLoss",
    "anchor_loss",
    "edge_invariance_loss",
    "logit_constraint_loss",
    "node_invariance_loss",
]


def _keep_mask(sensitive: Tensor | None, mask: Tensor | None, shape: tuple[int, ...],
               device: torch.device) -> Tensor:
    """``[B, T]`` bool: the positions that take part (valid and not sensitive). ``sensitive``
    must be bool; ``mask`` bool or integer 0/1 (see :func:`._checks.check_mask`)."""
    B, T = shape
    keep = torch.ones(B, T, dtype=torch.bool, device=device)
    for name, m in (("sensitive", sensitive), ("mask", mask)):
        if m is None:
            continue
        m = check_mask(m, name, (B, T), allow_01=name == "mask").to(device)
        keep = keep & (~m if name == "sensitive" else m)
    return keep


def _check_pair(a: Tensor, b: Tensor, name: str, min_dim: int, max_dim: int | None = None
                ) -> None:
    for n, t in ((name, a), (f"{name}_cf", b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"'{n}' must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"'{n}' must be floating point, got {t.dtype}")
    if a.dtype != b.dtype or a.device != b.device:  # no silent promotion of one of the pair
        raise TypeError(f"'{name}' and '{name}_cf' must have the same dtype and device, got "
                        f"{a.dtype} on {a.device} and {b.dtype} on {b.device}")
    if a.shape != b.shape:
        raise ValueError(
            f"'{name}' and '{name}_cf' must have the same shape (counterfactual pairs of equal "
            f"token length), got {list(a.shape)} and {list(b.shape)}")
    if a.dim() < min_dim:
        raise ValueError(f"'{name}' must have at least {min_dim} dims, got {list(a.shape)}")
    if max_dim is not None and a.dim() > max_dim:
        raise ValueError(f"'{name}' must have at most {max_dim} dims, got {list(a.shape)}")


def edge_invariance_loss(attn: Tensor, attn_cf: Tensor, sensitive: Tensor | None = None,
                         mask: Tensor | None = None, distance: str = "kl",
                         eps: float = 1e-8) -> Tensor:
    r"""Edge term :math:`\mathcal{L}_A`: distance between re-normalised attention rows of a
    counterfactual pair, sensitive rows and columns excluded.

    Args:
        attn, attn_cf (Tensor): attention maps ``[B, *, T, T]`` (rows = queries, any number of
            layer/head dims in between), rows stochastic, non-negative (checked), both of one
            floating dtype.
        sensitive (Tensor, optional): ``[B, T]`` bool, the positions in :math:`S` (an integer
            tensor, maybe of positions, is refused with a ``TypeError``).
        mask (Tensor, optional): ``[B, T]`` bool, or integer with 0/1 values only (a
            tokenizer's ``attention_mask``), valid (non-padding) positions; a float mask or an
            integer one holding other values is refused.
        distance (str): ``"kl"`` (symmetrised KL) or ``"l2"`` (squared distance).
        eps (float): keeps rows whose every column is excluded finite (they count 0).

    Returns:
        scalar: mean over batch, layer/head dims and kept rows.
    """
    _check_pair(attn, attn_cf, "attn", 3)
    if distance not in ("kl", "l2"):
        raise ValueError(f"'distance' must be 'kl' or 'l2', got {distance!r}")
    if not eps > 0:  # eps = 0 gives 0 / 0 for a row whose columns are all excluded
        raise ValueError(f"'eps' must be positive, got {eps}")
    B, T = attn.shape[0], attn.shape[-1]
    if attn.shape[-2] != T:
        raise ValueError(f"'attn' must end in square [T, T] maps, got {list(attn.shape)}")
    for n, t in (("attn", attn), ("attn_cf", attn_cf)):  # a negated map gives the same loss
        if t.numel() and bool(t.min() < 0):
            raise ValueError(f"'{n}' must be a non-negative attention map, got minimum "
                             f"{float(t.min())}")
    keep = _keep_mask(sensitive, mask, (B, T), attn.device)
    extra = attn.dim() - 3
    col = keep.view(B, *([1] * extra), 1, T).to(attn.dtype)
    row = keep.view(B, *([1] * extra), T).to(attn.dtype)

    def renorm(a: Tensor) -> Tensor:
        a = a * col
        return a / (a.sum(-1, keepdim=True) + eps)

    p, q = renorm(attn), renorm(attn_cf)
    if distance == "kl":
        lp, lq = torch.log(p.clamp_min(eps)), torch.log(q.clamp_min(eps))
        d = 0.5 * ((p - q) * (lp - lq)).sum(-1)  # (KL(p||q) + KL(q||p)) / 2
    else:
        d = (p - q).pow(2).sum(-1)
    w = row.expand_as(d)
    return (d * w).sum() / w.sum().clamp_min(1.0)


def node_invariance_loss(hidden: Tensor, hidden_cf: Tensor, sensitive: Tensor | None = None,
                         mask: Tensor | None = None, distance: str = "cos") -> Tensor:
    r"""Node term :math:`\mathcal{L}_H`: distance between hidden states at non-sensitive
    positions.

    Args:
        hidden, hidden_cf (Tensor): ``[B, *, T, D]`` (any layer dims in between), ``D >= 1``.
        sensitive, mask (Tensor, optional): ``[B, T]`` as in :func:`edge_invariance_loss`.
        distance (str): ``"cos"`` (:math:`1-\cos`, computed as
            :math:`\tfrac12\|\hat h-\hat h'\|^2` with :math:`\hat h=h/\max(\|h\|,10^{-8})`:
            equal to :math:`1-\cos` for non-zero vectors, 0 for identical vectors, two zero
            vectors included, and 1/2 between a zero and a non-zero vector) or ``"l2"``
            (squared distance).

    Returns:
        scalar: mean over batch, layer dims and kept positions.
    """
    _check_pair(hidden, hidden_cf, "hidden", 3)
    if distance not in ("cos", "l2"):
        raise ValueError(f"'distance' must be 'cos' or 'l2', got {distance!r}")
    if hidden.shape[-1] == 0:
        raise ValueError(f"'hidden' must have a non-empty feature dim D, got {list(hidden.shape)}")
    B, T = hidden.shape[0], hidden.shape[-2]
    keep = _keep_mask(sensitive, mask, (B, T), hidden.device)
    if distance == "cos":
        # 1 - cos(u, v) = |u - v|^2 / 2 for unit vectors; this form is exactly 0 for identical
        # inputs (zero vectors included, where 1 - cosine_similarity gives 1) and never < 0
        u = F.normalize(hidden, dim=-1, eps=1e-8)
        v = F.normalize(hidden_cf, dim=-1, eps=1e-8)
        d = 0.5 * (u - v).pow(2).sum(-1)
    else:
        d = (hidden - hidden_cf).pow(2).sum(-1)
    w = keep.view(B, *([1] * (hidden.dim() - 3)), T).to(d.dtype).expand_as(d)
    return (d * w).sum() / w.sum().clamp_min(1.0)


def logit_constraint_loss(logits: Tensor, logits_cf: Tensor, index: Tensor,
                          index_cf: Tensor | None = None) -> Tensor:
    r"""Log-space constraint :math:`\mathcal{L}_{\log}` on the scores of attribute words.

    Args:
        logits, logits_cf (Tensor): ``[B, V]`` unnormalised scores over a vocabulary.
        index (Tensor): ``[B, K]`` int64, attribute words :math:`a` scored under ``x``.
        index_cf (Tensor, optional): ``[B, K]``, their counterparts :math:`\tilde a` under
            :math:`\tilde x` (default: the same words).

    Returns:
        scalar: mean squared difference of log-probabilities; invariant to adding a constant
        to all logits of a row; 0 when nothing is scored (``B = 0`` or ``K = 0``).
    """
    _check_pair(logits, logits_cf, "logits", 2, 2)  # [B, V]: one scored position per input
    index_cf = index if index_cf is None else index_cf
    for n, t in (("index", index), ("index_cf", index_cf)):
        if not isinstance(t, Tensor) or t.dtype != torch.long:
            raise TypeError(f"'{n}' must be an int64 tensor")
        if t.dim() != 2 or t.shape[0] != logits.shape[0]:
            raise ValueError(f"'{n}' must have shape [B={logits.shape[0]}, K], got {list(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= logits.shape[-1]):
            raise ValueError(f"'{n}' holds ids outside [0, {logits.shape[-1]})")
    if index_cf.shape != index.shape:  # pairs (a, a~): one counterpart per word
        raise ValueError(f"'index_cf' must have the shape of 'index' {list(index.shape)}, got "
                         f"{list(index_cf.shape)}")
    lp = F.log_softmax(logits, -1).gather(-1, index)
    lq = F.log_softmax(logits_cf, -1).gather(-1, index_cf)
    return (lp - lq).pow(2).sum() / max(lp.numel(), 1)  # the mean, 0 (not NaN) when empty


def anchor_loss(logits_ref: Tensor, logits: Tensor) -> Tensor:
    r"""Anchor term :math:`\operatorname{KL}(p_{\theta_0}\|p_\theta)` on definitional inputs;
    ``logits_ref`` come from the frozen initial model (no gradient flows into them).

    Args:
        logits_ref, logits (Tensor): ``[B, V]``; ``-inf`` marks a masked vocabulary entry.

    Returns:
        scalar: batch-mean KL divergence (0 when the two models agree), with the convention
        :math:`0\log 0 = 0`: entries of zero reference probability add nothing (so two equal
        distributions with the same masked entries give 0, not NaN); 0 for ``B = 0``.
    """
    _check_pair(logits_ref, logits, "logits_ref", 2, 2)  # batchmean divides by B alone
    lr = F.log_softmax(logits_ref.detach(), -1)
    lq = F.log_softmax(logits, -1)
    pr = lr.exp()
    # p log(p / q) where p > 0; a where (not a product with 0) keeps -inf - -inf out of it
    kl = torch.where(pr > 0, pr * (lr - lq), torch.zeros((), dtype=pr.dtype, device=pr.device))
    return kl.sum() / max(logits.shape[0], 1)


class UGIDLoss(nn.Module):
    r"""The UGID objective
    :math:`\lambda_A\mathcal{L}_A + \lambda_H\mathcal{L}_H + \lambda_{\log}\mathcal{L}_{\log}
    + \lambda_{anc}\mathcal{L}_{anc}` (reconstructed, see the module docstring).

    Args:
        lambda_edge, lambda_node, lambda_log, lambda_anchor (float): term weights.
            Finite numbers ``>= 0``.
        edge_distance (str): ``"kl"`` or ``"l2"``. node_distance (str): ``"cos"`` or ``"l2"``.

    Forward takes two :class:`~graphattn.nn.fairness.ComputationalGraph`\ s of a counterfactual
    batch (and optionally the attribute-score and anchor inputs) and returns a dict with every
    term and the weighted ``"total"``.
    """

    def __init__(self, lambda_edge: float = 1.0, lambda_node: float = 1.0,
                 lambda_log: float = 1.0, lambda_anchor: float = 1.0,
                 edge_distance: str = "kl", node_distance: str = "cos") -> None:
        super().__init__()
        self.lambda_edge = check_weight(lambda_edge, "lambda_edge")
        self.lambda_node = check_weight(lambda_node, "lambda_node")
        self.lambda_log = check_weight(lambda_log, "lambda_log")
        self.lambda_anchor = check_weight(lambda_anchor, "lambda_anchor")
        self.edge_distance = check_choice(edge_distance, "edge_distance", ("kl", "l2"))
        self.node_distance = check_choice(node_distance, "node_distance", ("cos", "l2"))

    def forward(self, graph, graph_cf, layers: list[int] | None = None,
                heads: Tensor | None = None, logits: Tensor | None = None,
                logits_cf: Tensor | None = None, index: Tensor | None = None,
                index_cf: Tensor | None = None, anchor_ref: Tensor | None = None,
                anchor: Tensor | None = None) -> dict[str, Tensor]:
        """``layers`` (non-empty list of int indices in ``[0, L)``) selects attention layers and
        hidden-state outputs (default all); ``heads`` (``[len(layers), H]`` bool) selects the
        bias-sensitive heads. Each graph's ``hidden`` must be ``[B, L+1, T, D]``. The logit
        term needs ``logits``, ``logits_cf`` and ``index`` together (``index_cf`` optional), the
        anchor term ``anchor`` and ``anchor_ref`` together: a partial set is refused rather
        than the term silently dropped."""
        from .graph import check_layers, counterfactual_masks

        S, mask = counterfactual_masks(graph, graph_cf)
        B, L, _, T = graph.attention.shape[:4]
        for name, g in (("graph", graph), ("graph_cf", graph_cf)):
            h = g.hidden
            if (not isinstance(h, Tensor) or h.dim() != 4
                    or (h.shape[0], h.shape[1], h.shape[2]) != (B, L + 1, T)):
                got = list(h.shape) if isinstance(h, Tensor) else type(h).__name__
                raise ValueError(f"'{name}.hidden' must be [B={B}, L+1={L + 1}, T={T}, D] (the "
                                 f"embedding output then each layer's), got {got}")
        log_args = {"logits": logits, "logits_cf": logits_cf, "index": index,
                    "index_cf": index_cf}
        if any(v is not None for v in log_args.values()):
            missing = [k for k in ("logits", "logits_cf", "index") if log_args[k] is None]
            if missing:
                given = [k for k, v in log_args.items() if v is not None]
                raise ValueError(f"the logit term needs 'logits', 'logits_cf' and 'index'; "
                                 f"got {given} without {missing}")
        if (anchor is None) != (anchor_ref is None):
            raise ValueError("'anchor' needs 'anchor_ref' from the frozen model"
                             if anchor_ref is None else
                             "'anchor_ref' needs 'anchor' (the current model's logits)")
        layers = check_layers(layers, L)
        att, att_cf = graph.attention[:, layers], graph_cf.attention[:, layers]
        if heads is not None:
            if not isinstance(heads, Tensor) or heads.dtype != torch.bool:
                raise TypeError(f"'heads' must be a bool mask [len(layers), H], got "
                                f"{getattr(heads, 'dtype', type(heads).__name__)} (an integer "
                                f"tensor would index heads instead of masking them)")
            if heads.shape != att.shape[1:3]:
                raise ValueError(f"'heads' must have shape {list(att.shape[1:3])}, "
                                 f"got {list(heads.shape)}")
            att, att_cf = att[:, heads], att_cf[:, heads]
        zero = graph.attention.new_zeros(())
        out = {"edge": edge_invariance_loss(att, att_cf, S, mask, self.edge_distance),
               "node": node_invariance_loss(graph.hidden[:, [i + 1 for i in layers]],
                                            graph_cf.hidden[:, [i + 1 for i in layers]],
                                            S, mask, self.node_distance),
               "log": zero, "anchor": zero}
        if logits is not None:
            out["log"] = logit_constraint_loss(logits, logits_cf, index, index_cf)
        if anchor is not None:
            out["anchor"] = anchor_loss(anchor_ref, anchor)
        out["total"] = (self.lambda_edge * out["edge"] + self.lambda_node * out["node"]
                        + self.lambda_log * out["log"] + self.lambda_anchor * out["anchor"])
        return out

    def extra_repr(self) -> str:
        return (f"lambda_edge={self.lambda_edge}, lambda_node={self.lambda_node}, "
                f"lambda_log={self.lambda_log}, lambda_anchor={self.lambda_anchor}")
