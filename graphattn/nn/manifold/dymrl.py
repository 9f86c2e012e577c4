r"""DyMRL: Euclidean, hyperbolic and complex multispace attention for temporal-KG forecasting.

From "Dynamic Multispace Representation Learning for multimodal temporal knowledge graph
forecasting" (DyMRL; Zhao, Liu, Peng, Yang, Xu; WWW 2026). The mechanism follows the released
code as summarised in ``../shared/papers/GRAPH_PAPERS.md`` section 4, ported from DGL to
PyG-style tensors and :mod:`graphattn.ops`:

1. **Three geometric branches** per history snapshot :math:`G_\tau` (2 layers each,
   :class:`~graphattn.nn.manifold.RelationalLayer`): Euclidean translation messages over the
   output of a static entity–word RGCN, complex rotation+scaling messages, and hyperbolic AttH
   messages on a learnable-curvature Poincaré ball. The Euclidean and complex messages read
   the decoder's relation table through ``detach()`` (trained by the decoder only), as in
   the code.
2. **Dual fusion-evolution attention** with one shared ``TF``
   (:class:`~graphattn.nn.manifold.FusionAttention`, query :math:`\mathbf{E}_0`):

   .. math::
       \mathbf{S}_\tau = \mathrm{TF}([\mathbf{H}^E_\tau, \mathbf{H}^H_\tau, \mathbf{H}^C_\tau]),
       \quad
       \mathbf{M}_\tau = \mathrm{TF}([\mathrm{GRU}(\mathbf{S}_\tau, \mathbf{E}_0),
           \mathrm{GRU}(\mathbf{V}\mathbf{W}_v, \mathbf{E}_0),
           \mathrm{GRU}(\mathbf{L}\mathbf{W}_l, \mathbf{E}_0)]),
       \quad
       \mathbf{Z} = \mathrm{TF}([\mathbf{M}_{t-k}, \dots, \mathbf{M}_{t-1}]).

3. **AttH decoder** on the ball with per-entity / per-relation gates:

   .. math::
       \phi_{\mathbf{X}}(s, r, o) = -d_c\big(\mathrm{AttH}_r(\mathbf{x}_s),
           \exp_0^c(\mathbf{x}_o)\big)^2 + b_s + b_o, \qquad
       \mathrm{score} = w\,\phi_{\mathbf{Z}} + (1 - w)\,\phi_{\mathbf{E}_0}, \quad
       w = \max(\sigma(\delta_s), \sigma(\delta_r)),

   trained with cross-entropy over all entities (gates start at 0, so :math:`w = 1/2`).

Reconstructed (not fixed by the spec): the hyperbolic branch has its own per-layer AttH
relation tables (rotation, reflection, context, translation); every history snapshot's
branches start from the static tables (the released code's branches are not recurrent in
time); no activation between branch layers. When image/text features are absent the
modality fusion runs over the available streams only.

No parameter lives on the ball: entity and relation tables are tangent vectors at the
origin mapped by :math:`\exp_0^c` (as in the released code), so plain Adam is exact and
``geoopt.optim.RiemannianAdam`` (an option of the example's training loop) behaves the same;
the curvature is learned through geoopt's ``softplus`` parametrisation.

Shapes:
    - **history:** a list of ``k`` :class:`~graphattn.nn.manifold.RelationalGraph`
      snapshots over ``N`` entities (inverse relations included)
    - **queries:** ``s [Q]``, ``r [Q]`` (``r >= R`` for inverse / subject queries)
    - **output:** scores ``[Q, N]``
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from ..._checks import check_int
from ._checks import check_float_tensor, check_real
from .fusion import FusionAttention, ModalityGRU
from .messages import atth_point
from .poincare import PoincareBall
from .relational import RelationalGraph, RelationalLayer


def sqdist_to_all(ball: PoincareBall, x: Tensor, y: Tensor) -> Tensor:
    r""":math:`d_c(\mathbf{x}_q, \mathbf{y}_n)^2` for all pairs, ``[Q, N]``, from one matrix
    product (no ``[Q, N, d]`` tensor), through the closed form

    .. math::
        d_c(\mathbf{x}, \mathbf{y}) = \frac{1}{\sqrt{c}}\operatorname{arcosh}\Big(1 +
            \frac{2c\|\mathbf{x} - \mathbf{y}\|^2}{(1 - c\|\mathbf{x}\|^2)
            (1 - c\|\mathbf{y}\|^2)}\Big),

    which equals :math:`\frac{2}{\sqrt{c}}\operatorname{artanh}(\sqrt{c}\|{-\mathbf{x}}
    \oplus_c \mathbf{y}\|)` (tested against geoopt) with half the elementwise work.

    Args:
        ball: The ball.
        x: ``[Q, d]`` points.
        y: ``[N, d]`` points.

    Rows on or outside the boundary are projected first (:meth:`PoincareBall.inside`), as
    :meth:`PoincareBall.dist` does, so both read such points the same way; rows strictly inside
    (all the points DyMRL makes) are used as they are. The result equals
    ``ball.dist(x, y) ** 2`` wherever ``dist``'s ``artanh`` argument stays below its clamp
    :math:`1 - 10^{-5}` (distances below :math:`2\operatorname{artanh}(1 - 10^{-5})/\sqrt{c}
    \approx 12.2/\sqrt{c}`); beyond it ``dist`` saturates and this closed form does not.

    Raises:
        ValueError: ``x`` / ``y`` not 2-D of one width.
        TypeError: ``x`` / ``y`` not floating tensors of one dtype.
    """
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
    if x.dim() != 2 or y.dim() != 2 or x.size(1) != y.size(1):
        raise ValueError(f"x and y must be [Q, d] and [N, d] with one d, got {list(x.shape)} "
                         f"and {list(y.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must share a dtype, got {x.dtype} and {y.dtype}")
    x, y = ball.inside(x), ball.inside(y)
    x2 = x.square().sum(-1, keepdim=True)
    y2 = y.square().sum(-1).unsqueeze(0)
    return _sqdist_tail(x @ y.T, x2, y2, ball.c.to(x.dtype))


def _sqdist_tail(gram: Tensor, x2: Tensor, y2: Tensor, c: Tensor) -> Tensor:
    """The elementwise part of :func:`sqdist_to_all` from ``x @ y.T``, ``|x|^2`` ``[Q, 1]``
    and ``|y|^2`` ``[1, N]``."""
    diff2 = (x2 + y2 - 2 * gram).clamp_min(0)
    denom = ((1 - c * x2) * (1 - c * y2)).clamp_min(1e-15)
    t = (2 * c * diff2 / denom).clamp_min(1e-30)  # arg - 1 (clamped: finite gradient at x = y)
    return torch.log1p(t + (t * (t + 2)).sqrt()).square() / c  # arcosh(1 + t)^2 / c


def _phi_tail(gram: Tensor, x2: Tensor, y2: Tensor, c: Tensor, bias_s: Tensor,
              bias_o: Tensor) -> Tensor:
    return bias_s.unsqueeze(1) + bias_o.unsqueeze(0) - _sqdist_tail(gram, x2, y2, c)


def _score_tail(gram_z: Tensor, x2_z: Tensor, y2_z: Tensor, gram_e: Tensor, x2_e: Tensor,
                y2_e: Tensor, c: Tensor, bias_s: Tensor, bias_o: Tensor, w: Tensor) -> Tensor:
    r""":math:`w\,\phi_Z + (1 - w)\,\phi_{E_0}` from the parts of both distances."""
    return (w * _phi_tail(gram_z, x2_z, y2_z, c, bias_s, bias_o)
            + (1 - w) * _phi_tail(gram_e, x2_e, y2_e, c, bias_s, bias_o))


def _check_word_edges(word_edges: object, num_entities: int, num_words: object,
                      num_static_relations: object) -> None:
    """Named errors for an entity–word graph DyMRL would misread (a raw ``IndexError``, an
    error about ``'s'`` or ``'edge_index[0]'`` before)."""
    if not isinstance(word_edges, Tensor) or word_edges.dtype != torch.long:
        raise TypeError(f"word_edges must be an int64 tensor of (entity, static_relation, word) "
                        f"rows, got {getattr(word_edges, 'dtype', type(word_edges).__name__)}")
    if word_edges.dim() != 2 or word_edges.size(1) != 3:
        raise ValueError(f"word_edges must be [K, 3] (entity, static_relation, word), got "
                         f"{list(word_edges.shape)}")
    if not word_edges.numel():
        return
    num_words = check_int(num_words, "num_words", 1)
    num_static_relations = check_int(num_static_relations, "num_static_relations", 1)
    for col, (what, n) in enumerate((("entity", num_entities),
                                     ("static relation", num_static_relations),
                                     ("word", num_words))):
        ids = word_edges[:, col]
        if ids.min() < 0 or ids.max() >= n:
            raise ValueError(f"word_edges[:, {col}] holds {what} ids in [{int(ids.min())}, "
                             f"{int(ids.max())}], outside [0, {n})")


@functools.cache
def _fused(fn):
    """``fn`` through ``torch.compile`` (one fused loop forward and one backward instead of
    ~15 passes over ``[Q, N]``; compiled once per function, dynamic shapes)."""
    return torch.compile(fn, dynamic=True)


class DyMRL(nn.Module):
    """DyMRL (see the module docstring).

    Args:
        num_entities: ``N``.
        num_relations: ``R`` (inverse relations ``R..2R-1`` are added internally).
        dim: Rank ``d`` (20 in the paper; even).
        layers: Layers per branch (2).
        heads: Heads of ``TF`` (2).
        word_edges: ``[K, 3]`` ``(entity, static_relation, word)`` of the entity–word graph,
            or ``None`` (the Euclidean branch then starts from :math:`\\mathbf{E}_0`).
        num_words, num_static_relations: Sizes of that graph.
        modality_dims: e.g. ``{"image": 4096, "text": 768}`` for the static feature matrices
            passed to :meth:`forward`.
        dropout: Dropout of ``TF``.
        init_scale: Standard deviation of the embedding initialisation (1e-3), a finite
            number >= 0.
        curvature: Initial ball curvature ``c``, a finite number > 0.
        fused_decoder: Runs the decoder's elementwise ``[Q, N]`` part (distance, biases)
            through ``torch.compile`` (about 2x faster training on the CPU; the first call
            compiles for ~15 s and needs a C++ compiler). Same values as the eager path.

    Raises:
        ValueError: A size that is not an ``int`` in its range, an odd ``dim``, a
            ``curvature`` / ``init_scale`` that is NaN, infinite or out of range, or
            ``word_edges`` that are not ``[K, 3]`` or hold ids out of range (entities in
            ``[0, num_entities)``, static relations in ``[0, num_static_relations)``, words
            in ``[0, num_words)``).
        TypeError: ``word_edges`` that are not an int64 tensor.
    """

    def __init__(self, num_entities: int, num_relations: int, dim: int = 20, layers: int = 2,
                 heads: int = 2, word_edges: Tensor | None = None, num_words: int = 0,
                 num_static_relations: int = 0, modality_dims: dict[str, int] | None = None,
                 dropout: float = 0.0, init_scale: float = 1e-3, curvature: float = 1.0,
                 fused_decoder: bool = False) -> None:
        super().__init__()
        num_entities = check_int(num_entities, "num_entities", 1)
        num_relations = check_int(num_relations, "num_relations", 1)
        dim, layers = check_int(dim, "dim", 2), check_int(layers, "layers", 0)
        heads = check_int(heads, "heads", 1)
        if dim % 2:
            raise ValueError(f"dim must be even (Givens 2x2 blocks), got {dim}")
        curvature = check_real(curvature, "curvature")
        init_scale = check_real(init_scale, "init_scale", allow_zero=True)
        if word_edges is not None:
            _check_word_edges(word_edges, num_entities, num_words, num_static_relations)
        N, R2 = num_entities, 2 * num_relations
        self.num_entities, self.num_relations, self.dim = N, num_relations, dim
        self.fused_decoder = fused_decoder
        self.ball = PoincareBall(curvature, learnable=True)
        self.entity = nn.Parameter(init_scale * torch.randn(N, dim))
        self.rel = nn.Parameter(init_scale * torch.randn(R2, 2 * dim))
        self.rel_diag = nn.Parameter(2 * torch.rand(R2, 2 * dim) - 1)
        self.context = nn.Parameter(init_scale * torch.randn(R2, dim))
        self.bias_s = nn.Parameter(torch.zeros(N))
        self.bias_o = nn.Parameter(torch.zeros(N))
        self.gate_entity = nn.Parameter(torch.zeros(N))
        self.gate_relation = nn.Parameter(torch.zeros(R2))
        self.static_graph: RelationalGraph | None = None
        if word_edges is not None and word_edges.numel():
            self.words = nn.Parameter(init_scale * torch.randn(num_words, dim))
            self.static_rel = nn.Parameter(init_scale * torch.randn(2 * num_static_relations, dim))
            self.static_layers = nn.ModuleList(
                RelationalLayer("euclidean", N + num_words, dim) for _ in range(layers))
            self.static_graph = RelationalGraph.from_triples(
                word_edges[:, 0], word_edges[:, 1], word_edges[:, 2] + N, N + num_words,
                num_static_relations)
        self.euclidean = nn.ModuleList(RelationalLayer("euclidean", N, dim) for _ in range(layers))
        self.complex = nn.ModuleList(RelationalLayer("complex", N, dim, init_scale=init_scale)
                                     for _ in range(layers))
        self.hyperbolic = nn.ModuleList(RelationalLayer("hyperbolic", N, dim, self.ball)
                                        for _ in range(layers))
        self.hyp_diag = nn.ParameterList(nn.Parameter(2 * torch.rand(R2, 2 * dim) - 1)
                                         for _ in range(layers))
        self.hyp_context = nn.ParameterList(nn.Parameter(init_scale * torch.randn(R2, dim))
                                            for _ in range(layers))
        self.hyp_trans = nn.ParameterList(nn.Parameter(init_scale * torch.randn(R2, dim))
                                          for _ in range(layers))
        self.tf = FusionAttention(dim, heads, dropout)
        self.gru = ModalityGRU(dim, modality_dims)

    def static_entities(self) -> Tensor:
        """Entity rows of the static entity–word RGCN (or :math:`\\mathbf{E}_0`)."""
        if self.static_graph is None:
            return self.entity
        h = torch.cat([self.entity, self.words])
        for layer in self.static_layers:
            h = layer(h, self.static_graph, self.static_rel)
        return h[: self.num_entities]

    def branches(self, g: RelationalGraph, h_static: Tensor, e0: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """``(H^E, H^H, H^C)`` of a snapshot (or a union of snapshots), each like ``e0``."""
        d = self.dim
        rel_re, rel_im = self.rel[:, :d].detach(), self.rel[:, d:].detach()
        hE = h_static
        for layer in self.euclidean:
            hE = layer(hE, g, rel_re)
        hC = e0
        for layer in self.complex:
            hC = layer(hC, g, rel_re, rel_im)
        hH = e0
        for i, layer in enumerate(self.hyperbolic):
            diag = self.hyp_diag[i]
            hH = layer(hH, g, diag[:, :d], diag[:, d:], self.hyp_context[i], self.hyp_trans[i])
        return hE, hH, hC

    def encode(self, history: list[RelationalGraph],
               modalities: dict[str, Tensor] | None = None) -> Tensor:
        r""":math:`\mathbf{Z}` from the history snapshots (oldest first), ``[N, d]``.

        Exact shortcut: an entity without edges in snapshot :math:`\tau` keeps its input
        vectors through every branch layer, so its :math:`\mathbf{M}_\tau` row is the same
        for all such snapshots. That row is computed once for all entities; the ``k``
        snapshots' active entities run together on the compacted disjoint union of the
        snapshots and overwrite their rows.
        """
        if not history:
            raise ValueError("history must hold at least one snapshot")
        N = self.num_entities
        for g in history:
            if g.num_nodes != N:
                raise ValueError(f"snapshot has {g.num_nodes} nodes, the model {N} entities")
            if g.num_relations is not None and g.num_relations != self.num_relations:
                # its inverse ids r + R' would land on other relations of the model
                raise ValueError(f"snapshot was built for {g.num_relations} relations, the "
                                 f"model has {self.num_relations}")
        modalities = modalities or {}
        k = len(history)
        e0 = self.entity
        h_static = self.static_entities()
        modal = self.gru(e0, e0, modalities)[1:]  # GRU(V W, E0), GRU(L W, E0): static
        # rows of entities without edges: branches return their inputs unchanged
        s0 = self.tf(e0, torch.stack((h_static, e0, e0), 1))
        m0 = self.tf(e0, torch.stack([self.gru.gru(s0, e0), *modal], 1))
        m = m0.repeat(k, 1)
        g, nodes = RelationalGraph.union(history).compact()
        if nodes.numel():
            ent = g.node_entity
            e0a = e0[ent]
            s = self.tf(e0a, torch.stack(self.branches(g, h_static[ent], e0a), 1))
            ma = self.tf(e0a, torch.stack([self.gru.gru(s, e0a), *(x[ent] for x in modal)], 1))
            m = m.index_copy(0, nodes, ma)
        return self.tf(e0, m.view(k, N, -1).transpose(0, 1))  # Z, [N, d]

    def _phi_parts(self, emb: Tensor, s: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x @ y.T``, ``|x|^2`` and ``|y|^2`` of the AttH queries and the mapped entities."""
        d = self.dim
        lhs = atth_point(self.ball, emb[s], self.rel_diag[r, :d], self.rel_diag[r, d:],
                         self.context[r], self.rel[r, :d])
        rhs = self.ball.expmap0(emb)
        return lhs @ rhs.T, lhs.square().sum(-1, keepdim=True), rhs.square().sum(-1).unsqueeze(0)

    def _phi(self, emb: Tensor, s: Tensor, r: Tensor) -> Tensor:
        tail = _fused(_phi_tail) if self.fused_decoder else _phi_tail
        return tail(*self._phi_parts(emb, s, r), self.ball.c.to(emb.dtype), self.bias_s[s],
                    self.bias_o)

    def gate(self, s: Tensor, r: Tensor) -> Tensor:
        """:math:`w = \\max(\\sigma(\\delta_s), \\sigma(\\delta_r))`, ``[Q]``."""
        return torch.maximum(torch.sigmoid(self.gate_entity[s]),
                             torch.sigmoid(self.gate_relation[r]))

    def score(self, z: Tensor, s: Tensor, r: Tensor) -> Tensor:
        """Scores ``[Q, N]`` of every entity as the answer of ``(s, r, ?)``.

        Args:
            z: ``[N, d]`` entity table of :meth:`encode`, in the dtype of the model.
            s, r: ``[Q]`` subject and relation ids (int64 or int32).

        Raises:
            TypeError: ``z`` of another dtype than the model's parameters, ``s`` / ``r``
                not integer tensors.
            ValueError: ``z`` not ``[N, d]``, ``s`` / ``r`` of different shapes or with ids
                out of range.
        """
        check_float_tensor("z", z, self.entity.dtype)
        if z.shape != self.entity.shape:
            raise ValueError(f"z must be [num_entities, dim] = {list(self.entity.shape)} (the "
                             f"output of encode), got {list(z.shape)}")
        for name, t in (("s", s), ("r", r)):
            if not isinstance(t, Tensor) or t.dtype not in (torch.long, torch.int):
                raise TypeError(f"{name} must be an integer (int64 or int32) tensor of ids, got "
                                f"{getattr(t, 'dtype', type(t).__name__)}")
        if s.shape != r.shape or s.dim() != 1:
            raise ValueError(f"s and r must be equal-length 1-D tensors, got {tuple(s.shape)} "
                             f"and {tuple(r.shape)}")
        if s.numel() and (s.min() < 0 or s.max() >= self.num_entities):
            raise ValueError(f"subject ids must be in [0, {self.num_entities}), got "
                             f"[{int(s.min())}, {int(s.max())}]")
        if r.numel() and (r.min() < 0 or r.max() >= 2 * self.num_relations):
            raise ValueError(f"relation ids must be in [0, {2 * self.num_relations}) (inverses "
                             f"included), got [{int(r.min())}, {int(r.max())}]")
        w = self.gate(s, r).unsqueeze(1)
        if not self.fused_decoder:
            return w * self._phi(z, s, r) + (1 - w) * self._phi(self.entity, s, r)
        return _fused(_score_tail)(*self._phi_parts(z, s, r), *self._phi_parts(self.entity, s, r),
                                   self.ball.c.to(z.dtype), self.bias_s[s], self.bias_o, w)

    def forward(self, history: list[RelationalGraph], s: Tensor, r: Tensor,
                modalities: dict[str, Tensor] | None = None) -> Tensor:
        return self.score(self.encode(history, modalities), s, r)
