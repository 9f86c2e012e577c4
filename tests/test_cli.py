import json

import pytest
import torch

from graphattn import cli, ops
from graphattn.demos import load_all
from graphattn.demos.digits import knn_graph


def test_info_reports_backend(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == ops.backend()
    assert info["extension_built"] == ops.native_available()
    assert "torch" in info["versions"]


def test_demo_registry_and_unknown_demo(capsys, tmp_path):
    assert "digits" in load_all()
    assert cli.main(["demo", "--only", "nope", "--runs-dir", str(tmp_path)]) == 2
    assert "unknown demo" in capsys.readouterr().err


def test_knn_graph_edges_point_from_nearest_neighbours():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    ei = knn_graph(x, 1)
    assert ei.tolist() == [[1, 0, 3, 2], [0, 1, 2, 3]]


@pytest.mark.slow
def test_digits_demo_end_to_end(tmp_path, capsys):
    assert cli.main(["demo", "--only", "digits", "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "demo_summary.json").read_text())
    acc = {r["model"].split()[0]: r["test_acc"] for r in rows}
    assert acc["GraphAttention"] > acc["MLP"]
    assert (tmp_path / "digits" / "gat" / "metrics.json").exists()
    assert (tmp_path / "digits" / "comparison.png").exists()
