r"""Batched statevector simulation of :class:`CircuitSpec` circuits in torch.

All nodes are simulated at once: the state is a ``[B, 2**n]`` complex tensor, single-qubit
rotations are ``2x2`` contractions over the qubit's axis (per node for the encoding angles,
shared for the ansatz weights), a CNOT is a fixed permutation of amplitudes, and the
read-out is :math:`\langle Z_q\rangle = \sum_k |\psi_k|^2 (1 - 2\,\mathrm{bit}_q(k))`.
Every step is a differentiable torch op, so autograd gives exact gradients for the encoding
angles and the weights (no parameter shift needed).

Cost: ``O(B 2^n (n + |gates|))`` time and ``O(B 2^n)`` memory per gate kept for backward.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .circuit import CircuitSpec


@lru_cache(maxsize=64)
def _cx_perm(n: int, control: int, target: int) -> Tensor:
    k = torch.arange(2**n)
    return torch.where((k >> control) & 1 == 1, k ^ (1 << target), k)


@lru_cache(maxsize=16)
def _z_signs(n: int) -> Tensor:
    k = torch.arange(2**n).unsqueeze(1)
    return 1.0 - 2.0 * ((k >> torch.arange(n)) & 1).double()  # [2^n, n]


def _rotate(state: Tensor, n: int, q: int, kind: str, angle: Tensor) -> Tensor:
    """Applies ``R_Y(angle)`` or ``R_Z(angle)`` on qubit ``q``; ``angle`` is ``[B]`` or 0-d."""
    B = state.size(0)
    s = state.view(B, 2 ** (n - 1 - q), 2, 2**q)
    half = (angle / 2).reshape(-1, 1, 1)
    s0, s1 = s[:, :, 0], s[:, :, 1]
    if kind == "ry":
        c, si = torch.cos(half), torch.sin(half)
        out = torch.stack((c * s0 - si * s1, si * s0 + c * s1), dim=2)
    else:
        ph = torch.polar(torch.ones_like(half), half)  # e^{i a/2}
        out = torch.stack((s0 * ph.conj(), s1 * ph), dim=2)
    return out.reshape(B, 2**n)


def _describe(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_inputs(spec: CircuitSpec, angles: object, weights: object) -> None:
    """The checks every circuit evaluation makes (torch simulator and executors alike):
    ``angles [B, n]`` and ``weights [2 n (L+1)]`` tensors of one floating dtype.

    Raises:
        ValueError: A shape other than these (or not a tensor).
        TypeError: Integer / bool angles or weights, or two different dtypes.
    """
    n = spec.num_qubits
    if not isinstance(angles, Tensor) or angles.dim() != 2 or angles.size(1) != n:
        raise ValueError(f"angles must be a [B, {n}] tensor, got {_describe(angles)}")
    if not isinstance(weights, Tensor) or weights.shape != (spec.num_weights,):
        raise ValueError(f"weights must be a [{spec.num_weights}] tensor, got {_describe(weights)}")
    if not angles.is_floating_point() or angles.dtype != weights.dtype:
        raise TypeError(f"angles and weights must share a floating dtype, got {angles.dtype} "
                        f"and {weights.dtype}")


def statevector(spec: CircuitSpec, angles: Tensor, weights: Tensor) -> Tensor:
    """Final states of the node circuits.

    Args:
        spec: The circuit shape.
        angles: Encoding angles :math:`\\phi`, ``[B, n]`` float32/float64.
        weights: Ansatz angles :math:`\\theta`, ``[2 n (L+1)]``, same dtype.

    Returns:
        ``[B, 2**n]`` complex amplitudes (complex128 for float64 input).

    Raises:
        ValueError, TypeError: See :func:`check_inputs`.
    """
    check_inputs(spec, angles, weights)
    n = spec.num_qubits
    cdtype = torch.complex128 if angles.dtype == torch.float64 else torch.complex64
    B = angles.size(0)
    state = torch.zeros(B, 2**n, dtype=cdtype, device=angles.device)
    state[:, 0] = 1.0
    for kind, a, b, col in spec.gates:
        if kind == "cx":
            state = state[:, _cx_perm(n, a, b).to(state.device)]
        else:
            angle = angles[:, col] if col < n else weights[col - n]
            state = _rotate(state, n, a, kind, angle)
    return state


def expectations(spec: CircuitSpec, angles: Tensor, weights: Tensor) -> Tensor:
    r"""Exact read-out :math:`e_q = \langle Z_q\rangle`, ``[B, n]`` in the input dtype,
    differentiable in ``angles`` and ``weights``."""
    state = statevector(spec, angles, weights)
    probs = state.real.square() + state.imag.square()
    signs = _z_signs(spec.num_qubits).to(device=probs.device, dtype=probs.dtype)
    return probs @ signs
