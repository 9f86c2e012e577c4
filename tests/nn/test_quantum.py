"""Q-AGNN faithfulness: circuit, simulator, parameter shift, backends, layer properties."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
from torch_geometric.nn import TAGConv
from torch_geometric.utils import add_remaining_self_loops

from graphattn.nn.quantum import (
    QAGNN,
    CircuitSpec,
    CredentialsError,
    MultiHopEncoder,
    QuantumGraphAttention,
    TorchExecutor,
    depolarizing_noise_model,
    expectations,
    fake_backend,
    ibm_account,
    make_executor,
    quantum_expectations,
)

pytest.importorskip("qiskit")


def _rand(spec: CircuitSpec, B: int, seed: int = 0, grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(B, spec.num_qubits, dtype=torch.float64, generator=g) * math.pi
    w = (torch.rand(spec.num_weights, dtype=torch.float64, generator=g) - 0.5) * 4
    return a.requires_grad_(grad), w.requires_grad_(grad)


@pytest.mark.parametrize("n,reps", [(1, 0), (2, 1), (3, 2), (5, 3)])
def test_simulator_matches_qiskit_statevector(n: int, reps: int) -> None:
    from qiskit.quantum_info import Statevector

    spec = CircuitSpec(n, reps)
    a, w = _rand(spec, 4, seed=n)
    ours = expectations(spec, a, w)
    qc = spec.circuit()
    cols = spec.parameter_columns(qc)
    for b in range(4):
        values = torch.cat([a[b], w]).numpy()[cols]
        sv = Statevector(qc.assign_parameters(values))
        ref = [sv.expectation_value(o).real for o in spec.observables()]
        np.testing.assert_allclose(ours[b].numpy(), ref, atol=1e-12)


def test_circuit_is_qiskit_efficient_su2_with_linear_chain() -> None:
    spec = CircuitSpec(4, 2)
    qc = spec.circuit()
    ops = qc.count_ops()
    assert ops["cx"] == 3 * 2 and ops["ry"] == 4 + 4 * 3 and ops["rz"] == 4 * 3
    assert qc.num_parameters == spec.num_parameters == 4 + 24
    cx = [tuple(qc.find_bit(q).index for q in i.qubits)
          for i in qc.data if i.operation.name == "cx"]
    assert cx == [(0, 1), (1, 2), (2, 3)] * 2


def test_closed_form_one_qubit() -> None:
    spec = CircuitSpec(1, 0)  # RY(phi) RY(theta) RZ(lambda)
    phi = torch.linspace(-3, 3, 13, dtype=torch.float64).unsqueeze(1)
    for theta, lam in [(0.3, 0.0), (-1.1, 0.7), (2.0, -2.5)]:
        w = torch.tensor([theta, lam], dtype=torch.float64)
        out = expectations(spec, phi, w)[:, 0]
        torch.testing.assert_close(out, torch.cos(phi[:, 0] + theta), atol=1e-14, rtol=0)


def test_bounded_and_periodic() -> None:
    spec = CircuitSpec(4, 2)
    a, w = _rand(spec, 64, seed=3)
    a = a * 10 - 5
    out = expectations(spec, a, w)
    assert out.abs().max() <= 1 + 1e-12
    for col in range(spec.num_parameters):
        a2, w2 = a.clone(), w.clone()
        if col < 4:
            a2[:, col] += 2 * math.pi
        else:
            w2[col - 4] += 2 * math.pi
        torch.testing.assert_close(expectations(spec, a2, w2), out, atol=1e-12, rtol=0)


def test_simulator_gradcheck() -> None:
    spec = CircuitSpec(3, 1)
    a, w = _rand(spec, 2, seed=5, grad=True)
    assert torch.autograd.gradcheck(lambda a, w: expectations(spec, a, w), (a, w))


@pytest.mark.parametrize("which", ["torch", "estimator"])
def test_parameter_shift_equals_autograd(which: str) -> None:
    spec = CircuitSpec(3, 2)
    a, w = _rand(spec, 5, seed=7, grad=True)
    exact = expectations(spec, a, w)
    gout = torch.randn_like(exact)
    ga, gw = torch.autograd.grad(exact, (a, w), gout)
    ex = TorchExecutor(spec) if which == "torch" else make_executor("estimator", spec)
    out = quantum_expectations(spec, a, w, ex)
    torch.testing.assert_close(out, exact, atol=1e-12, rtol=0)
    ga2, gw2 = torch.autograd.grad(out, (a, w), gout)
    torch.testing.assert_close(ga2, ga, atol=1e-10, rtol=0)
    torch.testing.assert_close(gw2, gw, atol=1e-10, rtol=0)
    # one job forward, one job backward, 2 (n + P) shifted circuits per node
    assert ex.jobs == 2
    assert ex.circuit_evaluations == 5 + 2 * 5 * spec.num_parameters


def test_parameter_shift_only_requested_gradients() -> None:
    spec = CircuitSpec(2, 1)
    a, w = _rand(spec, 3, seed=8)
    w.requires_grad_(True)
    ex = TorchExecutor(spec)
    out = quantum_expectations(spec, a, w, ex)
    (gw,) = torch.autograd.grad(out.sum(), (w,))
    assert ex.circuit_evaluations == 3 + 2 * 3 * spec.num_weights
    gw_ref = torch.autograd.grad(expectations(spec, a, w).sum(), (w,))[0]
    torch.testing.assert_close(gw, gw_ref, atol=1e-10, rtol=0)


def test_shot_estimates_converge_with_variance_one_over_shots() -> None:
    spec = CircuitSpec(2, 1)
    a, w = _rand(spec, 1, seed=9)
    exact = expectations(spec, a, w)[0].numpy()
    reps = 400
    binding = np.tile(torch.cat([a[0], w]).numpy(), (reps, 1))
    variances = {}
    for shots in (100, 1600):
        ex = make_executor("aer", spec, shots=shots, seed=11)
        est = ex.run(binding)  # [reps, n]: independent estimates in one job
        mean, var = est.mean(0), est.var(0, ddof=1)
        theory = (1 - exact**2) / shots
        assert np.all(np.abs(mean - exact) < 5 * np.sqrt(theory / reps) + 1e-9)
        np.testing.assert_allclose(var, theory, rtol=0.3)
        variances[shots] = var
    ratio = variances[100] / variances[1600]
    assert np.all((ratio > 10) & (ratio < 25))  # 16 expected


def test_depolarizing_noise_degrades_smoothly() -> None:
    spec = CircuitSpec(3, 1)
    a, w = _rand(spec, 6, seed=12)
    exact = expectations(spec, a, w).numpy()
    binding = torch.cat([a, w.expand(6, -1)], 1).numpy()
    errs = []
    for p in (0.0, 0.02, 0.1):
        ex = make_executor("aer-noise", spec, shots=20000, seed=1,
                           noise_model=depolarizing_noise_model(p, 5 * p, p))
        errs.append(np.abs(ex.run(binding) - exact).mean())
    assert errs[0] < 0.01 < errs[1] < errs[2]
    # depolarising noise shrinks expectations towards zero
    ex = make_executor("aer-noise", spec, shots=20000, seed=1,
                       noise_model=depolarizing_noise_model(0.1, 0.3, 0.0))
    assert np.abs(ex.run(binding)).sum() < np.abs(exact).sum()


def test_fake_device_end_to_end() -> None:
    torch.manual_seed(0)
    x, ei = torch.rand(6, 3), torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    model = QAGNN(3, hidden=4, num_qubits=3, reps=1, heads=1)
    ex = make_executor("fake-manila", model.conv.spec, shots=256, seed=0)
    info = ex.describe()
    assert info["two_qubit_gates"] >= 2 and set(info["ops"]) <= {"rz", "sx", "x", "cx", "measure",
                                                                 "barrier"}
    model.executor = ex
    loss = QAGNN.loss(model(x, ei), torch.tensor([0, 1, 0, 1, 0, 1]))
    loss.backward()
    assert torch.isfinite(model.conv.weights.grad).all() and model.conv.weights.grad.abs().sum() > 0
    assert torch.isfinite(model.conv.encoder.lin.weight.grad).all()
    assert ex.jobs == 2


def test_fake_backend_lookup() -> None:
    assert fake_backend("manila").name == "fake_manila"
    assert fake_backend("ibm_brisbane").name == "fake_brisbane"
    with pytest.raises(ValueError, match="unknown fake IBM device"):
        fake_backend("nowhere")


def test_missing_credentials_raise_without_network(monkeypatch, tmp_path) -> None:
    for var in ("QISKIT_IBM_TOKEN", "QISKIT_IBM_INSTANCE", "QISKIT_IBM_CHANNEL", "QISKIT_IBM_URL"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    acct = str(tmp_path / "qiskit-ibm.json")
    with pytest.raises(CredentialsError, match="QISKIT_IBM_TOKEN"):
        ibm_account(filename=acct)
    with pytest.raises(CredentialsError, match="Nothing was sent"):
        make_executor("ibm-brisbane", CircuitSpec(2, 1), account_file=acct)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="num_qubits"):
        CircuitSpec(0)
    with pytest.raises(ValueError, match="reps"):
        CircuitSpec(2, -1)
    spec = CircuitSpec(2, 1)
    a, w = _rand(spec, 3)
    with pytest.raises(ValueError, match=r"angles must be a \[B, 2\]"):
        expectations(spec, a[:, :1], w)
    with pytest.raises(ValueError, match="weights must be"):
        expectations(spec, a, w[:-1])
    with pytest.raises(TypeError, match="share a floating dtype"):
        expectations(spec, a.float(), w)
    with pytest.raises(ValueError, match="bindings must be"):
        TorchExecutor(spec).run(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown quantum backend"):
        make_executor("qpu", spec)
    with pytest.raises(ValueError, match="shots"):
        make_executor("aer", spec, shots=0)


def test_layer_bad_inputs_raise_named_errors() -> None:
    """Q-AGNN's inputs are checked where they enter (each case failed deep inside torch or
    PyG, or was accepted: negative edge weights gave NaN degrees, targets outside [0, 1] a
    loss); a graph without nodes gives an empty output."""
    torch.manual_seed(0)
    model = QAGNN(5, hidden=4, num_qubits=3, reps=1, heads=1)
    x, ei = torch.randn(6, 5), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    assert model(torch.randn(0, 5), torch.empty(2, 0, dtype=torch.long)).shape == (0,)
    with pytest.raises(ValueError, match=r"x must have 5 features \(in_channels\), got \[6, 4\]"):
        model(torch.randn(6, 4), ei)
    with pytest.raises(TypeError, match="x must have the dtype of the layer's parameters"):
        model(x.double(), ei)
    with pytest.raises(ValueError, match=r"'edge_index\[0\]' \(sources\) holds 9"):
        model(x, torch.tensor([[0, 9], [1, 2]]))
    with pytest.raises(TypeError, match="'edge_index' must have dtype torch.int64"):
        model(x, ei.float())
    with pytest.raises(ValueError, match="'edge_index' must have shape"):
        model(x, ei[0])
    with pytest.raises(ValueError, match="edge_weight must be finite and non-negative"):
        model(x, ei, torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"edge_weight must have shape \[E\] = \[4\], got \[3\]"):
        model(x, ei, torch.ones(3))
    with pytest.raises(TypeError, match="edge_weight must be a floating-point tensor"):
        model(x, ei, torch.ones(4, dtype=torch.long))
    logits = torch.zeros(4)
    with pytest.raises(ValueError, match=r"target must hold probabilities in \[0, 1\]"):
        QAGNN.loss(logits, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match=r"target must hold probabilities in \[0, 1\]"):
        QAGNN.loss(logits, torch.tensor([0.0, 1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match=r"target must have the shape of logits \[4\]"):
        QAGNN.loss(logits, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="pos_weight must be positive"):
        QAGNN.loss(logits, torch.tensor([0.0, 1.0, 1.0, 0.0]), pos_weight=torch.tensor(-2.0))
    soft = QAGNN.loss(logits, torch.tensor([0.0, 1.0, 0.5, 1.0]))  # soft labels are fine
    assert soft.item() == pytest.approx(math.log(2))
    # an executor built for another circuit
    model.executor = TorchExecutor(CircuitSpec(2, 1))
    with pytest.raises(ValueError, match="'executor' runs the circuit"):
        model(x, ei)
    model.executor = "statevector"
    with pytest.raises(TypeError, match="'executor' must be a graphattn Executor"):
        model(x, ei)


@pytest.mark.parametrize("self_loops", [False, True])
def test_encoder_reduces_to_tagconv(self_loops: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(12, 5, dtype=torch.float64)
    ei = torch.randint(0, 12, (2, 40))
    enc = MultiHopEncoder(5, 4, K=2, add_self_loops=self_loops).double()
    tag = TAGConv(5, 4, K=2).double()
    with torch.no_grad():
        for k in range(3):
            tag.lins[k].weight.copy_(enc.lin.weight[:, 5 * k: 5 * (k + 1)])
        tag.bias.copy_(enc.lin.bias)
    tag_ei = add_remaining_self_loops(ei, num_nodes=12)[0] if self_loops else ei
    torch.testing.assert_close(enc(x, ei), tag(x, tag_ei), atol=1e-12, rtol=0)


def test_layer_permutation_equivariant_and_bounded() -> None:
    torch.manual_seed(1)
    N = 15
    x = torch.randn(N, 4)
    ei = torch.randint(0, N, (2, 50))
    layer = QuantumGraphAttention(4, 3, num_qubits=3, reps=2, heads=2)
    e = layer.embed(x, ei)
    assert e.abs().max() <= 1 and e.shape == (N, 3)
    out = layer(x, ei)
    perm = torch.randperm(N)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(N)
    out_p = layer(x[perm], inv[ei])
    torch.testing.assert_close(out_p, out[perm], atol=1e-5, rtol=1e-5)
    model = QAGNN(4, hidden=3, num_qubits=3, reps=1)
    torch.testing.assert_close(model(x[perm], inv[ei]), model(x, ei)[perm], atol=1e-5, rtol=1e-5)


def test_layer_learns_through_the_circuit() -> None:
    """Gradients reach the ansatz weights and the encoder through the exact simulator, and a few
    Adam steps lower the BCE on a small separable graph."""
    torch.manual_seed(0)
    N = 40
    y = (torch.arange(N) < N // 2).float()
    x = torch.randn(N, 3) * 0.3 + y.unsqueeze(1)
    ei = torch.stack([torch.arange(N), (torch.arange(N) + 1) % N])
    model = QAGNN(3, hidden=4, num_qubits=3, reps=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = QAGNN.loss(model(x, ei), y)
        loss.backward()
        assert model.conv.weights.grad.abs().sum() > 0
        first = first if first is not None else loss.item()
        opt.step()
    assert loss.item() < 0.5 * first


def test_executor_path_checks_dtypes_like_the_simulator() -> None:
    """With an executor, integer / bool angles came back as int64 zeros / bool True (the
    read-outs were cast to the angles' dtype) and float32 angles with float64 weights were
    accepted; both paths now refuse them with the simulator's error."""
    spec = CircuitSpec(2, 1)
    a, w = _rand(spec, 3)
    ex = TorchExecutor(spec)
    bad = (torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.bool), a.float())
    for angles in bad:
        for executor in (ex, None):
            with pytest.raises(TypeError, match="angles and weights must share a floating dtype"):
                quantum_expectations(spec, angles, w, executor)
    with pytest.raises(ValueError, match=r"angles must be a \[B, 2\] tensor, got list"):
        quantum_expectations(spec, [[0.0, 1.0]], w, ex)
    assert ex.jobs == 0  # nothing ran
    torch.testing.assert_close(quantum_expectations(spec, a, w, ex), expectations(spec, a, w))


