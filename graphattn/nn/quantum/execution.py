r"""Execution backends for the Q-AGNN node circuit, and parameter-shift gradients.

An :class:`Executor` evaluates the read-out :math:`\langle Z_q\rangle` of a batch of
*bindings* (rows ``[x_0..x_{n-1}, θ_0..θ_{P-1}]``, one per circuit instance) with **one
primitive job** per call. :func:`quantum_expectations` runs the exact torch simulator
(autograd) when no executor is given, and otherwise wraps the executor in an autograd
function whose backward pass uses the parameter-shift rule: every angle enters exactly one
``R_Y``/``R_Z`` gate, whose generator is a Pauli operator over two, so

.. math::
    \frac{\partial\langle Z_q\rangle}{\partial\vartheta}
    = \tfrac12\Big[\langle Z_q\rangle_{\vartheta+\pi/2} - \langle Z_q\rangle_{\vartheta-\pi/2}\Big]

exactly (up to the executor's own sampling noise). All shifted circuits of a backward pass
go into one job.

Cost:
    For ``B`` nodes, ``n`` qubits and ``P = 2 n (L+1)`` weights, a forward pass evaluates
    ``B`` circuits (one job); a backward pass evaluates ``2 B (n + P)`` circuits (one job;
    ``2 B n`` when only the encoding angles need gradients, ``2 B P`` when only the weights
    do). With a sampler each circuit costs ``shots`` executions. Example: ``n = 4``,
    ``L = 2`` (``P = 24``), ``B = 300`` nodes: 300 + 16,800 circuits per training step.

Backends (see :func:`make_executor`):

* ``"statevector"``: no executor; exact torch simulation with autograd (fast path).
* ``"estimator"``: qiskit's exact reference ``StatevectorEstimator``.
* ``"aer"``: qiskit-aer ``SamplerV2``, ideal, finite shots.
* ``"aer-noise"``: qiskit-aer with the calibrated noise model of a fake IBM device
  (gate errors, relaxation, read-out), circuits transpiled to that device's basis gates but
  not to its coupling map; or with any ``NoiseModel`` passed in
  (:func:`depolarizing_noise_model` builds the depolarising one of the Q-AGNN survey).
* ``"aer-depolarizing"``: qiskit-aer with :func:`depolarizing_noise_model` at its defaults.
* ``"fake-<device>"``: a fake IBM device of ``qiskit_ibm_runtime.fake_provider`` run in
  Aer (``AerSimulator.from_backend``): layout, routing and native gates of the device.
* ``"ibm-<device>"`` (or ``ibm_<device>``): IBM Quantum hardware through IBM Runtime
  ``SamplerV2`` / ``EstimatorV2``. Credentials come from qiskit's standard places
  (``QISKIT_IBM_TOKEN`` / ``QISKIT_IBM_INSTANCE`` / ``QISKIT_IBM_CHANNEL``, or an account
  saved with ``QiskitRuntimeService.save_account``); when none is found,
  :class:`CredentialsError` is raised before any network access.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..._checks import check_int
from .circuit import CircuitSpec
from .simulator import check_inputs
from .simulator import expectations as torch_expectations

__all__ = [
    "CredentialsError", "EstimatorExecutor", "Executor", "SamplerExecutor", "TorchExecutor",
    "depolarizing_noise_model", "fake_backend", "ibm_account", "make_executor",
    "quantum_expectations", "transpile_for",
]


class CredentialsError(RuntimeError):
    """No IBM Quantum account was found; nothing was sent over the network."""


class Executor:
    """Evaluates :math:`\\langle Z_q\\rangle` for a batch of bindings, one job per call.

    Attributes:
        spec: The circuit shape.
        name: Backend name as the CLI spells it.
        jobs: Number of primitive jobs submitted so far.
        circuit_evaluations: Number of circuit instances (bindings) evaluated so far.
        job_ids: Ids of the primitive jobs, where the primitive reports them.
    """

    name = "executor"

    def __init__(self, spec: CircuitSpec) -> None:
        self.spec = spec
        self.jobs = 0
        self.circuit_evaluations = 0
        self.job_ids: list[str] = []

    def run(self, bindings: np.ndarray) -> np.ndarray:
        """``bindings [K, n + P]`` float64 → ``[K, n]`` read-outs."""
        bindings = np.asarray(bindings, dtype=np.float64)
        if bindings.ndim != 2 or bindings.shape[1] != self.spec.num_parameters:
            raise ValueError(f"bindings must be [K, {self.spec.num_parameters}], got "
                             f"{bindings.shape}")
        self.jobs += 1
        self.circuit_evaluations += bindings.shape[0]
        if bindings.shape[0] == 0:
            return np.zeros((0, self.spec.num_qubits))
        return self._run(bindings)

    def _run(self, bindings: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What runs where, for logs and ``--dry-run``."""
        return {"backend": self.name}


