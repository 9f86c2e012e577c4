r"""The Q-AGNN node circuit: angle encoding followed by an EfficientSU2 ansatz.

For ``n`` qubits and ``L`` repetitions (the reconstructed layer of Q-AGNN, "Quantum-Enhanced
Attentive GNN for intrusion detection"; ``../shared/papers/GRAPH_PAPERS.md`` section 5.2):

.. math::
    |\psi(\boldsymbol\phi, \boldsymbol\theta)\rangle =
    U_{\mathrm{SU2}}(\boldsymbol\theta)\,\bigotimes_{q=0}^{n-1} R_Y(\phi_q)\,|0\rangle^{\otimes n},
    \qquad e_q = \langle\psi|Z_q|\psi\rangle \in [-1, 1],

where :math:`U_{\mathrm{SU2}}` repeats ``L`` times [an ``R_Y`` layer, an ``R_Z`` layer, the
linear CNOT chain ``CX(0,1) CX(1,2) ... CX(n-2,n-1)``] and ends with a final ``R_Y``/``R_Z``
layer, i.e. qiskit's ``efficient_su2(n, ["ry", "rz"], "linear", reps=L)``. It holds
``2 n (L + 1)`` weights, ordered as qiskit orders them (layer by layer, first the ``R_Y``
angles of qubits ``0..n-1``, then the ``R_Z`` angles).

Qubit ``q`` is bit ``q`` of a basis-state index (qiskit's little-endian convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from ..._checks import check_int

if TYPE_CHECKING:  # pragma: no cover
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import SparsePauliOp

Gate = tuple[str, int, int, int]
"""``("ry"|"rz", qubit, -1, angle column)`` or ``("cx", control, target, -1)``. Angle column
``q < n`` is the encoding angle of qubit ``q``; column ``n + p`` is ansatz weight ``p``."""

MAX_QUBITS = 16


@dataclass(frozen=True)
class CircuitSpec:
    """Shape of the Q-AGNN node circuit.

    Args:
        num_qubits: ``n``, also the number of encoding angles and of read-out values
            (an ``int`` from 1 to 16, not a ``bool``; the torch simulator holds ``2**n``
            amplitudes per node).
        reps: ``L``, the number of entangling repetitions of the ansatz (an ``int`` >= 0).

    Raises:
        ValueError: If either is not an ``int`` in its range (``True`` included).
    """

    num_qubits: int
    reps: int = 2

    def __post_init__(self) -> None:
        # stored as Python ints (a NumPy int passes the check)
        object.__setattr__(self, "num_qubits",
                           check_int(self.num_qubits, "num_qubits", 1, MAX_QUBITS))
        object.__setattr__(self, "reps", check_int(self.reps, "reps", 0))

    @property
    def num_weights(self) -> int:
        """``2 n (L + 1)`` ansatz angles."""
        return 2 * self.num_qubits * (self.reps + 1)

    @property
    def num_parameters(self) -> int:
        """``n`` encoding angles plus the ansatz weights (the columns of a binding)."""
        return self.num_qubits + self.num_weights

    @cached_property
    def gates(self) -> tuple[Gate, ...]:
        """The gate sequence in execution order (what the torch simulator applies)."""
        n = self.num_qubits
        seq: list[Gate] = [("ry", q, -1, q) for q in range(n)]
        col = n
        for layer in range(self.reps + 1):
            for kind in ("ry", "rz"):
                seq.extend((kind, q, -1, col + q) for q in range(n))
                col += n
            if layer < self.reps:
                seq.extend(("cx", q, q + 1, -1) for q in range(n - 1))
        return tuple(seq)

    def circuit(self, measure: bool = False) -> QuantumCircuit:
        """The circuit as a qiskit ``QuantumCircuit`` with parameters ``x[q]`` (encoding) and
        ``θ[p]`` (ansatz); with ``measure=True`` every qubit is measured into register
        ``meas`` (for samplers)."""
        from qiskit import QuantumCircuit
        from qiskit.circuit import ParameterVector
        from qiskit.circuit.library import efficient_su2

        n = self.num_qubits
        x = ParameterVector("x", n)
        qc = QuantumCircuit(n, name="qagnn_node")
        for q in range(n):
            qc.ry(x[q], q)
        ansatz = efficient_su2(n, su2_gates=["ry", "rz"], entanglement="linear",
                               reps=self.reps, parameter_prefix="θ")
        qc.compose(ansatz, inplace=True)
        if measure:
            qc.measure_all()
        return qc

    def parameter_columns(self, circuit: QuantumCircuit) -> list[int]:
        """For each parameter of ``circuit`` in qiskit's order, its column in a binding
        ``[x_0..x_{n-1}, θ_0..θ_{P-1}]``."""
        cols = []
        for p in circuit.parameters:
            name, idx = p.vector.name, p.index
            cols.append(idx if name == "x" else self.num_qubits + idx)
        return cols

    def observables(self) -> list[SparsePauliOp]:
        """``Z_q`` on each qubit ``q`` as ``SparsePauliOp`` (qiskit's little-endian order)."""
        from qiskit.quantum_info import SparsePauliOp

        n = self.num_qubits
        return [SparsePauliOp.from_sparse_list([("Z", [q], 1.0)], num_qubits=n)
                for q in range(n)]
