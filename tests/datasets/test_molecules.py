"""QM9 (qm9pack) parsing, MMFF94 conformer labels, group splits and atom references."""

from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest
import torch

from graphattn.datasets.molecules import (
    HARTREE_TO_EV,
    KCAL_MOL_TO_EV,
    MMFFConformers,
    QM9Energies,
    atom_ref_energy,
    fit_atom_refs,
    group_split,
    qm9_arrays,
    qm9_data_dir,
)

HAS_QM9 = importlib.util.find_spec("qm9pack") is not None
HAS_RDKIT = importlib.util.find_spec("rdkit") is not None
needs_qm9 = pytest.mark.skipif(not HAS_QM9, reason="pip install qm9pack==1.0.3 pandas")
needs_rdkit = pytest.mark.skipif(not HAS_RDKIT, reason="pip install rdkit")


@pytest.fixture(scope="module")
def part1():
    return qm9_arrays(parts=(1,))


@needs_qm9
def test_qm9_parsing_known_molecules(part1) -> None:
    a = part1
    assert len(a["idx"]) == 43610 and a["idx"][0] == 1
    ptr = np.concatenate([[0], np.cumsum(a["natoms"])])
    # index 1 = CH4: 5 atoms, carbon first; U0 = -40.47893 Ha in the CSV
    with open(qm9_data_dir() / "qm9_part1.csv") as f:
        row = next(csv.DictReader(f))
    assert row["Index"] == "1" and row["SMILES"] == "C"
    assert a["natoms"][0] == 5 and a["z"][:5].tolist() == [6, 1, 1, 1, 1]
    assert a["y"][0] == pytest.approx(float(row["InternalEnergy_0K_au"]) * 27.2114, rel=1e-6)
    assert a["y"][0] == pytest.approx(-40.47893 * HARTREE_TO_EV, abs=1e-9)
    assert a["pos"][0].tolist() == pytest.approx([-0.0126981359, 1.0858041578, 0.0080009958])
    # index 3 = H2O (its XYZ has no '0.'-style number, index 1's dipole column has '0.')
    assert a["smiles"][2] == "O" and a["z"][ptr[2]:ptr[3]].tolist() == [8, 1, 1]
    # C-H bond lengths of methane ~1.09 A
    d = np.linalg.norm(a["pos"][1:5] - a["pos"][0], axis=1)
    assert np.allclose(d, 1.0919, atol=2e-3)
    assert set(np.unique(a["z"]).tolist()) <= {1, 6, 7, 8, 9}


@needs_qm9
def test_qm9_dataset_subset_cache_and_storage(tmp_path) -> None:
    ds = QM9Energies(root=str(tmp_path), subset=40, seed=3, parts=(1,))
    assert len(ds) == 40
    name = ds.processed_file_names[0]
    assert "U0" in name and "subset40" in name and "seed3" in name
    d = ds[0]
    assert d.z.dtype == torch.long and d.pos.dtype == torch.float32
    assert d.pos.shape == (d.z.numel(), 3)
    assert d.y.shape == (1,) and isinstance(d.smiles, str) and d.idx.shape == (1,)
    again = QM9Energies(root=str(tmp_path), subset=40, seed=3, parts=(1,))
    assert torch.equal(again._data.idx, ds._data.idx)
    other = QM9Energies(root=str(tmp_path), subset=40, seed=4, parts=(1,))
    assert not torch.equal(other._data.idx, ds._data.idx)
    # the vectorised storage equals PyG's own collation (taken when a pre_filter is given)
    slow = QM9Energies(root=str(tmp_path / "slow"), subset=40, seed=3, parts=(1,),
                       pre_filter=lambda _: True)
    for i in (0, 17, 39):
        a, b = ds[i], slow[i]
        assert a.smiles == b.smiles
        for key in ("z", "pos", "y", "idx"):
            assert torch.equal(a[key], b[key])
    with pytest.raises(ValueError, match="target"):
        QM9Energies(root=str(tmp_path), target="nope")
    with pytest.raises(ValueError, match="subset"):
        QM9Energies(root=str(tmp_path), subset=0)


