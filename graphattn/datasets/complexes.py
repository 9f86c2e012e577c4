r"""Protein–ligand complexes shipped inside installed packages, as residue graphs with
binding-site labels, and the DCC / DCA pocket-centre metrics.

**Sources** (:func:`list_complexes`; every file is read where its package installed it):

* ``posebusters`` wheel (BSD-3; PDB entries CC0): ``1ia1``, ``1of6``, ``1s3v``, ``1uou`` —
  ``posebusters/datasets/pdb/<id>/<id>_protein_one_lig_removed.pdb`` and the crystal ligand(s)
  in ``<id>_ligands.sdf``. When the SDF holds several copies (1ia1: 2, 1of6: 8) the one used is
  the copy whose centroid is closest to ``<id>_ligand.sdf`` (the pose of the ligand that was
  removed from the protein file);
* ``MDAnalysisTests`` sdist (LGPL-3+; PDB data CC0): ``data/1a28.pdb.gz`` (progesterone
  receptor, ligand ``STR``; its first instance, bound to chain A), ``data/1hvr.pdb`` (HIV-1
  protease, ligand ``XK2``) and ``data/6msm.pdb.bz2`` (phosphorylated, ATP-bound CFTR,
  cryo-EM; two ``ATP`` at the nucleotide-binding-domain interface; its lipids ``POV`` / ``CLR``
  and ``MG`` are other HETATM groups), ligands as HETATM records of the same file;
* Debian ``pymol-data``: ``/usr/share/pymol/data/tut/1hpv.pdb`` (HIV-1 protease + amprenavir,
  ligand ``478``), only when that file exists.

**Parsing.** A minimal PDB reader: ``ATOM``/``HETATM`` records of the first model only
(stops at the first ``ENDMDL``), alternate locations blank or ``A`` kept (others dropped),
element from columns 77–78 when alphabetic (else from the atom name). Hydrogens (``H``,
``D``) are dropped. Water (``HOH``, ``WAT``, ...), ions and other HETATM groups (cofactors,
other ligand copies) are neither nodes nor protein atoms; the ligand is picked by name.

**Graph.** One node per amino-acid residue that has a Cα: ``ATOM`` residues, plus
``HETATM`` modified residues with a known parent (``MSE``→MET, ``CSO``→CYS, ...). Per complex:

* ``pos`` [n, 3] float32: Cα coordinates (Å);
* ``x`` [n, 21] float32: one-hot of the 20 standard amino acids (:data:`AMINO_ACIDS` order),
  last column = unknown;
* ``y`` [n] float32: 1 for a *pocket residue* — any heavy atom of the residue within
  ``cutoff`` Å (``<=``) of any ligand heavy atom — else 0;
* ``ligand_pos`` [m, 3] float32 (ligand heavy atoms), ``num_ligand_atoms`` [1] (to split a
  batched ``ligand_pos``), ``pocket_center`` [1, 3] = ligand heavy-atom centroid, ``name``;
* ``site_centers`` [S, 3] and ``num_sites`` [1]: the centroid of every copy of the ligand the
  labels come from (first row = ``pocket_center``); ``site_pos`` [M, 3] and
  ``num_site_atoms`` [1]: their heavy atoms.

**Sites** (``sites=``): a homo-oligomer binds one copy of the ligand per chain (1ia1: 2,
1of6: 8, 1a28: 2), in the same pocket of each chain. With ``sites="all"`` (the default) every
copy is a site, as in HOLO4k's evaluation (all relevant ligands of a structure count): a
residue is a pocket residue when it lies within ``cutoff`` of any copy, and a centre at any
copy's site is a success. With ``sites="one"`` only the copy above (posebusters' removed copy,
the first HETATM instance) labels the residues and ``ligand_pos`` / ``pocket_center`` are
its; the equivalent pockets of the other chains are then labelled negative, which a model
cannot tell apart from the labelled one.

**Metrics** (VN-EGNN / EquiPocket convention, threshold 4 Å, success when the distance is
``<=`` the threshold as in VN-EGNN's ``DCC``/``DCA`` metrics):

* DCC: :math:`\lVert \hat c - \bar x_{\text{lig}} \rVert \le 4` Å — predicted pocket centre to
  the ligand's centre;
* DCA: :math:`\min_a \lVert \hat c - x_a \rVert \le 4` Å — predicted centre to the closest
  ligand (heavy) atom.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from .cache import CachedDataset

__all__ = ["AMINO_ACIDS", "BindingSiteComplexes", "dca_success", "dcc_success",
           "list_complexes", "load_complex", "read_pdb", "read_sdf_heavy_atoms"]

AMINO_ACIDS = ("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU",
               "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL")
_AA_INDEX = {a: i for i, a in enumerate(AMINO_ACIDS)}
#: modified / protonation-state residue names -> standard parent
MODIFIED_RESIDUES = {"MSE": "MET", "CSO": "CYS", "CME": "CYS", "CSD": "CYS", "CYX": "CYS",
                     "SEP": "SER", "TPO": "THR", "PTR": "TYR", "HYP": "PRO", "MLY": "LYS",
                     "KCX": "LYS", "LLP": "LYS", "HID": "HIS", "HIE": "HIS", "HIP": "HIS"}
WATER = frozenset({"HOH", "WAT", "DOD", "H2O", "TIP", "TIP3", "SOL"})
_POSEBUSTERS_IDS = ("1ia1", "1of6", "1s3v", "1uou")
_PYMOL_1HPV = Path("/usr/share/pymol/data/tut/1hpv.pdb")


# ----------------------------------------------------------------------------------------
# File readers
# ----------------------------------------------------------------------------------------


def _element(line: str) -> str:
    el = line[76:78].strip() if len(line) >= 78 else ""
    if el.isalpha():  # old files keep a segment id / serial there instead (1hpv: "1HPV 186")
        return el.capitalize()
    name = line[12:16]
    if name[0] in " 0123456789":  # element right-justified in columns 13-14
        return name[1].upper()
    if name[0] in "HD":  # 4-character hydrogen names (HG21, ...)
        return "H"
    return name[:2].strip().capitalize()


def read_pdb(path: str | Path) -> dict[str, np.ndarray]:
    """Atoms of a (optionally gzip- or bzip2-compressed) PDB file (module docstring for the rules).

    Returns arrays of length A: ``record`` (``"ATOM"``/``"HETATM"``), ``name``, ``resname``,
    ``chain``, ``resseq`` (int), ``icode``, ``element`` and ``pos`` [A, 3] float64.
    """
    path = Path(path)
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    rows = []
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            rec = line[:6].strip()
            if rec == "ENDMDL":
                break
            if rec not in ("ATOM", "HETATM"):
                continue
            if line[16] not in " A":
                continue
            try:
                xyz = (float(line[30:38]), float(line[38:46]), float(line[46:54]))
                resseq = int(line[22:26])
            except ValueError:
                raise ValueError(f"{path}:{n}: malformed {rec} record {line.rstrip()!r}") from None
            rows.append((rec, line[12:16].strip(), line[17:20].strip(), line[21], resseq,
                         line[26], _element(line), *xyz))
    if not rows:
        raise ValueError(f"{path}: no ATOM/HETATM records")
    rec, name, resname, chain, resseq, icode, el, x, y, z = zip(*rows)
    return {"record": np.array(rec), "name": np.array(name), "resname": np.array(resname),
            "chain": np.array(chain), "resseq": np.array(resseq, dtype=np.int64),
            "icode": np.array(icode), "element": np.array(el),
            "pos": np.stack([x, y, z], axis=1).astype(np.float64)}


def read_sdf_heavy_atoms(path: str | Path) -> list[np.ndarray]:
    """Heavy-atom coordinates ``[m, 3]`` of every molecule in a V2000 SD file (V3000 blocks
    are read with RDKit)."""
    path = Path(path)
    blocks = [b for b in path.read_text().split("$$$$") if b.strip()]
    out = []
    for b, block in enumerate(blocks):
        lines = block.strip("\n").split("\n")
        if lines and not lines[0].strip() and len(lines) > 1 and "V2000" not in lines[3:4]:
            lines = lines[1:]  # the newline after a '$$$$'
        if len(lines) < 4:
            raise ValueError(f"{path}: molecule {b} is truncated")
        counts = lines[3]
        if "V3000" in counts:
            from rdkit import Chem

            mol = Chem.MolFromMolBlock(block, removeHs=False, sanitize=False)
            if mol is None:
                raise ValueError(f"{path}: molecule {b} could not be read")
            pos = mol.GetConformer().GetPositions()
            heavy = np.array([a.GetAtomicNum() > 1 for a in mol.GetAtoms()])
            out.append(pos[heavy])
            continue
        try:
            n_atoms = int(counts[:3])
            atoms = lines[4:4 + n_atoms]
            xyz = np.array([[float(a[0:10]), float(a[10:20]), float(a[20:30])] for a in atoms])
            sym = [a[31:34].strip() for a in atoms]
        except (ValueError, IndexError):
            raise ValueError(f"{path}: molecule {b}: malformed V2000 atom block") from None
        if len(atoms) != n_atoms:
            raise ValueError(f"{path}: molecule {b}: expected {n_atoms} atoms, got {len(atoms)}")
        out.append(xyz[[s not in ("H", "D") for s in sym]].reshape(-1, 3))
    return out


# ----------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def list_complexes() -> list[dict]:
    """Every known complex with ``available`` telling whether its files were found.

    Each dict: ``name``, ``source`` (package), ``license``, ``protein`` (path), ``ligand``
    (SDF path, or ``None`` when the ligand is a HETATM group of ``protein``),
    ``ligand_resname``, ``reference_pose`` (posebusters' removed-ligand pose or ``None``) and
    ``available``.
    """
    out = []
    pb = _package_dir("posebusters")
    for pid in _POSEBUSTERS_IDS:
        folder = pb / "datasets" / "pdb" / pid if pb else Path("posebusters-not-installed")
        prot = folder / f"{pid}_protein_one_lig_removed.pdb"
        lig = folder / f"{pid}_ligands.sdf"
        pose = folder / f"{pid}_ligand.sdf"
        out.append({"name": pid, "source": "posebusters", "license": "BSD-3 (PDB data CC0)",
                    "protein": prot, "ligand": lig, "ligand_resname": None,
                    "reference_pose": pose if pose.exists() else None,
                    "available": prot.exists() and lig.exists()})
    mda = _package_dir("MDAnalysisTests")
    for fname, res in (("1a28.pdb.gz", "STR"), ("1hvr.pdb", "XK2"), ("6msm.pdb.bz2", "ATP")):
        path = mda / "data" / fname if mda else Path("MDAnalysisTests-not-installed") / fname
        out.append({"name": fname.split(".")[0], "source": "MDAnalysisTests",
                    "license": "LGPL-3+ (PDB data CC0)", "protein": path, "ligand": None,
                    "ligand_resname": res, "reference_pose": None, "available": path.exists()})
    out.append({"name": "1hpv", "source": "pymol-data (Debian)",
                "license": "PyMOL open-source (BSD-like; PDB data CC0)", "protein": _PYMOL_1HPV,
                "ligand": None, "ligand_resname": "478", "reference_pose": None,
                "available": _PYMOL_1HPV.exists()})
    return out


# ----------------------------------------------------------------------------------------
# Complex -> residue graph
# ----------------------------------------------------------------------------------------


def _residue_keys(atoms: dict[str, np.ndarray]) -> np.ndarray:
    """An integer id per atom for its residue (chain, resseq, icode, resname), in file order."""
    keys = [f"{c}|{r}|{i}|{n}" for c, r, i, n in zip(atoms["chain"], atoms["resseq"],
                                                       atoms["icode"], atoms["resname"])]
    ids, seen = np.empty(len(keys), dtype=np.int64), {}
    for a, k in enumerate(keys):
        ids[a] = seen.setdefault(k, len(seen))
    return ids


def _ligands_from_hetatm(atoms: dict[str, np.ndarray], resname: str,
                         heavy: np.ndarray) -> list[np.ndarray]:
    """Heavy atoms of every instance (chain, resseq, icode) of HETATM group ``resname``, in
    file order."""
    sel = (atoms["record"] == "HETATM") & (atoms["resname"] == resname) & heavy
    if not sel.any():
        raise ValueError(f"no HETATM ligand with resname {resname!r}")
    keys = list(zip(atoms["chain"][sel], atoms["resseq"][sel], atoms["icode"][sel]))
    pos = atoms["pos"][sel]
    return [pos[[k == key for k in keys]] for key in dict.fromkeys(keys)]


def _ligand_copies(entry: dict, atoms: dict[str, np.ndarray],
                   heavy: np.ndarray) -> list[np.ndarray]:
    """Every copy of the entry's ligand (heavy atoms), the reference copy first: posebusters'
    removed copy (closest centroid to ``reference_pose``), else the first in the file."""
    if entry.get("ligand") is not None:
        copies = read_sdf_heavy_atoms(entry["ligand"])
        if not copies:
            raise ValueError(f"{entry['ligand']}: no molecules")
        pose = entry.get("reference_pose")
        if len(copies) > 1 and pose is not None:
            ref = read_sdf_heavy_atoms(pose)[0].mean(0)
            first = min(range(len(copies)),
                        key=lambda c: float(np.linalg.norm(copies[c].mean(0) - ref)))
            copies.insert(0, copies.pop(first))
    else:
        copies = _ligands_from_hetatm(atoms, entry["ligand_resname"], heavy)
    for c in copies:
        if c.shape[0] == 0:
            raise ValueError(f"{entry['name']}: a copy of the ligand has no heavy atoms")
    return copies


def _check_options(cutoff: float, sites: str) -> None:
    if not isinstance(cutoff, (int, float)) or not cutoff > 0:
        raise ValueError(f"cutoff must be a positive float (Å), got {cutoff!r}")
    if sites not in ("all", "one"):
        raise ValueError(f"sites must be 'all' or 'one', got {sites!r}")


def load_complex(entry: dict, cutoff: float = 4.5, sites: str = "all") -> Data:
    """Builds the residue graph of one :func:`list_complexes` entry (module docstring);
    ``sites`` ``"all"`` labels the pockets of every copy of the ligand, ``"one"`` those of the
    reference copy only."""
    _check_options(cutoff, sites)
    atoms = read_pdb(entry["protein"])
    heavy = ~np.isin(atoms["element"], ("H", "D"))
    copies = _ligand_copies(entry, atoms, heavy)
    if sites == "one":
        copies = copies[:1]
    lig, site_atoms = copies[0], np.concatenate(copies)

    resname = atoms["resname"]
    parent = np.array([MODIFIED_RESIDUES.get(r, r) for r in resname])
    protein = heavy & ((atoms["record"] == "ATOM")
                       | ((atoms["record"] == "HETATM") & np.isin(resname,
                                                                  list(MODIFIED_RESIDUES))))
    protein &= ~np.isin(resname, list(WATER))
    rid = _residue_keys(atoms)
    ca = protein & (atoms["name"] == "CA") & (atoms["element"] == "C")
    # one node per residue with a Cα (first Cα if a file repeats it), in file order
    node_res, first_ca = np.unique(rid[ca], return_index=True)
    order = np.argsort(first_ca)
    node_res, ca_atoms = node_res[order], np.flatnonzero(ca)[first_ca[order]]
    node_of_res = np.full(rid.max() + 1, -1, dtype=np.int64)
    node_of_res[node_res] = np.arange(node_res.size)

    # pocket label: min distance from each protein heavy atom to the ligand (blockwise)
    prot_idx = np.flatnonzero(protein & (node_of_res[rid] >= 0))
    p = torch.from_numpy(atoms["pos"][prot_idx])
    lig_t = torch.from_numpy(site_atoms)
    dmin = torch.cat([torch.cdist(chunk, lig_t).min(1).values for chunk in p.split(8192)])
    close = prot_idx[(dmin <= cutoff).numpy()]
    y = torch.zeros(node_res.size, dtype=torch.float32)
    y[torch.from_numpy(np.unique(node_of_res[rid[close]]))] = 1.0

    aa = torch.tensor([_AA_INDEX.get(parent[a], len(AMINO_ACIDS)) for a in ca_atoms])
    x = torch.nn.functional.one_hot(aa, len(AMINO_ACIDS) + 1).float()
    return Data(pos=torch.from_numpy(atoms["pos"][ca_atoms]).float(), x=x, y=y,
                ligand_pos=torch.from_numpy(lig).float(),
                num_ligand_atoms=torch.tensor([lig.shape[0]]),
                pocket_center=torch.from_numpy(lig.mean(0, keepdims=True)).float(),
                site_centers=torch.from_numpy(np.stack([c.mean(0) for c in copies])).float(),
                num_sites=torch.tensor([len(copies)]),
                site_pos=torch.from_numpy(site_atoms).float(),
                num_site_atoms=torch.tensor([site_atoms.shape[0]]), name=entry["name"])


class BindingSiteComplexes(CachedDataset):
    """The available complexes of :func:`list_complexes` as residue graphs.

    Args:
        root: Cache folder (default ``cache_dir("molecules", "complexes")``).
        cutoff: Pocket-residue distance cutoff in Å (default 4.5).
        sites: ``"all"`` (default): every copy of the ligand labels its pocket; ``"one"``: the
            reference copy only (module docstring).
        names: Restrict to these complex names (default: every available one).
        transform, pre_transform, pre_filter, force_reload: As in PyG.
    """

    cache_subdir = ("molecules", "complexes")

    def __init__(self, root: str | None = None, cutoff: float = 4.5, sites: str = "all",
                 names: Sequence[str] | None = None, transform: Callable | None = None,
                 pre_transform: Callable | None = None, pre_filter: Callable | None = None,
                 force_reload: bool = False) -> None:
        _check_options(cutoff, sites)
        self.cutoff, self.sites = float(cutoff), sites
        known = list_complexes()
        if names is not None:
            unknown = set(names) - {e["name"] for e in known}
            if unknown:
                raise ValueError(f"names: unknown complexes {sorted(unknown)}; known: "
                                 f"{[e['name'] for e in known]}")
            missing = [e["name"] for e in known if e["name"] in names and not e["available"]]
            if missing:
                raise FileNotFoundError(f"complexes {missing} are not installed "
                                        "(see graphattn.datasets.complexes.list_complexes())")
        self.entries = [e for e in known if e["available"]
                        and (names is None or e["name"] in names)]
        if not self.entries:
            raise FileNotFoundError("no protein-ligand complex found: pip install "
                                    "posebusters==0.6.5 (and/or mdanalysistests==2.11.0)")
        super().__init__(root, transform, pre_transform, pre_filter, force_reload)

    @property
    def processed_file_names(self) -> list[str]:
        names = "-".join(e["name"] for e in self.entries)
        return [f"complexes_{names}_cutoff{self.cutoff:g}_sites-{self.sites}.pt"]

    def process(self) -> None:
        self.save_items(load_complex(entry, self.cutoff, self.sites) for entry in self.entries)


# ----------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------


def _check_centers(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, 3], got {type(t).__name__}")
    if t.dim() != 2 or t.size(1) != 3:
        raise ValueError(f"{name} must have shape [B, 3], got {tuple(t.shape)}")


def dcc_success(pred_center: Tensor, true_center: Tensor | Sequence[Tensor],
                threshold: float = 4.0) -> Tensor:
    """DCC success per complex: ``|pred_center - true_center| <= threshold`` (Å).

    ``true_center`` is the ligand centre (``pocket_center``), ``[B, 3]``; or, for complexes
    with several sites, a list of ``B`` tensors ``[S_b, 3]`` (``site_centers``; a batched one
    splits with ``batch.site_centers.split(batch.num_sites.tolist())``), where the closest
    site counts. The 4 Å default and the ``<=`` follow VN-EGNN / EquiPocket. Returns ``[B]``
    bool.
    """
    _check_centers(pred_center, "pred_center")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold!r}")
    if isinstance(true_center, Tensor):
        _check_centers(true_center, "true_center")
        true_center = list(true_center.unsqueeze(1))
    elif not isinstance(true_center, Sequence):
        raise TypeError("true_center must be a [B, 3] tensor or a list of [S, 3] tensors, got "
                        f"{type(true_center).__name__}")
    if len(true_center) != pred_center.size(0):
        raise ValueError(f"pred_center has {pred_center.size(0)} rows but true_center has "
                         f"{len(true_center)}")
    return _closest_within(pred_center, true_center, threshold, "true_center", "S")


def dca_success(pred_center: Tensor, ligand_pos: Sequence[Tensor],
                threshold: float = 4.0) -> Tensor:
    """DCA success per complex: the distance from ``pred_center[b]`` to the *closest* atom of
    ligand ``b`` is ``<= threshold`` (Å; VN-EGNN / EquiPocket, 4 Å).

    Args:
        pred_center: ``[B, 3]`` predicted pocket centres.
        ligand_pos: ``B`` tensors ``[m_b, 3]`` (ligand heavy atoms); a batched
            ``ligand_pos`` splits with ``batch.ligand_pos.split(batch.num_ligand_atoms.tolist())``.
        threshold: Success distance in Å.

    Returns:
        ``[B]`` bool.
    """
    _check_centers(pred_center, "pred_center")
    if isinstance(ligand_pos, Tensor) or not isinstance(ligand_pos, Sequence):
        raise TypeError("ligand_pos must be a list of [m, 3] tensors, one per row of "
                        "pred_center")
    if len(ligand_pos) != pred_center.size(0):
        raise ValueError(f"ligand_pos has {len(ligand_pos)} ligands but pred_center has "
                         f"{pred_center.size(0)} rows")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold!r}")
    return _closest_within(pred_center, ligand_pos, threshold, "ligand_pos", "m")


def _closest_within(pred_center: Tensor, points: Sequence[Tensor], threshold: float,
                    name: str, rows: str) -> Tensor:
    """``[B]`` bool: whether the closest of ``points[b]`` (``[n_b, 3]``, ``n_b >= 1``, checked
    and named ``name[b]``, ``rows`` for ``n_b``) lies within ``threshold`` of
    ``pred_center[b]``; the distances in float64. DCC and DCA both reduce to it."""
    out = torch.zeros(len(points), dtype=torch.bool, device=pred_center.device)
    for b, pts in enumerate(points):
        if not isinstance(pts, Tensor) or pts.dim() != 2 or pts.size(1) != 3 or pts.size(0) == 0:
            got = tuple(pts.shape) if isinstance(pts, Tensor) else type(pts).__name__
            raise ValueError(f"{name}[{b}] must have shape [{rows}, 3] with {rows} >= 1, "
                             f"got {got}")
        d = (pts.double() - pred_center[b].double()).norm(dim=-1).min()
        out[b] = bool(d <= threshold)
    return out