class TorchExecutor(Executor):
    """The exact torch simulator behind the executor interface (no autograd): the reference
    for parameter-shift tests and a fast exact executor."""

    name = "torch"

    def _run(self, bindings: np.ndarray) -> np.ndarray:
        b = torch.from_numpy(bindings)
        n = self.spec.num_qubits
        with torch.no_grad():
            out = []
            # the shared-weight simulator takes one weight vector: group equal weight rows
            w_rows, inverse = np.unique(bindings[:, n:], axis=0, return_inverse=True)
            res = torch.empty(b.size(0), n, dtype=torch.float64)
            for g in range(w_rows.shape[0]):
                idx = torch.from_numpy(np.nonzero(inverse.reshape(-1) == g)[0])
                res[idx] = torch_expectations(self.spec, b[idx, :n], torch.from_numpy(w_rows[g]))
            out.append(res)
        return out[0].numpy()


class _QiskitExecutor(Executor):
    """Shared parts: a (possibly transpiled) circuit and the binding column order."""

    def __init__(self, spec: CircuitSpec, circuit, label: str) -> None:
        super().__init__(spec)
        self.circuit = circuit
        self.columns = np.asarray(spec.parameter_columns(circuit), dtype=np.int64)
        self.name = label

    def _record(self, job) -> None:
        try:
            self.job_ids.append(str(job.job_id()))
        except Exception:  # noqa: BLE001 - local primitives may not number their jobs
            pass

    def describe(self) -> dict[str, Any]:
        ops = self.circuit.count_ops()
        two_q = sum(1 for inst in self.circuit.data if inst.operation.num_qubits == 2)
        return {"backend": self.name, "depth": self.circuit.depth(),
                "two_qubit_gates": two_q, "ops": dict(ops),
                "num_qubits": self.circuit.num_qubits}


class EstimatorExecutor(_QiskitExecutor):
    """Any qiskit ``BaseEstimatorV2`` (``StatevectorEstimator``, IBM Runtime ``EstimatorV2``).

    Args:
        spec: Circuit shape.
        estimator: The estimator primitive.
        circuit: The circuit to run (defaults to ``spec.circuit()``; pass the ISA circuit for
            hardware). Observables are mapped onto its layout.
        precision: Target precision passed to ``run`` (``None``: the primitive's default).
        label: Name for logs.
    """

    def __init__(self, spec: CircuitSpec, estimator, circuit=None, precision: float | None = None,
                 label: str = "estimator") -> None:
        super().__init__(spec, circuit if circuit is not None else spec.circuit(), label)
        self.estimator = estimator
        self.precision = precision
        obs = spec.observables()
        layout = getattr(self.circuit, "layout", None)
        if layout is not None:
            obs = [o.apply_layout(layout) for o in obs]
        self.observables = [obs]  # shape [1, n]: broadcasts with bindings [K, 1]

    def _run(self, bindings: np.ndarray) -> np.ndarray:
        params = bindings[:, self.columns][:, None, :]  # [K, 1, P'] broadcasts with [1, n]
        kw = {} if self.precision is None else {"precision": self.precision}
        job = self.estimator.run([(self.circuit, self.observables, params)], **kw)
        self._record(job)
        res = job.result()
        return np.asarray(res[0].data.evs, dtype=np.float64).reshape(-1, self.spec.num_qubits)


