r"""Per-edge equivariant products, evaluated block by block.

e3nn's :class:`~e3nn.o3.TensorProduct` and :class:`~e3nn.o3.Linear` are exact and general,
but their generated code cuts the inputs into irreps blocks with slices; the backward of
each slice allocates a zero tensor as wide as the whole input and copies one block into it.
On per-edge tensors (``[E, dim]``, ``E`` ~ 10^4 per molecular batch) those fills and copies
were a fifth of an MLANet training step on the CPU. The modules below compute the same
functions with the same parameters and normalisation (they read the paths, path weights and
weight layout from the e3nn module they replace; the tests compare them to it) without
slices: the tensor product cuts its inputs with one :func:`torch.split`, whose backward is a
single concatenation, and folds every constant into one product with the (small) weight
tensor; the linear map is one dense matrix product; the gate nonlinearity is one split, e3nn's
own activations and one broadcast product per gated block. On the CPU with graphattn's extension
built, the tensor product runs as one native kernel (``csrc/cpu/tensor_product.cpp``: one pass
per edge forward and backward, from a table of the paths and their coupling tensors), about
2.4x faster forward and 1.6x forward + backward than the torch form at MLANet's QM9 size.
Its derivatives of every order run on the kernels too (the gradients are autograd Functions
over the backward kernel), so conservative forces :math:`F = -\partial E/\partial r` trained
on (the harmonics carry a gradient, the backward runs under ``create_graph``) take it as well.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...ops._reference import scale_channels

__all__ = ["DepthwiseTensorProduct", "IrrepsGate", "IrrepsLinear", "depthwise_tensor_product"]


def _e3nn():
    """``(e3nn.o3, e3nn.nn)``, or an error naming the extra that installs e3nn."""
    try:
        from e3nn import nn as enn
        from e3nn import o3
    except ModuleNotFoundError as e:  # pragma: no cover - e3nn is in the equivariant extra
        raise ModuleNotFoundError("graphattn.nn.equivariant needs e3nn: "
                                  "pip install 'graphattn[equivariant]'") from e
    return o3, enn


def depthwise_tensor_product(irreps_in, irreps_sh, keep) -> tuple:
    r"""Channel-wise (``"uvu"``) e3nn tensor product of node features with edge harmonics, as
    in NequIP: every input channel meets every harmonic, outputs kept when their irrep is in
    ``keep``; one weight per path and channel (predicted per edge from the radial basis).
    Channel mixing happens afterwards in a linear map, so the per-edge cost is
    ``O(channels)``, not ``O(channels^2)`` as with a fully connected product.

    Returns ``(tp, irreps_mid)`` with ``tp`` an :class:`e3nn.o3.TensorProduct`
    (:class:`DepthwiseTensorProduct` evaluates the same map faster)."""
    o3, _ = _e3nn()
    irreps_in, irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
    keep = {ir for _, ir in o3.Irreps(keep)}
    mid, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in keep:
                    instructions.append((i, j, len(mid), "uvu", True))
                    mid.append((mul, ir_out))
    mid = o3.Irreps(mid)
    mid_sorted, perm, _ = mid.sort()
    instructions = [(a, b, perm[c], mode, w) for a, b, c, mode, w in instructions]
    tp = o3.TensorProduct(irreps_in, irreps_sh, mid_sorted, instructions,
                          shared_weights=False, internal_weights=False)
    return tp, mid_sorted


def _native_tp(*ts: Tensor) -> bool:
    """The native kernel applies: the backend is native, the tensors on the CPU, float32/64,
    all of one dtype."""
    from ... import ops

    x = ts[0]
    return (x.device.type == "cpu" and all(t.dtype == x.dtype for t in ts)
            and ops._use_native(x) and all(t.dim() == 2 for t in ts))


class DepthwiseTensorProduct(nn.Module):
    r"""The channel-wise tensor product of :func:`depthwise_tensor_product` with per-edge
    weights:

    .. math::
        \mathrm{TP}_w(x, Y)^{(p)}_{u,k} = c_p\, w_{p,u} \sum_{i,j} C^{l_1 l_2 l_3}_{ijk}\,
            x^{(l_1)}_{u,i}\, Y^{(l_2)}_j

    for every path :math:`p = (l_1, l_2 \to l_3)` with Wigner 3j symbols :math:`C` and
    e3nn's path normalisation :math:`c_p`; outputs are e3nn's (same irreps, order and weight
    layout, tested to 1e-12). Paths with :math:`l_1 = 0`, :math:`l_2 = 0` or :math:`l_3 = 0`
    are a broadcast product or a dot product; the others contract :math:`Y` with :math:`C`
    first (``[E, 2l_1+1, 2l_3+1]``) and then the channels.

    Shapes:
        - **x**: :math:`(E, \dim \text{irreps\_in})`, **y**: :math:`(E, \dim
          \text{irreps\_sh})`, **weight**: :math:`(E, \text{weight\_numel})`;
        - output :math:`(E, \dim \text{irreps\_out})`.
    """

    def __init__(self, irreps_in, irreps_sh, keep) -> None:
        super().__init__()
        o3, _ = _e3nn()
        ref, self.irreps_out = depthwise_tensor_product(irreps_in, irreps_sh, keep)
        self.irreps_in, self.irreps_sh = ref.irreps_in1, ref.irreps_in2
        self.weight_numel = int(ref.weight_numel)
        self.in_sizes = [mul * ir.dim for mul, ir in self.irreps_in]
        self.sh_sizes = [mul * ir.dim for mul, ir in self.irreps_sh]
        if any(mul != 1 for mul, _ in self.irreps_sh):
            raise ValueError(f"'irreps_sh' must have multiplicity 1 per degree, got "
                             f"{self.irreps_sh}")
        paths, const, slot_path = [], [], {}
        for p, ins in enumerate(ref.instructions):
            (mul, ir1), (_, ir2), (_, ir3) = (self.irreps_in[ins.i_in1],
                                              self.irreps_sh[ins.i_in2],
                                              self.irreps_out[ins.i_out])
            if ir1.l == 0:
                kind, c = "x_scalar", 1.0 / math.sqrt(ir3.dim)
            elif ir2.l == 0:
                kind, c = "y_scalar", 1.0 / math.sqrt(ir3.dim)
            elif ir3.l == 0:
                kind, c = "dot", 1.0 / math.sqrt(ir1.dim)
            else:
                kind, c = "w3j", 1.0
                C = o3.wigner_3j(ir1.l, ir2.l, ir3.l).to(torch.get_default_dtype())
                # [d2, d1 * d3]: y @ C gives the per-edge [d1, d3] operator
                self.register_buffer(f"w3j_{p}", C.permute(1, 0, 2).reshape(ir2.dim, -1),
                                     persistent=False)
            paths.append((ins.i_in1, ins.i_in2, kind, mul, ir1.dim, ir3.dim))
            const += [float(ins.path_weight) * c] * mul
            slot_path[ins.i_out] = p
        if sorted(slot_path) != list(range(len(self.irreps_out))):
            raise ValueError("every output irrep must come from exactly one path")
        self.paths = tuple(paths)
        self.slot_path = tuple(slot_path[i] for i in range(len(self.irreps_out)))
        self.w_sizes = [mul for *_, mul, _, _ in paths]
        self.register_buffer("path_const", torch.tensor(const), persistent=False)
        self.dim_out = int(self.irreps_out.dim)
        # the exact widths of x, y and weight that _check asks of every call
        self._widths = (sum(self.in_sizes), sum(self.sh_sizes), sum(self.w_sizes))
        meta, coupling = self._path_table(o3)
        self.register_buffer("meta", meta, persistent=False)
        self.register_buffer("coupling", coupling, persistent=False)
        # the kernel holds a path's [d1, d3] coupling on the stack: irreps up to l = 7
        self.native_ok = bool((meta[:, 6] <= 15).all() and (meta[:, 8] <= 15).all())

    def _path_table(self, o3) -> tuple[Tensor, Tensor]:
        """The paths in output order for the native kernel: ``meta [P, 9]`` rows ``(x offset,
        y offset, out offset, weight offset, coupling offset, mul, d1, d2, d3)`` and the coupling
        tensors :math:`C_p [d_1, d_2, d_3]` flattened one after the other (Wigner 3j symbols,
        or the identity patterns of the scalar, broadcast and dot-product paths; the constants
        stay in ``path_const``)."""
        x_off = [sum(self.in_sizes[:i]) for i in range(len(self.in_sizes))]
        y_off = [sum(self.sh_sizes[:i]) for i in range(len(self.sh_sizes))]
        w_off = [sum(self.w_sizes[:p]) for p in range(len(self.w_sizes))]
        rows, blocks, o, c = [], [], 0, 0
        for p in self.slot_path:
            i1, i2, kind, mul, d1, d3 = self.paths[p]
            d2 = self.sh_sizes[i2]
            if kind == "w3j":
                l1, l2, l3 = (d1 - 1) // 2, (d2 - 1) // 2, (d3 - 1) // 2
                C = o3.wigner_3j(l1, l2, l3).double()
            else:  # x_scalar: d1 = 1, d2 = d3; y_scalar: d2 = 1, d1 = d3; dot: d3 = 1, d1 = d2
                C = torch.zeros(d1, d2, d3, dtype=torch.float64)
                for a in range(max(d1, d2, d3)):
                    C[min(a, d1 - 1), min(a, d2 - 1), min(a, d3 - 1)] = 1.0
            rows.append([x_off[i1], y_off[i2], o, w_off[p], c, mul, d1, d2, d3])
            blocks.append(C.reshape(-1))
            o, c = o + mul * d3, c + C.numel()
        return torch.tensor(rows, dtype=torch.long), torch.cat(blocks)

    def forward(self, x: Tensor, y: Tensor, weight: Tensor, prescaled: bool = False) -> Tensor:
        """``prescaled``: ``weight`` already carries the path constants (``path_const``, one
        per weight column; e.g. folded into the radial network's last layer)."""
        self._check(x, y, weight)
        # one pass per edge (csrc/cpu/tensor_product.cpp), same function; its derivatives
        # of every order are the kernels' too (conservative forces -dE/dr trained on: the
        # harmonics carry a gradient and the backward runs under create_graph)
        if self.native_ok and _native_tp(x, y, weight):
            w = weight if prescaled else weight * self.path_const.to(weight.dtype)
            from ...ops import _native

            return _native.call("depthwise_tp", x, y, w, self.coupling, self.meta,
                                self.dim_out)
        return self.forward_torch(x, y, weight, prescaled)

    def _check(self, x: Tensor, y: Tensor, weight: Tensor) -> None:
        """``x [E, dim in]``, ``y [E, dim sh]``, ``weight [E, weight_numel]``: the same rows, the
        exact widths (no broadcast weight row, no extra columns), on both paths."""
        E = x.shape[0] if isinstance(x, Tensor) and x.dim() == 2 else "E"
        for t, name, width in zip((x, y, weight), ("x", "y", "weight"), self._widths):
            if not isinstance(t, Tensor) or t.dim() != 2 or tuple(t.shape) != (E, width):
                got = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"'{name}' must have shape [E={E}, {width}], got {got}")

    def forward_torch(self, x: Tensor, y: Tensor, weight: Tensor,
                      prescaled: bool = False) -> Tensor:
        """The same map in torch operations (reference path, GPU, and the oracle of the
        native kernel in the tests)."""
        E = x.shape[0]
        xs = torch.split(x, self.in_sizes, -1)
        ys = torch.split(y, self.sh_sizes, -1)
        ws = torch.split(weight if prescaled else weight * self.path_const.to(weight.dtype),
                         self.w_sizes, -1)
        outs = []
        for p in self.slot_path:
            i1, i2, kind, mul, d1, d3 = self.paths[p]
            a, b, w = xs[i1], ys[i2], ws[p]
            if kind == "x_scalar":  # w x_u Y_k
                r = (a * w).unsqueeze(-1) * b.unsqueeze(1)
            elif kind == "y_scalar":  # w Y x_{u,i}
                r = a.view(E, mul, d1) * (w * b).unsqueeze(-1)
            elif kind == "dot":  # l_3 = 0: w <x_u, Y>
                r = (a.view(E, mul, d1) * b.unsqueeze(1)).sum(-1) * w
            else:
                op = (b @ getattr(self, f"w3j_{p}").to(b.dtype)).view(E, 1, d1, d3)
                r = (a.view(E, mul, d1, 1) * op).sum(2) * w.unsqueeze(-1)
            outs.append(r.reshape(E, mul * d3))
        return torch.cat(outs, -1) if len(outs) > 1 else outs[0]


