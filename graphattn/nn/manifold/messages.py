r"""DyMRL's three geometric messages and the AttH query they share with the decoder.

For a source entity :math:`\mathbf{h}_s \in \mathbb{R}^d` and relation :math:`r`
(DyMRL, "Dynamic Multispace Representation Learning", WWW 2026; mechanism from its released
code, ``../shared/papers/GRAPH_PAPERS.md`` section 4.2):

* Euclidean (TransE-like): :math:`\mathbf{m} = \mathbf{h}_s + \mathbf{r}`.
* Complex (rotation + scaling): :math:`\mathbf{m} = \mathrm{Re}\big((\mathbf{h}_s +
  i\hat{\mathbf{h}}_s) \odot (\mathbf{r}_{re} + i\mathbf{r}_{im})\big) = \mathbf{h}_s \odot
  \mathbf{r}_{re} - \hat{\mathbf{h}}_s \odot \mathbf{r}_{im}`.
* Hyperbolic (AttH): with Givens rotation/reflection candidates,
  :math:`\beta = \mathrm{softmax}\big(\langle\mathbf{a}_r, \mathrm{Ref}_r\mathbf{h}_s\rangle
  / \sqrt{d},\ \langle\mathbf{a}_r, \mathrm{Rot}_r\mathbf{h}_s\rangle / \sqrt{d}\big)`,
  :math:`\mathbf{q} = \beta_1\mathrm{Ref}_r\mathbf{h}_s + \beta_2\mathrm{Rot}_r\mathbf{h}_s`, and
  :math:`\mathbf{m} = \log_0^c\big(\mathrm{proj}(\exp_0^c(\mathbf{q}) \oplus_c
  \exp_0^c(\mathbf{t}_r))\big)`.

Shapes: every argument is ``[E, d]`` (already gathered per edge); the outputs are ``[E, d]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .givens import givens_reflection, givens_rotation
from .poincare import PoincareBall


def translation_message(h_src: Tensor, rel: Tensor) -> Tensor:
    """Euclidean message :math:`\\mathbf{h}_s + \\mathbf{r}`."""
    return h_src + rel


def complex_message(h_src: Tensor, h_src_imag: Tensor, rel_re: Tensor, rel_im: Tensor) -> Tensor:
    """Real part of the complex product :math:`(h + i\\hat h)(r_{re} + i r_{im})`."""
    return h_src * rel_re - h_src_imag * rel_im


def atth_query(h: Tensor, rot: Tensor, ref: Tensor, context: Tensor) -> Tensor:
    r"""Attention over the rotated and reflected candidates (tangent space at 0), ``[E, d]``."""
    cands = torch.stack((givens_reflection(ref, h), givens_rotation(rot, h)), dim=-2)  # [E,2,d]
    logits = (cands * context.unsqueeze(-2)).sum(-1, keepdim=True) / math.sqrt(h.size(-1))
    return (torch.softmax(logits, dim=-2) * cands).sum(-2)


def atth_point(ball: PoincareBall, h: Tensor, rot: Tensor, ref: Tensor, context: Tensor,
               trans: Tensor) -> Tensor:
    r""":math:`\mathrm{proj}(\exp_0^c(\mathbf{q}) \oplus_c \exp_0^c(\mathbf{t}_r))` on the
    ball, ``[E, d]``."""
    q = ball.expmap0(atth_query(h, rot, ref, context))
    return ball.project(ball.mobius_add(q, ball.expmap0(trans)))


def atth_message(ball: PoincareBall, h_src: Tensor, rot: Tensor, ref: Tensor, context: Tensor,
                 trans: Tensor) -> Tensor:
    """Hyperbolic message, mapped back to the tangent space at 0 for aggregation."""
    return ball.logmap0(atth_point(ball, h_src, rot, ref, context, trans))
