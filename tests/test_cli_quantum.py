"""``graphattn quantum run|submit`` and the intrusion example."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from graphattn import cli
from graphattn.datasets import FlowConfig, flow_graph
from graphattn.demos import intrusion
from graphattn.nn.quantum import QAGNN

pytest.importorskip("qiskit_ibm_runtime")

TINY = FlowConfig(n_hosts=40, n_benign=150, n_scanners=1, scan_ports=20, n_bots=5, ddos_flows=4,
                  n_bruteforce=1, bruteforce_flows=10, n_exfil=1, exfil_flows=5)


@pytest.fixture
def checkpoint(tmp_path):
    data = flow_graph(TINY, seed=0)
    torch.manual_seed(0)
    model = QAGNN(data.num_features, **intrusion.QAGNN_ARGS)
    run_dir = tmp_path / "qagnn"
    run_dir.mkdir()
    torch.save(model.state_dict(), run_dir / "best.pt")
    intrusion.save_qagnn(model, run_dir, TINY, 0)
    return run_dir, model, data


def test_load_qagnn_round_trip(checkpoint) -> None:
    run_dir, model, data = checkpoint
    loaded, data2 = intrusion.load_qagnn(run_dir)
    assert torch.equal(data.x, data2.x)
    with torch.no_grad():
        torch.testing.assert_close(loaded(data.x, data.edge_index),
                                   model.eval()(data.x, data.edge_index))


def test_submit_dry_run_prints_transpiled_circuit(checkpoint, capsys) -> None:
    run_dir, _, data = checkpoint
    assert cli.main(["quantum", "submit", "--backend", "ibm_brisbane", "--checkpoint",
                     str(run_dir), "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == "fake_brisbane" and report["jobs"] == 1
    assert report["circuits_per_job"] == data.num_nodes
    assert report["two_qubit_gates"] >= 6 and report["depth"] > 0
    assert "ecr" in report["ops"]  # Eagle's native two-qubit gate


def test_submit_without_credentials_fails_cleanly(checkpoint, capsys, monkeypatch, tmp_path):
    from qiskit_ibm_runtime.accounts import management

    for var in ("QISKIT_IBM_TOKEN", "QISKIT_IBM_INSTANCE", "QISKIT_IBM_CHANNEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(management, "_DEFAULT_ACCOUNT_CONFIG_JSON_FILE",
                        str(tmp_path / "none.json"))

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    run_dir = checkpoint[0]
    assert cli.main(["quantum", "submit", "--backend", "ibm_brisbane", "--checkpoint",
                     str(run_dir), "--runs-dir", str(tmp_path)]) == 3
    assert "no IBM Quantum credentials" in capsys.readouterr().err


def test_quantum_run_evaluates_checkpoint_on_a_backend(checkpoint, tmp_path, capsys) -> None:
    run_dir = checkpoint[0]
    assert cli.main(["quantum", "run", "--backend", "aer", "--shots", "64", "--checkpoint",
                     str(run_dir), "--runs-dir", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "quantum" / "metrics_aer.json").read_text())
    exact, shots = out["eval"]
    assert exact["embedding_mad"] == 0.0 and shots["shots"] == 64
    assert 0 < shots["embedding_mad"] < 0.5


def test_missing_checkpoint_is_explained(tmp_path) -> None:
    with pytest.raises(SystemExit, match="no trained Q-AGNN"):
        cli.main(["quantum", "submit", "--backend", "ibm_brisbane", "--checkpoint",
                  str(tmp_path), "--dry-run"])


def test_binary_metrics_hand_computed() -> None:
    logits = torch.tensor([2.0, -1.0, 3.0, -2.0, 1.0])
    y = torch.tensor([1, 1, 0, 0, 1])
    m = intrusion.binary_metrics(logits, y)
    # tp=2 fp=1 fn=1 tn=1: F1+ = 4/6, F1- = 2/4
    assert m["macro_f1"] == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert m["fpr"] == pytest.approx(0.5) and m["recall"] == pytest.approx(2 / 3)


def test_matched_budget_is_close() -> None:
    budget = sum(p.numel() for p in QAGNN(10, **intrusion.QAGNN_ARGS).parameters())
    for kind in ("gat", "gcn", "transformer"):
        n = intrusion.n_params(intrusion.matched(kind, 10, budget))
        assert abs(n - budget) / budget < 0.25


@pytest.mark.slow
def test_intrusion_demo_end_to_end(tmp_path) -> None:
    assert cli.main(["demo", "--only", "intrusion", "--runs-dir", str(tmp_path),
                     "--no-progress"]) == 0
    m = json.loads((tmp_path / "intrusion" / "metrics.json").read_text())
    backends = {r["backend"] for r in m["qagnn_under_noise"]}
    assert backends >= {"aer", "aer-depolarizing", "fake-manila"}
    assert (tmp_path / "intrusion" / "noise.png").exists()
    assert (tmp_path / "intrusion" / "qagnn" / "model.json").exists()
