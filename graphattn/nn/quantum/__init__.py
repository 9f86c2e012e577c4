"""Q-AGNN: quantum-circuit graph attention (extra ``quantum``: qiskit, qiskit-aer,
qiskit-ibm-runtime). The torch simulator and the layers need only torch; the qiskit
backends import qiskit when they are built."""

from .circuit import CircuitSpec
from .execution import (
    CredentialsError,
    EstimatorExecutor,
    Executor,
    SamplerExecutor,
    TorchExecutor,
    depolarizing_noise_model,
    fake_backend,
    ibm_account,
    make_executor,
    quantum_expectations,
    transpile_for,
)
from .layer import QAGNN, MultiHopEncoder, QuantumGraphAttention
from .simulator import expectations, statevector

__all__ = [
    "QAGNN", "CircuitSpec", "CredentialsError", "EstimatorExecutor", "Executor",
    "MultiHopEncoder", "QuantumGraphAttention", "SamplerExecutor", "TorchExecutor",
    "depolarizing_noise_model", "expectations", "fake_backend", "ibm_account",
    "make_executor", "quantum_expectations", "statevector", "transpile_for",
]