class SamplerExecutor(_QiskitExecutor):
    r"""Any qiskit ``BaseSamplerV2`` (qiskit-aer, fake devices, IBM Runtime ``SamplerV2``):
    every qubit is measured ``shots`` times and :math:`\langle Z_q\rangle` is estimated as
    :math:`1 - 2\,\overline{b_q}`, with variance :math:`(1 - \langle Z_q\rangle^2)/\text{shots}`.

    Args:
        spec: Circuit shape.
        sampler: The sampler primitive.
        circuit: Measured circuit to run (defaults to ``spec.circuit(measure=True)``; pass
            the transpiled one for a device). Its ``meas`` register holds qubit ``q`` in bit
            ``q``.
        shots: Shots per circuit instance (an ``int`` >= 1, not a ``bool``).
        label: Name for logs.
    """

    def __init__(self, spec: CircuitSpec, sampler, circuit=None, shots: int = 1024,
                 label: str = "sampler") -> None:
        shots = check_int(shots, "shots", 1)
        super().__init__(spec, circuit if circuit is not None else spec.circuit(measure=True),
                         label)
        self.sampler = sampler
        self.shots = shots

    def _run(self, bindings: np.ndarray) -> np.ndarray:
        params = bindings[:, self.columns]
        job = self.sampler.run([(self.circuit, params)], shots=self.shots)
        self._record(job)
        res = job.result()
        bits = res[0].data.meas.to_bool_array(order="little")  # [K, shots, n]
        return 1.0 - 2.0 * bits.mean(axis=-2, dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "shots": self.shots}


