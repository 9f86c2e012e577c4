"""Molecular and binding-site examples: short end-to-end runs (slow) and the closed-path work
helper on an exactly conservative toy field; the training loop's guards and its epoch mode."""

from __future__ import annotations

import math

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
    assert {r["model"] for r in rows} == {"mlanet-direct", "mlanet-degree", "schnet",
                                          "atom references only"}
    assert all(r["energy_mae_meV"] > 0 for r in rows)
    rows = run_mmff(cfg, 8, 2, tmp_path / "mmff")
    by = {r["model"]: r for r in rows}
    # the max pooling's kinks leave a quadrature error that falls with the number of points
    # (here 2.6e-3 at the default 192, 2.9e-4 at 768, 4.6e-5 at 3072); a field that is not
    # conservative keeps its work as the path is refined
    assert by["mlanet-conservative"]["closed_path_work_ratio"] < 1e-2
    from graphattn.datasets.molecules import MMFFConformers, group_split
    from graphattn.demos.molecules import MMFF_RELAX_ITERS, closed_path_work

    ds = MMFFConformers(num_molecules=8, confs_per_molecule=2, relax_iters=MMFF_RELAX_ITERS)
    test_item = ds[group_split(ds, (0.8, 0.1, 0.1), seed=cfg.seed)[2]][0]
    w, s = closed_path_work(by["mlanet-conservative"]["net"], test_item, n=768)
    assert abs(w) < 1e-3 * s
    assert (tmp_path / "mmff" / "parity.png").exists()


@pytest.mark.slow
def test_pockets_demo_end_to_end(tmp_path):
    from graphattn.demos.pockets import PocketConfig, run_comparison

    res = run_comparison(PocketConfig(steps=2, channels=8, l_channels=2, layers=1), tmp_path)
    assert len(res["models"]) == 2
    for s in res["models"].values():
        assert len(s["folds"]) == len(res["complexes"]) >= 6
        assert 0 <= s["dcc_success"] <= 1


def test_validation_score_weighs_forces_as_the_loss():
    from graphattn.demos.molecules import validation_score

    better_forces = {"energy_mae_meV": 1100.0, "force_mae_meV_per_A": 300.0}
    better_energy = {"energy_mae_meV": 1000.0, "force_mae_meV_per_A": 600.0}
    assert validation_score(better_forces, 10.0) < validation_score(better_energy, 10.0)
    assert validation_score(better_forces, 0.0) > validation_score(better_energy, 0.0)
    assert validation_score({"energy_mae_meV": 50.0}, 10.0) == 50.0  # energies only


def test_closest_site_picks_each_centres_nearest_site_without_gradient():
    from graphattn.demos.pockets import closest_site

    center = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], requires_grad=True)
    sites = [torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([[9.0, 1.0, 0.0]])]
    target = closest_site(center, sites)
    assert target.tolist() == [[0.0, 1.0, 0.0], [9.0, 1.0, 0.0]]
    assert not target.requires_grad
    # the Huber loss against it pulls each centre toward its own nearest site
    torch.nn.functional.huber_loss(center, target).backward()
    assert center.grad[0, 1] < 0 and center.grad[1, 0] > 0


def test_guarded_step_skips_non_finite_and_clips_the_gradient_norm():
    from graphattn.demos.molecules import guarded_step

    lin = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    before = [p.detach().clone() for p in lin.parameters()]
    loss = lin(torch.full((2, 3), float("nan"))).sum()
    assert guarded_step(lin, opt, loss, 1.0) == "skipped"
    assert all(torch.equal(a, p) for a, p in zip(before, lin.parameters()))
    # inf in the gradient only (finite loss): skipped as well
    x = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=False)
    loss = (lin(x) * torch.tensor(0.0)).sum() + lin.weight.sum() * 0
    lin.weight.register_hook(lambda g: g + float("inf"))
    assert guarded_step(lin, opt, loss, 1.0) == "skipped"
    assert all(torch.equal(a, p) for a, p in zip(before, lin.parameters()))
    lin = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    before = torch.cat([p.detach().flatten() for p in lin.parameters()])
    loss = 1e4 * lin(torch.ones(1, 3)).sum()  # gradient norm 2e4
    assert guarded_step(lin, opt, loss, 1.0) == "clipped"
    step = torch.cat([p.detach().flatten() for p in lin.parameters()]) - before
    assert step.norm().item() == pytest.approx(0.1 * 1.0, rel=1e-5)  # lr x clip
    loss = 1e-3 * lin(torch.ones(1, 3)).sum()
    assert guarded_step(lin, opt, loss, 1.0) == "ok"


def test_training_returns_to_the_best_state_when_validation_diverges(monkeypatch):
    from torch_geometric.data import Data

    from graphattn.demos import molecules as M

    g = torch.Generator().manual_seed(0)
    mols = [Data(z=torch.tensor([6, 1, 1]), pos=torch.randn(3, 3, generator=g) * 1.5,
                 y=torch.randn(1, generator=g)) for _ in range(6)]
    # five validations (epoch 2 'diverges': > 10x best), then the test evaluation
    scores = iter([100.0, 5000.0, 200.0, 200.0, 200.0, 150.0])
    states = []

    def fake_evaluate(model, loader, refs, scale, with_forces):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"energy_mae_meV": next(scores), "pred": [], "true": []}

    monkeypatch.setattr(M, "_evaluate", fake_evaluate)
    loaded = []
    load = M.Potential.load_state_dict

    def spy_load(self, state, *args, **kwargs):
        loaded.append({k: v.clone() for k, v in state.items()})
        return load(self, state, *args, **kwargs)

    monkeypatch.setattr(M.Potential, "load_state_dict", spy_load)
    cfg = M.PotentialConfig(epochs=5, schnet_hidden=8, schnet_interactions=1, lr=1e-2)
    refs = torch.zeros(7, dtype=torch.float64)
    row = M.train_potential("schnet", mols, mols, mols, refs, 1.0, cfg, False)
    assert row["guards"]["restarts"] == 1 and row["epochs"] == 5
    # the restart (and the final reload) put back the state of the best, first, epoch
    assert len(loaded) == 2
    for state in loaded:
        assert all(torch.equal(state[k], v) for k, v in states[0].items())
    assert not all(torch.equal(states[1][k], v) for k, v in states[0].items())


def test_training_by_epochs_runs_that_many_with_the_cosine_over_the_steps(monkeypatch):
    from torch_geometric.data import Data

    from graphattn.demos import molecules as M

    g = torch.Generator().manual_seed(1)
    mols = [Data(z=torch.tensor([6, 1, 1]), pos=torch.randn(3, 3, generator=g) * 1.5,
                 y=torch.randn(1, generator=g)) for _ in range(10)]
    lrs = []
    step = M.guarded_step

    def spy(model, opt, loss, clip):
        lrs.append(opt.param_groups[0]["lr"])
        return step(model, opt, loss, clip)

    monkeypatch.setattr(M, "guarded_step", spy)
    cfg = M.PotentialConfig(budget_s=1e-9, epochs=3, batch_size=4, schnet_hidden=8,
                            schnet_interactions=1, lr=1e-2, lr_final=0.1)
    refs = torch.zeros(7, dtype=torch.float64)
    row = M.train_potential("schnet", mols, mols, mols, refs, 1.0, cfg, False)
    assert row["epochs"] == 3 and len(row["curve"]) == 3  # the time budget is not used
    assert len(lrs) == 9  # 3 epochs x 3 batches of <= 4
    want = [1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 9))) for k in range(9)]
    assert lrs == pytest.approx(want)