def test_bools_are_not_sizes() -> None:
    """``True`` is an ``int`` to Python: it was taken as 1 qubit, 1 repetition, 1 hop or
    1 shot (and failed inside torch.empty for the layer)."""
    with pytest.raises(ValueError, match=r"num_qubits must be an int in \[1, 16\], got True"):
        CircuitSpec(True)
    with pytest.raises(ValueError, match="reps must be an int >= 0, got True"):
        CircuitSpec(2, reps=True)
    with pytest.raises(ValueError, match="K must be an int >= 0, got True"):
        MultiHopEncoder(3, 2, K=True)
    with pytest.raises(ValueError, match="shots must be an int >= 1, got True"):
        make_executor("aer", CircuitSpec(1, 0), shots=True)
    with pytest.raises(ValueError, match=r"num_qubits must be an int in \[1, 16\], got True"):
        QuantumGraphAttention(3, 2, num_qubits=True)
    with pytest.raises(ValueError, match="K must be an int >= 0, got False"):
        QuantumGraphAttention(3, 2, hops=False)
    assert CircuitSpec(1, 0).num_weights == 2 and MultiHopEncoder(3, 2, K=0).K == 0


def test_loss_empty_batch_and_scalar_pos_weight() -> None:
    """An empty batch gave NaN, a Python float pos_weight a raw torch TypeError, and a
    per-node [N] pos_weight was broadcast over the batch."""
    logits, target = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="logits must hold at least one node"):
        QAGNN.loss(torch.zeros(0), torch.zeros(0))
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target, pos_weight=torch.tensor(2.0))
    for pw in (2.0, 2, torch.tensor(2.0), torch.tensor([2.0]), torch.tensor(2.0).double()):
        torch.testing.assert_close(QAGNN.loss(logits, target, pw), ref)
    assert QAGNN.loss(logits, target, 2.0).dtype == logits.dtype
    with pytest.raises(ValueError, match=r"pos_weight must be one weight .* got shape \[3\]"):
        QAGNN.loss(logits, target, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(TypeError, match="pos_weight must be a real number"):
        QAGNN.loss(logits, target, True)
    for pw in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError, match="pos_weight must be positive"):
            QAGNN.loss(logits, target, pw)
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        QAGNN.loss(torch.zeros(3, dtype=torch.long), target)