class IrrepsLinear(nn.Module):
    r"""An :class:`e3nn.o3.Linear` without biases (same ``weight`` parameter, initialisation,
    path normalisation and output) evaluated as one matrix product:
    :math:`y^{(l)}_{w,i} = \sum_{u} c\, W^{(l)}_{uw} x^{(l)}_{u,i}` is :math:`y = x M` with
    :math:`M = \bigoplus_{\text{paths}} c\, W^{(l)} \otimes I_{2l+1}` assembled from the
    weights at each call (``[dim_in, dim_out]``, a few thousand numbers). On per-edge inputs this
    is one dense GEMM instead of a split, a strided product per path and a concatenation.

    Shapes:
        - **x**: :math:`(*, \dim \text{irreps\_in})`; output :math:`(*, \dim \text{irreps\_out})`.
    """

    def __init__(self, irreps_in, irreps_out) -> None:
        super().__init__()
        o3, _ = _e3nn()
        ref = o3.Linear(irreps_in, irreps_out)
        self.irreps_in, self.irreps_out = ref.irreps_in, ref.irreps_out
        self.weight = ref.weight
        starts_in = [s.start for s in self.irreps_in.slices()]
        starts_out = [s.start for s in self.irreps_out.slices()]
        paths, offset = [], 0
        for ins in ref.instructions:
            m_in, m_out = ins.path_shape
            d = self.irreps_in[ins.i_in].ir.dim
            paths.append((offset, m_in, m_out, d, starts_in[ins.i_in], starts_out[ins.i_out],
                          float(ins.path_weight)))
            offset += m_in * m_out
        self.paths = tuple(paths)
        self.dim_in, self.dim_out = int(self.irreps_in.dim), int(self.irreps_out.dim)
        # M[i0 + u d + r, o0 + w d + r] = c W[u, w] for every path (W (x) I_d), 0 elsewhere
        index = torch.zeros(self.dim_in, self.dim_out, dtype=torch.long)
        scale = torch.zeros(self.dim_in, self.dim_out, dtype=torch.float64)
        for off, m_in, m_out, d, i0, o0, c in self.paths:
            w = torch.arange(off, off + m_in * m_out).view(m_in, m_out)
            for r in range(d):
                index[i0 + r: i0 + m_in * d: d, o0 + r: o0 + m_out * d: d] = w
                scale[i0 + r: i0 + m_in * d: d, o0 + r: o0 + m_out * d: d] = c
        self.register_buffer("entry_index", index.view(-1), persistent=False)
        self.register_buffer("entry_scale", scale.view(-1).to(torch.get_default_dtype()),
                             persistent=False)

    def matrix(self) -> Tensor:
        r"""The ``[dim_in, dim_out]`` matrix :math:`M` (block-sparse; equivariant by
        construction: each block is :math:`W \otimes I_{2l+1}` between equal irreps), gathered
        from the weights in one indexing: entry :math:`(a, b)` is ``weight[index[a, b]]``
        times the path constant, or 0 outside every block (``index`` and the constants are
        fixed at construction)."""
        if self.weight.numel() == 0:
            return self.weight.new_zeros(self.dim_in, self.dim_out)
        M = self.weight.index_select(0, self.entry_index) * self.entry_scale.to(self.weight.dtype)
        return M.view(self.dim_in, self.dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.matrix().to(x.dtype)


class IrrepsGate(nn.Module):
    r"""e3nn's :class:`~e3nn.nn.Gate` (same arguments, activations and output) evaluated with
    one :func:`torch.split` and one broadcast product per gated irreps block:

    .. math::
        \Big(\bigoplus_i \phi_i(s_i)\Big) \oplus \Big(\bigoplus_j \phi_j(g_j)\, v_j\Big)

    e3nn cuts the input with a generated extraction and multiplies gates and gated irreps with
    an :class:`~e3nn.o3.ElementwiseTensorProduct`; on node features that costs several times
    the arithmetic in Python and in zero-filled slice gradients. The activations are e3nn's own
    (normalised to unit second moment), taken from the e3nn module built with the same
    arguments, so the function is e3nn's (tested to 1e-12). When e3nn reorders the input (the
    concatenation ``scalars + gates + gated`` is not sorted), the e3nn module itself runs.

    Shapes:
        - input :math:`(*, \dim \text{irreps\_in})`; output :math:`(*, \dim \text{irreps\_out})`.
    """

    def __init__(self, irreps_scalars, act_scalars, irreps_gates, act_gates,
                 irreps_gated) -> None:
        super().__init__()
        o3, enn = _e3nn()
        self.ref = enn.Gate(irreps_scalars, act_scalars, irreps_gates, act_gates, irreps_gated)
        self.irreps_in, self.irreps_out = self.ref.irreps_in, self.ref.irreps_out
        scalars, gates, gated = (o3.Irreps(i) for i in (irreps_scalars, irreps_gates,
                                                         irreps_gated))
        concat = scalars + gates + gated
        self.in_order = bool(concat.sort().p == tuple(range(len(concat))))
        self.sizes = [int(scalars.dim), int(gates.dim), int(gated.dim)]
        self.gated_blocks = tuple((int(mul), int(ir.dim)) for mul, ir in gated)

    def forward(self, x: Tensor) -> Tensor:
        if not self.in_order:
            return self.ref(x)
        s, g, v = torch.split(x, self.sizes, -1)
        s = self.ref.act_scalars(s)
        if not self.sizes[1]:
            return s
        lead = x.shape[:-1]
        v = scale_channels(v.reshape(-1, self.sizes[2]), self.ref.act_gates(g).reshape(
            -1, self.sizes[1]), self.gated_blocks).view(*lead, self.sizes[2])
        return torch.cat([s, v], -1)
