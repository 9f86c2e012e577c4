r"""3-D molecules with energies (QM9) and energies + forces (MMFF94 on RDKit's NCI molecules).

**QM9** (:class:`QM9Energies`) — the 130,831 DFT-relaxed (B3LYP/6-31G(2df,p)) small organic
molecules of Ramakrishnan et al., *Sci. Data* 1, 140022 (2014), read from the CSVs inside the
``qm9pack`` wheel (``pip install qm9pack==1.0.3 pandas``, MIT; ``import qm9pack`` itself is
broken on setuptools >= 81, so the data folder is located with
``importlib.util.find_spec``). Each molecule becomes
``Data(z [n] int64, pos [n, 3] float32 Å, y [1] float32, smiles, idx [1])`` where ``idx`` is
QM9's 1-based index (``dsgdb9nsd_000001`` = CH4). Energies (``U0``, ``U``, ``H``, ``G``,
``zpve``, ``homo``, ``lumo``, ``gap``) are converted from Hartree to eV with
:math:`1\,E_h = 27.211386245988` eV; the other targets keep QM9's units (``mu`` Debye,
``alpha`` bohr³, ``r2`` bohr², ``cv`` cal/(mol K)). QM9 geometries are minima, so there are
no forces.

Total energies are dominated by per-element terms (U0 of CH4 is about -1101 eV), so models
usually regress the residual :math:`E - \sum_a \varepsilon_{z_a}`.
:func:`fit_atom_refs` finds the references by least squares on the training split,

.. math:: \varepsilon = \arg\min_\varepsilon \lVert C \varepsilon - E \rVert^2,
   \qquad C_{mz} = \#\{a \in m : z_a = z\},

(elements absent from the data get :math:`\varepsilon_z = 0`), and :func:`atom_ref_energy`
evaluates :math:`\sum_a \varepsilon_{z_a}` per molecule.

**MMFF94 conformers** (:class:`MMFFConformers`) — a principled label generator with forces:
the real NCI molecules shipped with RDKit (``RDConfig.RDDataDir/NCI/first_5K.smi``) are taken
in file order, skipping unparsable ones, those with more than ``max_heavy_atoms`` heavy atoms,
and those without full MMFF94 parameters. Each gets ``confs_per_molecule`` ETKDGv3 conformers
(explicit hydrogens, fixed ``randomSeed``, one thread, hence deterministic), each conformer
is partially relaxed with MMFF94 (``maxIts=relax_iters``) so that energies spread and forces
are non-zero, its coordinates are rounded to float32, and the labels are evaluated *at those
rounded coordinates*: ``y`` [1] = :math:`E` and ``force`` [n, 3] = :math:`-\nabla E`, both
converted from kcal/mol (and kcal/mol/Å) to eV (eV/Å) with
:math:`1\ \text{kcal/mol} = 0.0433641043` eV. ``mol_id`` is the molecule's 0-based line in
``first_5K.smi``; split with :func:`group_split` (by molecule, never by conformer, so no
molecule leaks between train and test).

Both datasets cache their processed tensors under
``graphattn.datasets.cache.cache_dir("molecules", ...)`` (``$GRAPHATTN_CACHE`` or
``~/.cache/graphattn``), never in the repository; the file name encodes every parameter.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from .cache import CachedDataset

__all__ = ["HARTREE_TO_EV", "KCAL_MOL_TO_EV", "MMFFConformers", "QM9Energies", "QM9_TARGETS",
           "atom_ref_energy", "fit_atom_refs", "group_split", "mmff_conformer_records",
           "qm9_arrays", "qm9_data_dir"]

HARTREE_TO_EV = 27.211386245988
KCAL_MOL_TO_EV = 0.0433641043

#: target name -> (qm9pack CSV column, factor to the stored unit)
QM9_TARGETS: dict[str, tuple[str, float]] = {
    "U0": ("InternalEnergy_0K_au", HARTREE_TO_EV),
    "U": ("InternalEnergy_298K_au", HARTREE_TO_EV),
    "H": ("Enthalphy_298K_au", HARTREE_TO_EV),  # sic: qm9pack's spelling
    "G": ("GibbsFreeEnergy_298K_au", HARTREE_TO_EV),
    "zpve": ("ZPVE_au", HARTREE_TO_EV),
    "homo": ("HOMO_au", HARTREE_TO_EV),
    "lumo": ("LUMO_au", HARTREE_TO_EV),
    "gap": ("HOMO_LUMO_gap_au", HARTREE_TO_EV),
    "mu": ("Dipole_debye", 1.0),
    "alpha": ("Polarizability_bohr3", 1.0),
    "r2": ("R2_bohr2", 1.0),
    "cv": ("Heatcapacity_Cv_cal_mol_K", 1.0),
}
_Z_OF = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
_QM9_PARTS = (1, 2, 3)


# ----------------------------------------------------------------------------------------
# QM9
# ----------------------------------------------------------------------------------------


def qm9_data_dir() -> Path:
    """The ``data`` folder of the installed ``qm9pack`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("QM9 needs the qm9pack wheel: pip install qm9pack==1.0.3 pandas")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _parse_numbers(strings: Sequence[str]) -> np.ndarray:
    """All numbers of many ``[[x,y,z],...]`` strings (not JSON: ``0.`` occurs), in order."""
    text = " ".join(strings).translate(str.maketrans("[],", "   "))
    return np.array(text.split(), dtype=np.float64)


def qm9_arrays(parts: Sequence[int] = _QM9_PARTS, target: str = "U0",
               data_dir: str | Path | None = None) -> dict[str, object]:
    """Reads and parses qm9pack's CSV parts (vectorised: one split for all molecules).

    Returns a dict with ``idx`` [M] int64 (QM9's 1-based index), ``natoms`` [M] int64,
    ``z`` [sum natoms] int64, ``pos`` [sum natoms, 3] float64 (Å), ``y`` [M] float64 (target
    in the unit of the module docstring) and ``smiles`` (list of M str), ordered by ``idx``.
    """
    if target not in QM9_TARGETS:
        raise ValueError(f"target must be one of {sorted(QM9_TARGETS)}, got {target!r}")
    parts = tuple(parts)
    if not parts or any(p not in _QM9_PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"parts must be distinct values from {_QM9_PARTS}, got {parts!r}")
    import pandas as pd

    folder = Path(data_dir) if data_dir is not None else qm9_data_dir()
    column, factor = QM9_TARGETS[target]
    cols = ["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang", column]
    frames = []
    for p in parts:
        path = folder / f"qm9_part{p}.csv"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing (pip install qm9pack==1.0.3)")
        frames.append(pd.read_csv(path, usecols=cols))
    df = pd.concat(frames, ignore_index=True).sort_values("Index", kind="stable")
    natoms = df["N_atoms"].to_numpy(np.int64)
    n_total = int(natoms.sum())
    xyz = _parse_numbers(df["XYZ_Ang"].tolist())
    if xyz.size != 3 * n_total:
        raise ValueError(f"XYZ_Ang holds {xyz.size} numbers, expected 3 * sum(N_atoms) = "
                         f"{3 * n_total}")
    symbols = np.array(" ".join(df["Elements"].tolist())
                       .translate(str.maketrans("[],'\"", "     ")).split())
    if symbols.size != n_total:
        raise ValueError(f"Elements holds {symbols.size} symbols, expected sum(N_atoms) = "
                         f"{n_total}")
    uniq, inv = np.unique(symbols, return_inverse=True)
    unknown = [s for s in uniq if s not in _Z_OF]
    if unknown:
        raise ValueError(f"unexpected element symbols in Elements: {unknown}")
    z = np.array([_Z_OF[s] for s in uniq], dtype=np.int64)[inv]
    return {"idx": df["Index"].to_numpy(np.int64, copy=True), "natoms": natoms.copy(), "z": z,
            "pos": xyz.reshape(-1, 3), "y": df[column].to_numpy(np.float64, copy=True) * factor,
            "smiles": df["SMILES"].astype(str).tolist()}


def _direct_storage(fields: dict[str, Tensor], per_atom: set[str], ptr: Tensor,
                    strings: dict[str, list[str]]) -> tuple[dict, dict[str, Tensor]]:
    """InMemoryDataset storage (``data`` dict + ``slices``) built without per-graph Data
    objects: node-level fields are sliced by ``ptr``, graph-level ones by 0..M."""
    m = ptr.numel() - 1
    graph_ptr = torch.arange(m + 1)
    data = dict(fields)
    data.update(strings)
    slices = {k: (ptr if k in per_atom else graph_ptr) for k in data}
    return data, slices


class QM9Energies(CachedDataset):
    """QM9 molecules with one scalar target (see the module docstring).

    Args:
        root: Cache folder (default ``cache_dir("molecules", "qm9")``).
        subset: Keep a seeded random subset of this many molecules (``None``: all).
        target: One of :data:`QM9_TARGETS` (default ``"U0"``, eV).
        seed: Seed of the subset draw.
        parts: qm9pack CSV parts to read (``(1, 2, 3)`` = all 130,831 molecules; ``(1,)``
            reads 43,610 for quick tests).
        transform, pre_transform, pre_filter, force_reload: As in PyG.
    """

    cache_subdir = ("molecules", "qm9")

    def __init__(self, root: str | None = None, subset: int | None = None, target: str = "U0",
                 seed: int = 0, transform: Callable | None = None,
                 pre_transform: Callable | None = None, pre_filter: Callable | None = None,
                 parts: Sequence[int] = _QM9_PARTS, force_reload: bool = False) -> None:
        if target not in QM9_TARGETS:
            raise ValueError(f"target must be one of {sorted(QM9_TARGETS)}, got {target!r}")
        if subset is not None and (not isinstance(subset, int) or subset < 1):
            raise ValueError(f"subset must be a positive int or None, got {subset!r}")
        self.subset, self.target, self.seed = subset, target, int(seed)
        self.parts = tuple(sorted(parts))
        if not self.parts or any(p not in _QM9_PARTS for p in self.parts):
            raise ValueError(f"parts must be values from {_QM9_PARTS}, got {tuple(parts)!r}")
        super().__init__(root, transform, pre_transform, pre_filter, force_reload)

    @property
    def processed_file_names(self) -> list[str]:
        sub = "all" if self.subset is None else str(self.subset)
        parts = "" if self.parts == _QM9_PARTS else "_parts" + "".join(map(str, self.parts))
        return [f"qm9_{self.target}_subset{sub}_seed{self.seed}{parts}.pt"]

    def process(self) -> None:
        arr = qm9_arrays(self.parts, self.target)
        natoms = torch.from_numpy(arr["natoms"])
        ptr = torch.zeros(natoms.numel() + 1, dtype=torch.long)
        ptr[1:] = natoms.cumsum(0)
        z = torch.from_numpy(arr["z"])
        pos = torch.from_numpy(arr["pos"]).float()
        y = torch.from_numpy(arr["y"]).float()
        idx = torch.from_numpy(arr["idx"])
        smiles = arr["smiles"]
        keep = torch.arange(natoms.numel())
        if self.subset is not None:
            if self.subset > natoms.numel():
                raise ValueError(f"subset={self.subset} exceeds the {natoms.numel()} molecules "
                                 f"read from parts {self.parts}")
            rng = np.random.default_rng(self.seed)
            keep = torch.from_numpy(np.sort(rng.choice(natoms.numel(), self.subset,
                                                       replace=False)))
        if self.pre_transform is not None or self.pre_filter is not None:
            self.save_items(
                Data(z=z[int(ptr[m]):int(ptr[m + 1])], pos=pos[int(ptr[m]):int(ptr[m + 1])],
                     y=y[m:m + 1], smiles=smiles[m], idx=idx[m:m + 1])
                for m in keep.tolist())
            return
        counts = natoms[keep]
        starts = ptr[keep]
        atom_idx = torch.repeat_interleave(starts, counts) + (
            torch.arange(int(counts.sum())) - torch.repeat_interleave(
                torch.cumsum(counts, 0) - counts, counts))
        new_ptr = torch.zeros(keep.numel() + 1, dtype=torch.long)
        new_ptr[1:] = counts.cumsum(0)
        data, slices = _direct_storage(
            {"z": z[atom_idx], "pos": pos[atom_idx], "y": y[keep], "idx": idx[keep]},
            {"z", "pos"}, new_ptr, {"smiles": [smiles[m] for m in keep.tolist()]})
        torch.save((data, slices, Data), self.processed_paths[0])


# ----------------------------------------------------------------------------------------
# Atom reference energies
# ----------------------------------------------------------------------------------------


def _atoms_and_energies(source) -> tuple[Tensor, Tensor, Tensor]:
    """``(z [A], graph [A], y [M] float64)`` from a dataset, iterable of Data, or pair."""
    if isinstance(source, tuple) and len(source) == 2 and not isinstance(source[0], Data):
        zs, ys = source
        zs = [torch.as_tensor(z, dtype=torch.long).reshape(-1) for z in zs]
        y = torch.as_tensor(ys, dtype=torch.float64).reshape(-1)
        if len(zs) != y.numel():
            raise ValueError(f"got {len(zs)} atomic-number lists but {y.numel()} energies")
    elif (isinstance(source, InMemoryDataset) and source.slices is not None
          and {"z", "y"} <= set(source.slices)):
        # Fast path: read the collated storage instead of materialising every Data object.
        ptr, yptr = source.slices["z"], source.slices["y"]
        ids = torch.as_tensor(list(source.indices()), dtype=torch.long)
        counts = ptr[ids + 1] - ptr[ids]
        starts = torch.repeat_interleave(ptr[ids] - (torch.cumsum(counts, 0) - counts), counts)
        atom = torch.arange(int(counts.sum())) + starts
        graph = torch.repeat_interleave(torch.arange(ids.numel()), counts)
        return (source._data.z.reshape(-1)[atom].long(), graph,
                source._data.y.reshape(-1)[yptr[ids]].to(torch.float64))
    else:
        zs, vals = [], []
        for d in source:
            if not hasattr(d, "z") or not hasattr(d, "y"):
                raise TypeError("fit_atom_refs needs Data objects with 'z' and 'y' "
                                f"attributes, got {type(d).__name__}")
            zs.append(d.z.reshape(-1).long())
            vals.append(float(d.y.reshape(-1)[0]))
        y = torch.tensor(vals, dtype=torch.float64)
    graph = torch.repeat_interleave(torch.arange(len(zs)),
                                    torch.tensor([z.numel() for z in zs], dtype=torch.long))
    z = torch.cat(zs) if zs else torch.empty(0, dtype=torch.long)
    return z, graph, y


def fit_atom_refs(source: Iterable[Data] | tuple[Sequence, Sequence],
                  max_z: int | None = None) -> Tensor:
    """Per-element reference energies by least squares (module docstring).

    Args:
        source: A dataset / iterable of ``Data`` with ``z`` and ``y`` (first entry used), or a
            pair ``(list of atomic-number sequences, energies)``. In-memory datasets (and
            their index subsets) are read from the collated storage, so the full QM9 takes
            well under a second.
        max_z: Size the output ``[max_z + 1]`` (default: the largest ``z`` seen).

    Returns:
        ``[max_z + 1]`` float64 tensor ``refs`` with ``refs[z]`` the energy of element ``z``
        (0 for elements that never occur).
    """
    z, graph, y = _atoms_and_energies(source)
    if y.numel() == 0:
        raise ValueError("fit_atom_refs needs at least one molecule")
    if z.numel() and int(z.min()) < 0:
        raise ValueError("atomic numbers must be non-negative")
    top = int(z.max()) if z.numel() else 0
    if max_z is None:
        max_z = top
    elif max_z < top:
        raise ValueError(f"max_z={max_z} is smaller than the largest atomic number {top}")
    counts = torch.zeros(y.numel(), max_z + 1, dtype=torch.float64)
    counts.index_put_((graph, z), torch.ones(z.numel(), dtype=torch.float64), accumulate=True)
    present = counts.sum(0) > 0
    sol = torch.linalg.lstsq(counts[:, present], y.unsqueeze(1), driver="gelsd").solution
    refs = torch.zeros(max_z + 1, dtype=torch.float64)
    refs[present] = sol.squeeze(1)
    return refs


def atom_ref_energy(z: Tensor, refs: Tensor, batch: Tensor | None = None) -> Tensor:
    """:math:`\\sum_a \\varepsilon_{z_a}` per graph (``[B]``; ``[1]`` without ``batch``)."""
    e = refs.to(torch.float64)[z.long()]
    if batch is None:
        return e.sum().reshape(1)
    out = torch.zeros(int(batch.max()) + 1 if batch.numel() else 0, dtype=torch.float64)
    return out.index_add_(0, batch.long(), e)


# ----------------------------------------------------------------------------------------
# MMFF94 conformers
# ----------------------------------------------------------------------------------------


def _nci_smiles() -> list[str]:
    from rdkit import RDConfig

    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    with open(path) as f:
        return [line.split()[0] if line.split() else "" for line in f]


def mmff_conformer_records(num_molecules: int = 60, confs_per_molecule: int = 4,
                           max_heavy_atoms: int = 30, seed: int = 0xF00D,
                           relax_iters: int = 50) -> list[dict]:
    """The raw records behind :class:`MMFFConformers` (one dict per conformer with numpy
    ``z``, ``pos`` (float32-rounded, Å), ``energy`` (eV), ``force`` (eV/Å), ``smiles`` and
    ``mol_id``)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDistGeom, rdForceFieldHelpers

    RDLogger.DisableLog("rdApp.*")
    records: list[dict] = []
    n_mol = 0
    for mol_id, smi in enumerate(_nci_smiles()):
        if n_mol >= num_molecules:
            break
        mol = Chem.MolFromSmiles(smi) if smi else None
        if mol is None or mol.GetNumHeavyAtoms() > max_heavy_atoms:
            continue
        mol = Chem.AddHs(mol)
        if not rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol):
            continue
        params = rdDistGeom.ETKDGv3()
        params.randomSeed = int(seed)
        params.numThreads = 1
        cids = list(rdDistGeom.EmbedMultipleConfs(mol, numConfs=confs_per_molecule,
                                                  params=params))
        if not cids:
            continue
        props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol)  # MMFF94
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        can = Chem.MolToSmiles(Chem.RemoveHs(mol))
        for cid in cids:
            ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(mol, props, confId=cid)
            if relax_iters > 0:
                ff.Minimize(maxIts=relax_iters)
            pos = np.asarray(ff.Positions(), dtype=np.float64).reshape(-1, 3)
            pos32 = pos.astype(np.float32)
            flat = pos32.astype(np.float64).reshape(-1).tolist()
            energy = ff.CalcEnergy(flat) * KCAL_MOL_TO_EV
            grad = np.asarray(ff.CalcGrad(flat), dtype=np.float64).reshape(-1, 3)
            records.append({"z": z, "pos": pos32, "energy": energy,
                            "force": (-grad * KCAL_MOL_TO_EV).astype(np.float32),
                            "smiles": can, "mol_id": mol_id})
        n_mol += 1
    return records


class MMFFConformers(CachedDataset):
    """MMFF94-labelled ETKDG conformers of RDKit's NCI molecules (module docstring).

    Each item is ``Data(z [n], pos [n, 3] float32 Å, y [1] eV, force [n, 3] eV/Å, smiles,
    mol_id [1])``.
    """

    cache_subdir = ("molecules", "mmff")

    def __init__(self, root: str | None = None, num_molecules: int = 60,
                 confs_per_molecule: int = 4, max_heavy_atoms: int = 30, seed: int = 0xF00D,
                 relax_iters: int = 50, transform: Callable | None = None,
                 pre_transform: Callable | None = None, pre_filter: Callable | None = None,
                 force_reload: bool = False) -> None:
        for name, val, lo in (("num_molecules", num_molecules, 1),
                              ("confs_per_molecule", confs_per_molecule, 1),
                              ("max_heavy_atoms", max_heavy_atoms, 1),
                              ("relax_iters", relax_iters, 0)):
            if not isinstance(val, int) or val < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")
        self.num_molecules, self.confs_per_molecule = num_molecules, confs_per_molecule
        self.max_heavy_atoms, self.seed, self.relax_iters = max_heavy_atoms, int(seed), relax_iters
        super().__init__(root, transform, pre_transform, pre_filter, force_reload)

    @property
    def processed_file_names(self) -> list[str]:
        return [f"mmff_n{self.num_molecules}_c{self.confs_per_molecule}_h{self.max_heavy_atoms}"
                f"_s{self.seed}_it{self.relax_iters}.pt"]

    def process(self) -> None:
        self.save_items(
            Data(z=torch.from_numpy(r["z"]), pos=torch.from_numpy(r["pos"]),
                 y=torch.tensor([r["energy"]], dtype=torch.float32),
                 force=torch.from_numpy(r["force"]), smiles=r["smiles"],
                 mol_id=torch.tensor([r["mol_id"]]))
            for r in mmff_conformer_records(self.num_molecules, self.confs_per_molecule,
                                            self.max_heavy_atoms, self.seed, self.relax_iters))


def group_split(dataset, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> list[Tensor]:
    """Splits conformer indices by molecule (``mol_id``): every conformer of a molecule lands
    in the same part.

    Args:
        dataset: An indexable dataset whose items carry ``mol_id`` (e.g. :class:`MMFFConformers`),
            or a 1-D tensor / sequence of group ids, one per item.
        fractions: Fractions of the *molecules* per part (non-negative, sum <= 1; a
            remainder is dropped). The last part gets the rounding remainder when the sum is 1.
        seed: Seed of the molecule shuffle.

    Returns:
        One int64 tensor of item indices per fraction (use ``dataset[idx]``), each sorted.
    """
    fr = [float(f) for f in fractions]
    if not fr or any(f < 0 for f in fr) or sum(fr) > 1 + 1e-9:
        raise ValueError(f"fractions must be non-negative and sum to <= 1, got {tuple(fractions)}")
    if isinstance(dataset, Tensor):
        groups = dataset.reshape(-1).long()
    elif isinstance(dataset, InMemoryDataset) and "mol_id" in dataset._data:
        groups = dataset._data.mol_id.reshape(-1).long()  # collated: one per item
        if dataset._indices is not None:
            groups = groups[torch.as_tensor(list(dataset.indices()))]
    elif isinstance(dataset, Sequence) and dataset and not hasattr(dataset[0], "mol_id"):
        groups = torch.as_tensor(list(dataset), dtype=torch.long)
    else:
        groups = torch.tensor([int(d.mol_id.reshape(-1)[0]) for d in dataset], dtype=torch.long)
    uniq = torch.unique(groups)
    perm = uniq[torch.from_numpy(np.random.default_rng(seed).permutation(uniq.numel()))]
    bounds = np.rint(np.cumsum([0.0] + fr) * uniq.numel()).astype(int)
    if abs(sum(fr) - 1.0) < 1e-9:
        bounds[-1] = uniq.numel()
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        chosen = perm[a:b]
        out.append(torch.nonzero(torch.isin(groups, chosen)).reshape(-1))
    return out