def depolarizing_noise_model(p1: float = 1e-3, p2: float = 1e-2, readout: float = 2e-2):
    """A qiskit-aer ``NoiseModel``: depolarising error ``p1`` on one-qubit gates, ``p2`` on
    CNOTs and a symmetric read-out flip probability ``readout``."""
    from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error

    for name, p in (("p1", p1), ("p2", p2), ("readout", readout)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    nm = NoiseModel(basis_gates=["ry", "rz", "cx"])
    nm.add_all_qubit_quantum_error(depolarizing_error(p1, 1), ["ry", "rz"])
    nm.add_all_qubit_quantum_error(depolarizing_error(p2, 2), ["cx"])
    nm.add_all_qubit_readout_error(ReadoutError([[1 - readout, readout], [readout, 1 - readout]]))
    return nm


@lru_cache(maxsize=1)
def _fake_devices() -> dict[str, Any]:
    import warnings

    from qiskit_ibm_runtime.fake_provider import FakeProviderForBackendV2

    with warnings.catch_warnings():  # fake_nighthawk warns that its numbers are not typical
        warnings.simplefilter("ignore", UserWarning)
        return {b.name.removeprefix("fake_"): b for b in FakeProviderForBackendV2().backends()}


def fake_backend(name: str):
    """A fake IBM device by name: ``"manila"``, ``"fake_manila"``, ``"fake-manila"`` or the
    real device's name (``"ibm_brisbane"`` → ``FakeBrisbane``). Offline."""
    key = name.lower().replace("-", "_")
    for prefix in ("fake_", "ibm_", "ibmq_"):
        key = key.removeprefix(prefix)
    devices = _fake_devices()
    if key not in devices:
        raise ValueError(f"unknown fake IBM device {name!r}; available: {sorted(devices)}")
    return devices[key]


def ibm_account(name: str | None = None, filename: str | None = None):
    """The IBM Quantum account qiskit would use, read from the environment or the saved
    account file **without network access**.

    Raises:
        CredentialsError: When no account is configured.
    """
    from qiskit_ibm_runtime.accounts import AccountManager
    from qiskit_ibm_runtime.accounts.exceptions import AccountNotFoundError

    try:
        return AccountManager.get(filename=filename, name=name)
    except AccountNotFoundError as err:
        raise CredentialsError(
            "no IBM Quantum credentials found: set QISKIT_IBM_TOKEN (and QISKIT_IBM_INSTANCE, "
            "optionally QISKIT_IBM_CHANNEL) or save an account once with "
            "qiskit_ibm_runtime.QiskitRuntimeService.save_account(token=..., instance=...). "
            f"Nothing was sent. ({err})") from None


def transpile_for(circuit, backend, seed: int = 0):
    """``circuit`` transpiled to ``backend``'s target (layout, routing, native gates) with
    qiskit's preset pass manager at optimisation level 1."""
    from qiskit.transpiler import generate_preset_pass_manager

    pm = generate_preset_pass_manager(optimization_level=1, backend=backend, seed_transpiler=seed)
    return pm.run(circuit)


def make_executor(name: str, spec: CircuitSpec, shots: int = 1024, seed: int | None = 0,
                  noise_device: str = "manila", noise_model=None, primitive: str = "sampler",
                  account: str | None = None, account_file: str | None = None
                  ) -> Executor | None:
    """Builds the executor that the CLI name ``name`` stands for (see the module docstring).

    Args:
        name: ``statevector`` (returns ``None``: exact torch path), ``estimator``, ``aer``,
            ``aer-noise``, ``aer-depolarizing``, ``fake-<device>`` or ``ibm-<device>``.
        spec: Circuit shape.
        shots: Shots per circuit instance for samplers (an ``int`` >= 1, not a ``bool``;
            checked for every backend).
        seed: Simulator seed for Aer (``None``: random).
        noise_device: Fake device whose calibrated noise ``aer-noise`` uses.
        noise_model: An explicit qiskit-aer ``NoiseModel`` for ``aer-noise`` (overrides
            ``noise_device``).
        primitive: ``"sampler"`` or ``"estimator"`` for IBM hardware.
        account, account_file: Saved-account name / file for IBM hardware.
    """
    shots = check_int(shots, "shots", 1)
    if name == "statevector":
        return None
    if name == "estimator":
        from qiskit.primitives import StatevectorEstimator

        return EstimatorExecutor(spec, StatevectorEstimator(seed=seed), label=name)
    if name == "aer-depolarizing":
        noise_model = noise_model if noise_model is not None else depolarizing_noise_model()
        ex = make_executor("aer-noise", spec, shots=shots, seed=seed, noise_model=noise_model)
        ex.name = name
        return ex
    if name in ("aer", "aer-noise"):
        from qiskit import transpile
        from qiskit_aer.primitives import SamplerV2

        options: dict[str, Any] = {}
        circuit = spec.circuit(measure=True)
        if name == "aer-noise":
            if noise_model is None:
                from qiskit_aer.noise import NoiseModel

                device = fake_backend(noise_device)
                noise_model = NoiseModel.from_backend(device)
                name = f"aer-noise({device.name})"
            options["backend_options"] = {"noise_model": noise_model}
            circuit = transpile(circuit, basis_gates=noise_model.basis_gates,
                                optimization_level=1, seed_transpiler=0)
        sampler = SamplerV2(default_shots=shots, seed=seed, options=options)
        return SamplerExecutor(spec, sampler, circuit, shots=shots, label=name)
    if name.startswith("fake-") or name.startswith("fake_"):
        from qiskit_aer import AerSimulator
        from qiskit_aer.primitives import SamplerV2

        device = fake_backend(name)
        if device.num_qubits < spec.num_qubits:
            raise ValueError(f"{device.name} has {device.num_qubits} qubits; the circuit needs "
                             f"{spec.num_qubits}")
        sim = AerSimulator.from_backend(device, seed_simulator=seed)
        circuit = transpile_for(spec.circuit(measure=True), device)
        sampler = SamplerV2.from_backend(sim, default_shots=shots, seed=seed)
        return SamplerExecutor(spec, sampler, circuit, shots=shots, label=name)
    if name.startswith("ibm-") or name.startswith("ibm_"):
        device_name = "ibm_" + name[4:]
        acct = ibm_account(account, account_file)  # raises before any network access
        from qiskit_ibm_runtime import EstimatorV2, QiskitRuntimeService, SamplerV2

        service = QiskitRuntimeService(channel=acct.channel, token=acct.token, url=acct.url,
                                       instance=acct.instance)
        backend = service.backend(device_name)
        if primitive == "sampler":
            circuit = transpile_for(spec.circuit(measure=True), backend)
            return SamplerExecutor(spec, SamplerV2(mode=backend), circuit, shots=shots,
                                   label=device_name)
        if primitive == "estimator":
            circuit = transpile_for(spec.circuit(), backend)
            return EstimatorExecutor(spec, EstimatorV2(mode=backend), circuit,
                                     precision=1 / math.sqrt(shots), label=device_name)
        raise ValueError(f"primitive must be 'sampler' or 'estimator', got {primitive!r}")
    raise ValueError(f"unknown quantum backend {name!r}; use statevector, estimator, aer, "
                     "aer-noise, aer-depolarizing, fake-<device> or ibm-<device>")


class _ParameterShift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, angles: Tensor, weights: Tensor, executor: Executor) -> Tensor:
        B = angles.size(0)
        binding = torch.cat([angles.detach(), weights.detach().expand(B, -1)], 1)
        out = executor.run(binding.double().cpu().numpy())
        ctx.save_for_backward(binding)
        ctx.executor = executor
        return torch.as_tensor(out, dtype=angles.dtype, device=angles.device)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (binding,) = ctx.saved_tensors
        executor: Executor = ctx.executor
        n = executor.spec.num_qubits
        B, D = binding.shape
        cols = []
        if ctx.needs_input_grad[0]:
            cols += list(range(n))
        if ctx.needs_input_grad[1]:
            cols += list(range(n, D))
        if not cols:
            return None, None, None
        base = binding.double().cpu()
        J = len(cols)
        shifted = base.expand(2, J, B, D).clone()
        idx = torch.tensor(cols)
        ar = torch.arange(J)
        shifted[0, ar, :, idx] += math.pi / 2
        shifted[1, ar, :, idx] -= math.pi / 2
        vals = torch.from_numpy(executor.run(shifted.reshape(-1, D).numpy())).view(2, J, B, n)
        jac = 0.5 * (vals[0] - vals[1])  # d out[b, :] / d binding[b, cols[j]]
        g = (jac * grad.double().cpu().unsqueeze(0)).sum(-1)  # [J, B]
        grad_angles = grad_weights = None
        j = 0
        if ctx.needs_input_grad[0]:
            grad_angles = g[:n].T.to(grad.dtype).to(grad.device)
            j = n
        if ctx.needs_input_grad[1]:
            grad_weights = g[j:].sum(1).to(grad.dtype).to(grad.device)
        return grad_angles, grad_weights, None