def test_fit_atom_refs_recovers_synthetic_references() -> None:
    rng = np.random.default_rng(0)
    true = {1: -13.6, 6: -1029.5, 8: -2041.0, 9: -2700.25}
    zs, ys = [], []
    for _ in range(60):
        z = rng.choice(list(true), size=rng.integers(2, 12))
        zs.append(z.tolist())
        ys.append(sum(true[int(v)] for v in z))
    refs = fit_atom_refs((zs, ys))
    assert refs.shape == (10,) and refs.dtype == torch.float64
    for z, e in true.items():
        assert float(refs[z]) == pytest.approx(e, abs=1e-8)
    assert refs[[0, 2, 3, 4, 5, 7]].eq(0).all()  # absent elements
    assert fit_atom_refs((zs, ys), max_z=20).shape == (21,)
    # the Data / dataset route gives the same answer
    from torch_geometric.data import Data

    data = [Data(z=torch.tensor(z), y=torch.tensor([y])) for z, y in zip(zs, ys)]
    assert torch.allclose(fit_atom_refs(data), refs, atol=1e-6)
    resid = torch.tensor(ys, dtype=torch.float64) - torch.cat(
        [atom_ref_energy(torch.tensor(z), refs) for z in zs])
    assert resid.abs().max() < 1e-8
    with pytest.raises(ValueError, match="max_z"):
        fit_atom_refs((zs, ys), max_z=3)


@pytest.fixture(scope="module")
def mmff(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmff")
    return MMFFConformers(root=str(root), num_molecules=4, confs_per_molecule=3)


@needs_rdkit
def test_mmff_forces_are_minus_finite_difference_gradient(mmff) -> None:
    from rdkit import Chem, RDConfig
    from rdkit.Chem import rdForceFieldHelpers
    from rdkit.Geometry import Point3D

    assert len(mmff) == 12
    d = mmff[5]
    smis = [line.split()[0] for line in open(f"{RDConfig.RDDataDir}/NCI/first_5K.smi")]
    mol = Chem.AddHs(Chem.MolFromSmiles(smis[int(d.mol_id)]))
    assert [a.GetAtomicNum() for a in mol.GetAtoms()] == d.z.tolist()
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, p in enumerate(d.pos.double().tolist()):
        conf.SetAtomPosition(i, Point3D(*p))
    mol.AddConformer(conf, assignId=True)
    ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(
        mol, rdForceFieldHelpers.MMFFGetMoleculeProperties(mol))
    x = d.pos.double().reshape(-1).numpy()
    assert ff.CalcEnergy(x.tolist()) * KCAL_MOL_TO_EV == pytest.approx(float(d.y), rel=1e-5,
                                                                       abs=1e-5)
    h, fd = 1e-4, np.zeros_like(x)
    for k in range(x.size):
        xp, xm = x.copy(), x.copy()
        xp[k] += h
        xm[k] -= h
        fd[k] = (ff.CalcEnergy(xp.tolist()) - ff.CalcEnergy(xm.tolist())) / (2 * h)
    expect = -fd.reshape(-1, 3) * KCAL_MOL_TO_EV
    err = np.abs(d.force.double().numpy() - expect).max()
    assert err <= 1e-3 * np.abs(expect).max()
    assert np.abs(expect).max() > 1e-3  # partially relaxed: forces are not zero


@needs_rdkit
def test_mmff_deterministic_and_group_split(mmff, tmp_path) -> None:
    again = MMFFConformers(root=str(tmp_path), num_molecules=4, confs_per_molecule=3)
    for key in ("z", "pos", "y", "force", "mol_id"):
        assert torch.equal(mmff._data[key], again._data[key])
    assert mmff._data.smiles == again._data.smiles
    d = mmff[0]
    assert d.force.shape == d.pos.shape and d.y.shape == (1,) and d.z.dtype == torch.long
    splits = group_split(mmff, (0.5, 0.25, 0.25), seed=1)
    ids = [set(mmff._data.mol_id[s].tolist()) for s in splits]
    assert all(ids) and not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sorted(torch.cat(splits).tolist()) == list(range(len(mmff)))
    assert [len(s) for s in splits] == [6, 3, 3]
    assert all(torch.equal(a, b) for a, b in zip(splits, group_split(mmff, (0.5, 0.25, 0.25), 1)))
    # also from a plain group-id tensor, and subsets of the dataset
    g = torch.tensor([7, 7, 3, 3, 3, 9])
    parts = group_split(g, (0.5, 0.5), seed=0)
    assert sorted(torch.cat(parts).tolist()) == list(range(6))
    assert len(group_split(mmff[torch.arange(6)], (1.0,))[0]) == 6
    with pytest.raises(ValueError, match="fractions"):
        group_split(mmff, (0.7, 0.7))
