"""Molecular and binding-site examples: short end-to-end runs (slow) and the closed-path work
helper on an exactly conservative toy field."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("e3nn")


def test_closed_path_work_separates_conservative_from_rotational_fields():
    from torch_geometric.data import Data

    from graphattn.demos.molecules import closed_path_work

    class Field(torch.nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind

        def forward(self, z, pos, batch):
            if self.kind == "mlanet-conservative":  # F = -grad(|r|^2 / 2) = -r
                return None, -pos
            rot = torch.stack([-pos[:, 1], pos[:, 0], torch.zeros_like(pos[:, 0])], -1)
            return None, rot  # a curl field: work around a loop is not zero

    data = Data(z=torch.tensor([6, 1]), pos=torch.tensor([[0.5, 0.2, 0.0], [2.0, 0.0, 0.0]]))
    w, s = closed_path_work(Field("mlanet-conservative"), data, atom=0)
    assert abs(w) < 1e-6 * s
    w, s = closed_path_work(Field("mlanet-direct"), data, atom=0)
    assert abs(w) > 0.1 * s


@pytest.mark.slow
def test_mmff_and_qm9_demos_end_to_end(tmp_path):
    from graphattn.demos.molecules import PotentialConfig, run_mmff, run_qm9

    cfg = PotentialConfig(budget_s=4.0, channels=8, l_channels=4, layers=1)
    rows = run_qm9(cfg, 120, tmp_path / "qm9")
    assert {r["model"] for r in rows} == {"mlanet-direct", "schnet", "atom references only"}
    assert all(r["energy_mae_meV"] > 0 for r in rows)
    rows = run_mmff(cfg, 8, 2, tmp_path / "mmff")
    by = {r["model"]: r for r in rows}
    assert by["mlanet-conservative"]["closed_path_work_ratio"] < 1e-3
    assert (tmp_path / "mmff" / "parity.png").exists()


@pytest.mark.slow
def test_pockets_demo_end_to_end(tmp_path):
    from graphattn.demos.pockets import PocketConfig, run_comparison

    res = run_comparison(PocketConfig(steps=2, channels=8, l_channels=2, layers=1), tmp_path)
    assert len(res["models"]) == 2
    for s in res["models"].values():
        assert len(s["folds"]) == len(res["complexes"]) >= 6
        assert 0 <= s["dcc_success"] <= 1