def quantum_expectations(spec: CircuitSpec, angles: Tensor, weights: Tensor,
                         executor: Executor | None = None) -> Tensor:
    r"""Read-outs :math:`e_{b,q} = \langle Z_q\rangle` of the node circuits.

    Args:
        spec: Circuit shape.
        angles: ``[B, n]`` encoding angles, float32 or float64.
        weights: ``[2 n (L+1)]`` ansatz angles, the dtype of ``angles``.
        executor: ``None`` for the exact torch simulator (autograd); otherwise every forward
            is one job on the executor and gradients use the parameter-shift rule.

    Returns:
        ``[B, n]`` in the dtype of ``angles``.

    Raises:
        ValueError: ``angles`` or ``weights`` of another shape; an executor built for
            another circuit.
        TypeError: ``angles`` / ``weights`` that are not of one floating dtype (both paths
            check the same way; an executor would otherwise cast its read-outs to an
            integer or bool dtype); an ``executor`` that is not an :class:`Executor`.
    """
    if executor is None:
        return torch_expectations(spec, angles, weights)
    if not isinstance(executor, Executor):
        raise TypeError(f"'executor' must be a graphattn Executor (make_executor) or None, got "
                        f"{type(executor).__name__}")
    if executor.spec != spec:
        raise ValueError(f"'executor' runs the circuit {executor.spec}, not this layer's {spec}: "
                         f"build it with make_executor(name, layer.spec)")
    check_inputs(spec, angles, weights)  # the simulator's checks: both paths take the same
    return _ParameterShift.apply(angles, weights, executor)
