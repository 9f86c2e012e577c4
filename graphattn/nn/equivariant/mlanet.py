r"""MLANet: dual-path dynamic attention for machine-learning interatomic potentials.

From *MLANet* (Bi, Zhao, Sun, Hu, Lu, Cheng; arXiv 2026). The abstract fixes a
"dual-path dynamic attention mechanism for geometry-aware message passing" and a
"multi-perspective pooling strategy"; secondary digests add a chemical path on species
features, a geometric path from a tensor product of queries and spherical-harmonic keys,
gated messages, sum/mean/max pooling, direct forces and a total-charge embedding. **The
layer below is reconstructed** (no code, methods text unavailable;
``shared/papers/GRAPH_PAPERS.md`` section 2.2). Per head :math:`h`:

.. math::
    a^{chem}_{ij} &= \frac{\langle W_q s_i, W_k s_j\rangle_h}{\tau_h\sqrt{d}},\qquad
    a^{geo}_{ij} = \frac{\big\langle W^{q} x_i,\
        W^{k}\,\mathrm{TP}_{w(R(r_{ij}))}(x_j, Y(\hat r_{ij}))\big\rangle_h}{\tau_h\sqrt{d}}

    p_{ij} &= \operatorname{softmax}_{j\in\mathcal{N}(i)}\big(a^{chem}_{ij} + a^{geo}_{ij}
        + \log f_c(r_{ij})\big),\qquad \alpha_{ij} = f_c(r_{ij})\, p_{ij}

and the gated tensor-product update of
:class:`~graphattn.nn.equivariant.conv.EquivariantAttentionConv`. The cutoff enters twice:
inside the softmax, so that a neighbour leaving the sphere stops taking weight from the others
continuously, and as a factor, so that a node's last neighbour fades out instead of keeping
weight 1 up to :math:`r_c`; the energy is then continuous (and smooth) as an atom crosses
:math:`r_c`. The softmax itself (:math:`p`) sums to 1 over each neighbourhood.

With ``degree_scaling=True`` (ours, not from the paper) the weights are also multiplied by the
smooth in-degree :math:`D_i = \sum_{j\in\mathcal{N}(i)} f_c(r_{ij})`,
:math:`\alpha_{ij} = D_i\, f_c(r_{ij})\, p_{ij}`, as in cardinality-preserving attention
(Zhang and Xie, 2020): softmax weights sum to one whatever the number of neighbours, so the
update is a weighted mean and cannot count them, while energies grow with coordination. The
envelope keeps :math:`D_i`, hence the energy, continuous at :math:`r_c`. On QM9 (4,000
molecules, 20 epochs, two seeds) it took MLANet's test MAE from 164 / 163 to 114 / 145 meV.

Readout (multi-perspective pooling), with :math:`P = [\sum_i s_i, \operatorname{mean}_i s_i,
\max_i s_i]`: :math:`E = \mathrm{MLP}(P) + w^\top P + \sum_i E^{ref}_{Z_i}`, with direct forces
:math:`F_i = W_{1o} x_i` or, with ``conservative=True``, :math:`F = -\partial E/\partial r`.
The linear shortcut :math:`w^\top P` (``readout_shortcut``, ours, not from the paper) keeps the
readout trainable when every SiLU unit of the MLP dies: the sum branch is ~20x larger than the
others on molecules, and at QM9's learning rate the MLP's units all went negative within 20
Adam steps for one seed in three, leaving a constant prediction (4,000 molecules, 10 epochs:
858 meV, against 196-210 for the other seeds; with the shortcut 199-212 for all three). The
sum branch makes the readout size-dependent but the mean and max branches do not, so the
energy is not size-extensive (asserted in the tests, as the paper's pooling implies).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ... import ops
from ...index import EdgeGraph
from .conv import (
    EdgeGeometry,
    EquivariantAttentionConv,
    _e3nn,
    check_batch,
    check_edges_within,
    geometry_graph,
    irreps_blocks,
    scalar_irreps_first,
)
from .products import IrrepsLinear

__all__ = ["MLANet", "MLANetInteraction", "default_irreps"]


def default_irreps(channels: int = 32, l_channels: int = 8, lmax: int = 2) -> str:
    """``"{channels}x0e + {l_channels}x1o + {l_channels}x2e + ..."`` up to ``lmax``."""
    parts = [f"{channels}x0e"] + [f"{l_channels}x{l}{'o' if l % 2 else 'e'}"
                                  for l in range(1, lmax + 1)]
    return "+".join(parts)


class MLANetInteraction(nn.Module):
    r"""One MLANet interaction (reconstructed; module docstring).

    Args:
        irreps_node: node irreps, sorted, scalars first.
        lmax (int): spherical-harmonic degree of edges and keys.
        num_basis (int): radial basis size.
        heads (int): attention heads.
        key_dim (int): per-head width of the chemical query/key.
        chemical (bool), geometric (bool): switch the two attention paths (both off: the
            cutoff-weighted mean convolution).
        gated_messages (bool): the message gate.
        degree_scaling (bool): multiply the weights by the smooth in-degree :math:`D_i`
            (module docstring; ours, not from the paper). (default: :obj:`False`)

    Irreps:
        in/out ``irreps_node``; geometric queries and keys ``heads x (4x0e + 2x1o + 1x2e)``
        (up to ``lmax``); :math:`\langle\cdot,\cdot\rangle_h` sums the invariant inner
        products of the irreps (the ``0e`` paths of their tensor product) of head :math:`h`.

    Shapes:
        - **x**: :math:`(N, \dim x)`, **edge_index**: :math:`(2, E)`, **geom**: the dict of
          :class:`~graphattn.nn.equivariant.conv.EdgeGeometry`;
        - output :math:`(N, \dim x)`, and with ``return_attention=True`` also
          :math:`p` :math:`(E, H)` (softmax, sums to 1 per node).
    """

    def __init__(self, irreps_node, lmax: int = 2, num_basis: int = 8, heads: int = 4,
                 key_dim: int = 8, chemical: bool = True, geometric: bool = True,
                 gated_messages: bool = True, radial_hidden: int = 32,
                 degree_scaling: bool = False) -> None:
        super().__init__()
        o3, enn = _e3nn()
        self.degree_scaling = bool(degree_scaling)
        self.irreps_node, C = scalar_irreps_first(irreps_node)
        # plain values for the forward's checks: no e3nn Irreps reaches torch.compile's guards
        self.node_dim, self.irreps_str = int(self.irreps_node.dim), str(self.irreps_node)
        self.heads, self.key_dim = int(heads), int(key_dim)
        self.chemical, self.geometric = chemical, geometric
        self.temperature = nn.Parameter(torch.zeros(heads))  # tau_h = softplus(.) + 0.1
        if chemical:
            self.wq = nn.Linear(C, heads * key_dim)
            self.wk = nn.Linear(C, heads * key_dim)
        self.conv = EquivariantAttentionConv(self.irreps_node, lmax, num_basis, heads,
                                             radial_hidden, gated_messages)
        if geometric:
            key = o3.Irreps([(heads * max(4 >> l, 1), (l, (-1) ** l)) for l in range(lmax + 1)])
            self.irreps_key = key
            # copy u of every key irrep belongs to head u mod H; key_order lists the key
            # components head by head (every head owns key dim / H of them: the muls are
            # multiples of H)
            owner = torch.tensor([u % self.heads for mul, d in irreps_blocks(key)
                                  for u in range(mul) for _ in range(d)])
            self.register_buffer("key_order", torch.argsort(owner, stable=True),
                                 persistent=False)
            self.q_geo = IrrepsLinear(self.irreps_node, key)
            self.k_geo = IrrepsLinear(self.conv.irreps_mid, key)  # per edge
            self.key_scale = 1.0 / math.sqrt(key.dim / heads)

    def tau(self) -> Tensor:
        return torch.nn.functional.softplus(self.temperature) + 0.1

    def logits(self, x: Tensor, edge_index: Tensor, geom: dict,
               edge_features: Tensor | None = None, graph: EdgeGraph | None = None) -> Tensor:
        """:math:`a^{chem} + a^{geo}`, ``[E, H]`` (``graph``: the edges' CSR; when not given,
        the one in ``geom`` or one built from ``edge_index``, :func:`geometry_graph`)."""
        src = edge_index[0]
        a = x.new_zeros(edge_index.shape[1], self.heads)
        if (self.chemical or self.geometric) and graph is None:
            graph = geometry_graph(geom, edge_index, x.shape[0])
        if self.chemical:
            keys = self.wk(x[:, : self.conv.n_scalars]).view(-1, self.heads, self.key_dim)
            a = a + ops.edge_pair_dot(self.chem_queries(x), keys, graph)
        if self.geometric:
            if edge_features is None:
                edge_features = self.conv.edge_features(x, src, geom["radial"], geom["sh"])
            # <W^q x_i, W^k m_ij>_h = <Q_ih, m_ij>: the key map folded into the queries, once
            # per node, instead of applied to every edge's features
            a = a + ops.edge_query_dot(self.geo_queries(x), edge_features, graph) * (
                self.key_scale / self.tau())
        return a

    def chem_queries(self, x: Tensor) -> Tensor:
        r"""The chemical queries :math:`W_q s_i / (\tau_h \sqrt d)`, ``[N, H, d]``: against the
        keys :math:`W_k s_j` (``[N, H, d]``) along every edge, one
        :func:`graphattn.ops.edge_pair_dot` gives :math:`a^{chem}` without gathering either
        to the edges."""
        q = self.wq(x[:, : self.conv.n_scalars]).view(-1, self.heads, self.key_dim)
        return q * (1.0 / (self.tau() * math.sqrt(self.key_dim))).to(q.dtype).unsqueeze(-1)

    def geo_queries(self, x: Tensor) -> Tensor:
        r""":math:`Q_{i,h} = M\,(W^q x_i \odot \mathbb{1}_h)`, ``[N, H, dim irreps_mid]``: the
        geometric query of head :math:`h` (its key irreps' components; copy ``u`` of each key
        irrep belongs to head ``u mod H``) mapped back through the key map's matrix :math:`M`
        (:meth:`IrrepsLinear.matrix`), so that
        :math:`\langle Q_{i,h}, m_{ij}\rangle = \sum_{c \in h} (W^q x_i)_c\,(M^\top m_{ij})_c`,
        the invariant per-head inner product of the module docstring. Each head takes only its
        own key components: :math:`Q_{\cdot,h} = (x\,W^q_{\cdot,h})\,M_{\cdot,h}^\top`, one
        batched product over the heads (a quarter of the arithmetic of a dense
        ``[key dim, H dim mid]`` map at four heads, and no three-operand contraction, whose
        path search costs as much as its arithmetic at these sizes)."""
        H, order = self.heads, self.key_order
        M = self.k_geo.matrix().to(x.dtype).index_select(1, order)  # [dim mid, key] by head
        Wq = self.q_geo.matrix().to(x.dtype).index_select(1, order)  # [dim x, key] by head
        kh = Wq.shape[1] // H  # explicit widths: -1 is ambiguous without nodes
        q = (x @ Wq).view(x.shape[0], H, kh).transpose(0, 1)  # [H, N, key / H]
        Mh = M.view(M.shape[0], H, kh).permute(1, 2, 0)  # [H, key / H, dim mid]
        return torch.bmm(q, Mh).transpose(0, 1).contiguous()  # [N, H, dim mid]

    def forward(self, x: Tensor, edge_index: Tensor, geom: dict,
                return_attention: bool = False):
        dim = self.node_dim
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != dim:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"'x' must have shape [N, {dim}] (irreps {self.irreps_str}), "
                             f"got {got}")
        if x.dtype != self.temperature.dtype:
            raise TypeError(f"'x' must have the layer's dtype {self.temperature.dtype}, got "
                            f"{x.dtype} (convert the layer with .to({x.dtype}) or x)")
        N = x.shape[0]
        graph = geometry_graph(geom, edge_index, N)
        src, dst = edge_index[0], edge_index[1]
        feats = self.conv.edge_features(x, src, geom["radial"], geom["sh"])
        logf = torch.log(geom["fc"].clamp_min(1e-30)).unsqueeze(-1)
        p = ops.segment_softmax(self.logits(x, edge_index, geom, feats, graph) + logf, graph)
        alpha = p * geom["fc"].unsqueeze(-1)
        if self.degree_scaling:  # times the smooth in-degree D_i = sum_j f_c(r_ij)
            alpha = alpha * smooth_degree(geom, graph).index_select(0, dst)
        out = self.conv(x, alpha, graph, src, dst, geom["radial"], geom["sh"], feats)
        return (out, p) if return_attention else out

    def extra_repr(self) -> str:
        return (f"{self.irreps_node}, heads={self.heads}, chemical={self.chemical}, "
                f"geometric={self.geometric}")


def smooth_degree(geom: dict, graph: EdgeGraph) -> Tensor:
    r"""The smooth in-degree :math:`D_i = \sum_j f_c(r_{ij})`, ``[N, 1]``, over the edges of an
    :class:`~graphattn.nn.equivariant.conv.EdgeGeometry` dict: computed once and kept in it
    (``geom["degree"]``), so that the interactions of one model share it."""
    deg = geom.get("degree")
    if deg is None or deg.shape[0] != graph.num_dst:
        deg = geom["degree"] = ops.aggregate(geom["fc"].unsqueeze(-1), graph, "sum")
    return deg


def _ptr(batch: Tensor, num_graphs: int) -> Tensor:
    counts = torch.bincount(batch, minlength=num_graphs)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class MLANet(nn.Module):
    r"""MLANet potential: species (+ total charge) embedding, ``num_layers``
    :class:`MLANetInteraction` blocks, multi-perspective pooling energy head and a direct or
    conservative force head (reconstructed; module docstring).

    Args:
        num_species (int): embedding size for atomic numbers (max Z + 1).
        channels (int), l_channels (int), lmax (int): node irreps
            (:func:`default_irreps`).
        num_layers (int), heads (int), num_basis (int), cutoff (float): as named.
        conservative (bool): forces :math:`-\partial E/\partial r` instead of the direct head.
        charge (bool): embed the total charge of each structure (``charge`` in forward).
        atom_refs (Tensor, optional): ``[num_species]`` per-element energies added to
            :math:`E` (fit them with least squares on the training set).
        readout_shortcut (bool): add the linear term :math:`w^\top P` beside the pooling MLP
            (module docstring). (default: :obj:`True`)
        chemical, geometric (bool): attention paths of every interaction.
        degree_scaling (bool): cardinality-preserving weights in every interaction (module
            docstring; ours, not from the paper). (default: :obj:`False`)

    Shapes:
        - **z**: :math:`(N)` int64, **pos**: :math:`(N, 3)`, **batch**: :math:`(N)` sorted,
          **edge_index**: :math:`(2, E)` (default: radius graph at ``cutoff``; a given one keeps
          each edge inside one structure of ``batch``),
          **shift**: :math:`(E, 3)` periodic image offsets, **charge**: :math:`(B)`;
        - output: dict with ``energy`` :math:`(B)` and ``forces`` :math:`(N, 3)`.

    Irreps:
        hidden ``default_irreps(channels, l_channels, lmax)``; energy ``0e``; forces ``1o``.
    """

    def __init__(self, num_species: int = 10, channels: int = 32, l_channels: int = 8,
                 lmax: int = 2, num_layers: int = 3, heads: int = 4, num_basis: int = 8,
                 cutoff: float = 5.0, conservative: bool = False, charge: bool = False,
                 max_charge: int = 4, atom_refs: Tensor | None = None, chemical: bool = True,
                 geometric: bool = True, readout_shortcut: bool = True,
                 degree_scaling: bool = False) -> None:
        super().__init__()
        o3, enn = _e3nn()
        self.irreps = o3.Irreps(default_irreps(channels, l_channels, lmax))
        self.irreps_dim = int(self.irreps.dim)
        self.channels, self.cutoff = channels, float(cutoff)
        self.conservative, self.max_charge = conservative, max_charge
        self.embed = nn.Embedding(num_species, channels)
        self.charge_embed = nn.Embedding(2 * max_charge + 1, channels) if charge else None
        self.geometry = EdgeGeometry(cutoff, lmax, num_basis)
        self.layers = nn.ModuleList(
            MLANetInteraction(self.irreps, lmax, num_basis, heads, chemical=chemical,
                              geometric=geometric, degree_scaling=degree_scaling)
            for _ in range(num_layers))
        self.head = nn.Sequential(nn.Linear(3 * channels, channels), nn.SiLU(),
                                  nn.Linear(channels, 1))
        self.head_shortcut = nn.Linear(3 * channels, 1) if readout_shortcut else None
        self.force_head = IrrepsLinear(self.irreps, "1x1o")
        refs = torch.zeros(num_species) if atom_refs is None else atom_refs.detach().clone()
        if refs.shape != (num_species,):
            raise ValueError(f"'atom_refs' must have shape [{num_species}], got {list(refs.shape)}")
        self.register_buffer("atom_refs", refs.to(torch.get_default_dtype()))

    def _check(self, z: Tensor, pos: Tensor, batch: Tensor | None) -> Tensor:
        if z.dim() != 1 or z.dtype != torch.long:
            raise TypeError(f"'z' must be a 1-D int64 tensor of atomic numbers, got "
                            f"{z.dtype} {list(z.shape)}")
        if pos.shape != (z.shape[0], 3) or not pos.is_floating_point():
            raise ValueError(f"'pos' must be a float [N={z.shape[0]}, 3] tensor, got "
                             f"{pos.dtype} {list(pos.shape)}")
        if pos.dtype != self.atom_refs.dtype:
            raise TypeError(f"'pos' must have the model's dtype {self.atom_refs.dtype}, got "
                            f"{pos.dtype} (convert the model with .to({pos.dtype}) or pos)")
        if z.numel() and (int(z.min()) < 0 or int(z.max()) >= self.embed.num_embeddings):
            raise ValueError(f"'z' must be in [0, {self.embed.num_embeddings}), got "
                             f"[{int(z.min())}, {int(z.max())}]")
        return check_batch(batch, z.shape[0], z.device)

    @staticmethod
    def pool(h: Tensor, ptr: Tensor) -> Tensor:
        """Multi-perspective pooling ``[sum, mean, max]`` of per-atom scalars ``h [N, C]`` over
        the structures of ``ptr [B + 1]`` (through :mod:`graphattn.ops`): ``[B, 3C]``."""
        return torch.cat([ops.segment_sum(h, ptr), ops.segment_mean(h, ptr),
                          ops.segment_max(h, ptr)[0]], -1)

    def readout(self, pooled: Tensor) -> Tensor:
        r""":math:`\mathrm{MLP}(P) + w^\top P`, ``[B, 3C] -> [B]`` (without the atom
        references)."""
        e = self.head(pooled)
        if self.head_shortcut is not None:
            e = e + self.head_shortcut(pooled)
        return e.squeeze(-1)

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor | None = None,
                edge_index: Tensor | None = None, shift: Tensor | None = None,
                charge: Tensor | None = None) -> dict[str, Tensor]:
        batch = self._check(z, pos, batch)
        B = int(batch.max()) + 1 if batch.numel() else 0
        if self.conservative and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)  # a new leaf: the caller's pos is left as is
        given = edge_index is not None  # a caller's edges: checked below
        if edge_index is None:
            from ...geometry import radius_graph

            edge_index = radius_graph(pos.detach(), self.cutoff, batch=batch)
        geom = self.geometry(pos, edge_index, shift)
        if given:  # the graph's build checked the indices
            check_edges_within(geom["graph"], batch)
        s = self.embed(z)
        if self.charge_embed is not None:
            q = torch.zeros(B, dtype=torch.long, device=z.device) if charge is None else charge
            if q.shape != (B,):
                raise ValueError(f"'charge' must have shape [B={B}], got {list(q.shape)}")
            if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
                raise TypeError(f"'charge' must be an integer tensor (total charges), got "
                                f"{q.dtype}")
            if bool(((q < -self.max_charge) | (q > self.max_charge)).any()):
                raise ValueError(f"'charge' must lie in [-{self.max_charge}, {self.max_charge}]")
            s = s + self.charge_embed(q.long() + self.max_charge)[batch]
        x = torch.cat([s, s.new_zeros(s.shape[0], self.irreps_dim - self.channels)], -1)
        for layer in self.layers:
            x = layer(x, edge_index, geom)
        h = x[:, : self.channels]
        ptr = _ptr(batch, B)
        energy = self.readout(self.pool(h, ptr)) + ops.segment_sum(
            self.atom_refs[z].unsqueeze(-1).to(h.dtype), ptr).squeeze(-1)
        if self.conservative:
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training)
            forces = -grad
        else:
            forces = self.force_head(x)
        return {"energy": energy, "forces": forces}
