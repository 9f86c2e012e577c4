"""Radius / kNN / periodic neighbour graphs against brute-force references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from graphattn.geometry import (
    edge_vectors,
    knn,
    knn_graph,
    periodic_radius_graph,
    radius,
    radius_graph,
)
from graphattn.ops import native_available, set_backend

needs_ext = pytest.mark.skipif(not native_available(), reason="graphattn._C not built")
# "auto" takes the C++ cell lists on the CPU when the extension is built; "reference" the
# blockwise torch path (both must give the same graph)
BACKENDS = ["auto", "reference"]


def _brute_radius(pos, r, batch, loop):
    n = pos.size(0)
    d = (pos.double()[:, None] - pos.double()[None]).norm(dim=-1)  # d[i, j]
    edges = set()
    for i in range(n):
        for j in range(n):
            if batch[i] == batch[j] and d[i, j] < r and (loop or i != j):
                edges.add((j, i))
    return edges, d


def _as_set(ei):
    return set(map(tuple, ei.t().tolist()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block", [7, 64, 4096])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_radius_graph_matches_brute_force(block, loop, shuffle, backend) -> None:
    g = torch.Generator().manual_seed(1)
    pos = torch.rand(90, 3, generator=g) * 3
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor([20, 30, 1, 39]))
    if shuffle:
        batch = batch[torch.randperm(90, generator=g)]
    r = 0.8
    ref, d = _brute_radius(pos, r, batch, loop)
    assert ((d - r).abs() > 1e-5).all()  # no pair on the boundary: both sides agree exactly
    with set_backend(backend):
        ei = radius_graph(pos, r, batch, loop=loop, block=block)
        again = radius_graph(pos, r, batch, loop=loop, block=block)
    assert _as_set(ei) == ref and ei.size(1) == len(ref)
    # sorted by target then source
    key = ei[1] * 1000 + ei[0]
    assert (key[1:] > key[:-1]).all()
    assert torch.equal(ei, again)


@pytest.mark.parametrize("backend", BACKENDS)
def test_radius_graph_max_num_neighbors_keeps_closest(backend) -> None:
    g = torch.Generator().manual_seed(2)
    pos = torch.randn(50, 3, generator=g)
    with set_backend(backend):
        ei = radius_graph(pos, 10.0, max_num_neighbors=5, block=8)
    assert torch.bincount(ei[1], minlength=50).eq(5).all()
    d = torch.cdist(pos.double(), pos.double())
    d.fill_diagonal_(math.inf)
    for i in range(50):
        expect = set(torch.argsort(d[i])[:5].tolist())
        assert set(ei[0, ei[1] == i].tolist()) == expect


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loop", [False, True])
def test_knn_graph_matches_brute_force(loop, backend) -> None:
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(60, 3, generator=g)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([25, 4, 31]))
    k = 6
    with set_backend(backend):
        ei = knn_graph(pos, k, batch, loop=loop, block=16)
    d = torch.cdist(pos.double(), pos.double())
    ref = set()
    for i in range(60):
        row = d[i].clone()
        row[batch != batch[i]] = math.inf
        if not loop:
            row[i] = math.inf
        cand = [j for j in torch.argsort(row).tolist() if math.isfinite(row[j])][:k]
        ref |= {(j, i) for j in cand}
    assert _as_set(ei) == ref
    deg = torch.bincount(ei[1], minlength=60)
    assert deg[25:29].eq(4 if loop else 3).all() and deg[:25].eq(k).all()


def test_single_atom_cubic_cell_six_images() -> None:
    a = 2.5
    pos = torch.tensor([[0.3, 0.7, 1.1]])
    ei, shift = periodic_radius_graph(pos, torch.eye(3) * a, 1.01 * a)
    assert ei.tolist() == [[0] * 6, [0] * 6]
    expect = sorted([tuple(s * a for s in v) for v in
                     [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]])
    assert sorted(map(tuple, shift.tolist())) == expect  # exact: shift = S @ cell
    _, length = edge_vectors(pos, ei, shift)
    assert torch.allclose(length, torch.full((6,), a))
    # partially periodic: only the in-plane images
    ei2, shift2 = periodic_radius_graph(pos, torch.eye(3) * a, 1.01 * a, pbc=(True, True, False))
    assert ei2.size(1) == 4 and shift2[:, 2].eq(0).all()
    slab = torch.tensor([[a, 0.0, 0.0], [0.0, a, 0.0], [0.0, 0.0, 0.0]])  # zero non-periodic row
    ei3, shift3 = periodic_radius_graph(pos, slab, 1.01 * a, pbc=(True, True, False))
    assert torch.equal(ei3, ei2) and torch.equal(shift3, shift2)
    with pytest.raises(ValueError, match="cell"):
        periodic_radius_graph(pos, slab, 1.0)  # the zero row is periodic: singular


def _brute_periodic(pos, cell, r, m):
    out = set()
    for S in itertools.product(range(-m, m + 1), repeat=3):
        sh = torch.tensor(S, dtype=torch.float64) @ cell.double()
        for i in range(pos.size(0)):
            for j in range(pos.size(0)):
                d = float((pos[j].double() + sh - pos[i].double()).norm())
                if 0 < d < r:
                    out.add((j, i, S))
    return out


def _with_images(ei, shift, cell):
    S = torch.round(shift.double() @ torch.linalg.inv(cell.double())).long()
    return {(j, i, tuple(s)) for (j, i), s in zip(ei.t().tolist(), S.tolist())}


@pytest.mark.parametrize("r", [0.8, 1.3])
def test_fcc_two_atom_cell_matches_5x5x5_enumeration(r) -> None:
    a = 1.0
    cell = torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]) * a  # fcc primitive
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.25, 0.25, 0.25]]) * a  # zincblende basis
    ei, shift = periodic_radius_graph(pos, cell, r)
    got = _with_images(ei, shift, cell)
    m = 2 if r < 1.0 else 3  # plane spacing a/sqrt(3): +-2 images suffice for r = 0.8
    assert got == _brute_periodic(pos, cell, r, m)
    assert len(got) == ei.size(1)
    _, length = edge_vectors(pos, ei, shift)
    assert (length > 0).all() and (length < r).all()
    # nearest-neighbour shell: 4 bonds of a*sqrt(3)/4 per atom
    nn = (length - a * math.sqrt(3) / 4).abs() < 1e-5
    assert torch.bincount(ei[1][nn], minlength=2).tolist() == [4, 4]


def _energy(pos, cell, r):
    ei, shift = periodic_radius_graph(pos, cell, r)
    _, length = edge_vectors(pos.double(), ei, shift.double())
    return float((1.0 / length).sum()), ei.size(1)


def test_periodic_energy_invariances() -> None:
    g = torch.Generator().manual_seed(4)
    cell = torch.tensor([[3.0, 0.0, 0.0], [0.7, 2.8, 0.0], [0.4, -0.5, 3.2]], dtype=torch.float64)
    pos = torch.rand(5, 3, generator=g, dtype=torch.float64) @ cell
    r = 4.0  # larger than every lattice-plane spacing
    e0, n0 = _energy(pos, cell, r)
    moved = pos.clone()
    moved[2] += 2 * cell[0] - cell[2]
    e1, n1 = _energy(moved, cell, r)
    e2, n2 = _energy(pos + torch.tensor([10.3, -4.2, 7.7], dtype=torch.float64), cell, r)
    assert n0 == n1 == n2
    assert e1 == pytest.approx(e0, rel=1e-12) and e2 == pytest.approx(e0, rel=1e-12)


def test_edge_vectors_convention() -> None:
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    ei = torch.tensor([[1], [0]])  # source 1 -> target 0
    vec, length = edge_vectors(pos, ei)
    assert vec.tolist() == [[1.0, 2.0, 2.0]] and length.tolist() == [3.0]
    vec, _ = edge_vectors(pos, ei, torch.tensor([[1.0, 0.0, 0.0]]))
    assert vec.tolist() == [[2.0, 2.0, 2.0]]


def test_bad_inputs() -> None:
    pos = torch.rand(4, 3)
    with pytest.raises(ValueError, match="pos"):
        radius_graph(torch.rand(4, 2), 1.0)
    with pytest.raises(ValueError, match="r must"):
        radius_graph(pos, -1.0)
    with pytest.raises(ValueError, match="batch"):
        radius_graph(pos, 1.0, batch=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="k must"):
        knn_graph(pos, 0)
    with pytest.raises(ValueError, match="batch"):
        knn_graph(pos, 2, batch=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="pos"):
        periodic_radius_graph(torch.rand(3), torch.eye(3), 1.0)
    with pytest.raises(ValueError, match="cell"):
        periodic_radius_graph(pos, torch.eye(2), 1.0)
    with pytest.raises(ValueError, match="cell"):
        periodic_radius_graph(pos, torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="r must"):
        periodic_radius_graph(pos, torch.eye(3), -0.5)
    with pytest.raises(ValueError, match="shift"):
        edge_vectors(pos, torch.tensor([[0], [1]]), torch.zeros(2, 3))



@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_coordinates_raise(bad) -> None:
    """A NaN or inf coordinate fails every distance test: the builders would drop its atom's
    pairs (a wrong graph, and finite energies of a broken input) instead of refusing it."""
    pos = torch.rand(4, 3)
    pos[1, 2] = bad
    for build in (lambda: radius_graph(pos, 1.0), lambda: knn_graph(pos, 2),
                  lambda: periodic_radius_graph(pos, torch.eye(3) * 2, 1.0)):
        with pytest.raises(ValueError, match="pos must be finite"):
            build()
    cell = torch.eye(3) * 2
    cell[0, 1] = bad
    with pytest.raises(ValueError, match="cell must be finite"):
        periodic_radius_graph(torch.rand(4, 3), cell, 1.0)


def test_periodic_image_count_is_bounded() -> None:
    """An atom a million cells away, or a cell given in the wrong units, would need millions
    of images (each a pass over all pairs): refused with the counts, before any is built."""
    import graphattn.geometry as geo

    with pytest.raises(ValueError, match="MAX_IMAGES"):
        periodic_radius_graph(torch.tensor([[0.0, 0, 0], [1e6, 0, 0]]), torch.eye(3) * 2, 1.1)
    with pytest.raises(ValueError, match=r"wrap 'pos' into the cell or check the units"):
        periodic_radius_graph(torch.rand(3, 3), torch.eye(3) * 1e-3, 1.1)
    # the bound is the product of the per-axis counts: 3 x 3 x 3 = 27 images here
    pos = torch.rand(5, 3, generator=torch.Generator().manual_seed(0))
    ei, _ = periodic_radius_graph(pos, torch.eye(3) * 2, 0.5)
    geo_max = geo.MAX_IMAGES
    try:
        geo.MAX_IMAGES = 27
        ei2, _ = periodic_radius_graph(pos, torch.eye(3) * 2, 0.5)
        assert torch.equal(ei, ei2)
        geo.MAX_IMAGES = 26
        with pytest.raises(ValueError, match="3 x 3 x 3 images"):
            periodic_radius_graph(pos, torch.eye(3) * 2, 0.5)
    finally:
        geo.MAX_IMAGES = geo_max


def test_pbc_and_cell_types() -> None:
    """pbc: three bools or 0 / 1 (ASE's forms) or one bool for all axes; a string (whose
    characters are all truthy) or a flag 2 raises, as does a complex cell."""
    pos = torch.rand(4, 3, generator=torch.Generator().manual_seed(1)) * 2
    cell = torch.eye(3) * 2
    base, _ = periodic_radius_graph(pos, cell, 1.2, pbc=(True, True, False))
    for same in ([1, 1, 0], (True, True, False), torch.tensor([True, True, False])):
        assert torch.equal(periodic_radius_graph(pos, cell, 1.2, pbc=same)[0], base)
    assert torch.equal(periodic_radius_graph(pos, cell, 1.2, pbc=True)[0],
                       periodic_radius_graph(pos, cell, 1.2)[0])
    for bad in ("FFF", (1, 2, 0), (True, True), 1.0):
        with pytest.raises(TypeError, match="pbc must be three bools"):
            periodic_radius_graph(pos, cell, 1.2, pbc=bad)
    with pytest.raises(TypeError, match="cell must be a real tensor"):
        periodic_radius_graph(pos, cell.to(torch.complex64), 1.2)
    import numpy as np

    for same in (np.array([1.0, 1.0, 0.0]), np.array([True, True, False]),
                 (p for p in (True, True, False))):  # forms accepted before the checks
        assert torch.equal(periodic_radius_graph(pos, cell, 1.2, pbc=same)[0], base)
    every = periodic_radius_graph(pos, cell, 1.2)[0]
    for one in (torch.tensor(True), np.array(True), np.True_):
        assert torch.equal(periodic_radius_graph(pos, cell, 1.2, pbc=one)[0], every)
    with pytest.raises(TypeError, match="pbc must be three bools"):
        periodic_radius_graph(pos, cell, 1.2, pbc=torch.tensor(1))


def test_sorted_batch_with_huge_or_gapped_ids() -> None:
    """Graph ids of a sorted batch index nothing: ids 0, 0, 2**36 build the graph of 0, 0, 1
    (no buffer per id up to the largest)."""
    pos = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0.2, 0, 0]])
    huge = torch.tensor([0, 0, 2 ** 36])
    want = radius_graph(pos, 1.0, batch=torch.tensor([0, 0, 1]))
    assert torch.equal(radius_graph(pos, 1.0, batch=huge), want)
    assert _as_set(want) == {(0, 1), (1, 0)}
    assert torch.equal(knn_graph(pos, 1, batch=huge),
                       knn_graph(pos, 1, batch=torch.tensor([0, 0, 1])))


def test_edge_vectors_checks_its_index_and_shift() -> None:
    pos = torch.rand(3, 3)
    with pytest.raises(ValueError, match=r"edge_index must hold node indices in \[0, 3\)"):
        edge_vectors(pos, torch.tensor([[0, -1], [1, 0]]))
    with pytest.raises(ValueError, match=r"edge_index must hold node indices in \[0, 3\)"):
        edge_vectors(pos, torch.tensor([[0, 5], [1, 0]]))
    with pytest.raises(TypeError, match="edge_index must be an int64"):
        edge_vectors(pos, torch.tensor([[0.0], [1.0]]))
    vec, _ = edge_vectors(pos, torch.tensor([[0], [1]], dtype=torch.int32))  # as index_select
    torch.testing.assert_close(vec, pos[:1] - pos[1:2])
    ei = torch.tensor([[0], [1]])
    with pytest.raises(TypeError, match="shift must be a torch.Tensor"):
        edge_vectors(pos, ei, [[0.0, 0.0, 0.0]])
    with pytest.raises(TypeError, match="shift must be a real floating-point tensor"):
        edge_vectors(pos, ei, torch.zeros(1, 3, dtype=torch.complex64))

def test_empty_and_memory_blocking() -> None:
    assert radius_graph(torch.empty(0, 3), 1.0).shape == (2, 0)
    assert knn_graph(torch.empty(0, 3), 3).shape == (2, 0)
    ei, sh = periodic_radius_graph(torch.empty(0, 3), torch.eye(3), 1.0)
    assert ei.shape == (2, 0) and sh.shape == (0, 3)


def test_pair_budget_shrinks_blocks_without_changing_the_graph(monkeypatch) -> None:
    import graphattn.geometry as geo

    g = torch.Generator().manual_seed(5)
    pos = torch.rand(70, 3, generator=g) * 2
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([30, 25, 15]))
    ref = radius_graph(pos, 0.6, batch)
    ref_knn = knn_graph(pos, 4, batch)
    ref_pbc = periodic_radius_graph(pos, torch.eye(3) * 2.0, 0.9)
    with set_backend("reference"):
        ref_bip = (radius(pos, pos[:20], 0.6, batch, batch[:20]), knn(pos, pos[:20], 4),
                   knn(pos, pos[25:50], 3, batch, batch[25:50]))
    monkeypatch.setattr(geo, "_MAX_PAIRS", 40)  # forces 1-2 target rows per step
    with set_backend("reference"):  # the blockwise path (the C++ one has no blocks)
        assert torch.equal(radius_graph(pos, 0.6, batch), ref)
        assert torch.equal(radius(pos, pos[:20], 0.6, batch, batch[:20]), ref_bip[0])
        assert torch.equal(knn(pos, pos[:20], 4), ref_bip[1])
        assert torch.equal(knn(pos, pos[25:50], 3, batch, batch[25:50]), ref_bip[2])
    assert torch.equal(knn_graph(pos, 4, batch), ref_knn)
    got = periodic_radius_graph(pos, torch.eye(3) * 2.0, 0.9)
    assert torch.equal(got[0], ref_pbc[0]) and torch.equal(got[1], ref_pbc[1])


def _reference_radius(*args, **kwargs):
    with set_backend("reference"):
        return radius_graph(*args, **kwargs)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_list_radius_graph_equals_blockwise(dtype) -> None:
    """The C++ cell lists give the blockwise graph edge for edge (same order) over random
    batches: sorted and shuffled ids, loops, neighbour limits, a far outlier (the grid's cell
    budget doubles the cell edge), clustered and coincident atoms (distance ties)."""
    g = torch.Generator().manual_seed(11)
    for trial in range(60):
        n = int(torch.randint(0, 400, (), generator=g))
        pos = torch.randn(n, 3, generator=g, dtype=dtype) * (0.2 + 4 * float(torch.rand(
            (), generator=g)))
        if trial % 5 == 0 and n > 3:
            pos[1] = 1e4  # outlier: a grid of cells of edge r would not fit the budget
        if trial % 6 == 0 and n > 10:
            pos[5:10] = pos[4]  # coincident atoms: ties in distance
        batch = torch.randint(0, 1 + trial % 5, (n,), generator=g)
        if trial % 2:
            batch = batch.sort().values
        r = 0.05 + 2.5 * float(torch.rand((), generator=g))
        kw = {"loop": trial % 3 == 0, "max_num_neighbors": [None, 0, 1, 4, 12][trial % 5]}
        got = radius_graph(pos, r, batch, **kw)
        assert torch.equal(got, _reference_radius(pos, r, batch, **kw)), (trial, kw)


@needs_ext
def test_cell_list_pairs_at_a_cell_edge_and_thread_count() -> None:
    """Atoms on a lattice of spacing just below r (pairs that sit a rounding away from a
    cell edge of length ~r) and two large graphs (grids of cell edge r and r / 2): equal to
    the blockwise path with 1 and 2 threads."""
    axis = torch.arange(12, dtype=torch.float64) * (1.0 - 1e-9)
    pos = torch.cartesian_prod(axis, axis, axis)
    got = radius_graph(pos, 1.0)
    assert torch.equal(got, _reference_radius(pos, 1.0))
    assert torch.bincount(got[1]).max() == 6  # the six lattice neighbours
    g = torch.Generator().manual_seed(3)
    # a sparse cloud (cells of edge r: 31^3 of edge r / 2 would exceed the 2 n + 8 budget)
    # and a dense one (cells of edge r / 2, 5^3 searched: 11^3 <= 2 n + 8)
    clouds = [(torch.rand(6000, 3, generator=g) * 30, 2.0),
              (torch.rand(3000, 3, generator=g) * 10, 2.0)]
    _equal_on_1_and_2_threads(radius_graph, _reference_radius, clouds)


def _equal_on_1_and_2_threads(build, reference, cases) -> None:
    """``build(*args)`` equals ``reference(*args)`` for each ``args`` of ``cases`` with one
    and with two threads."""
    threads = torch.get_num_threads()
    try:
        for args in cases:
            want = reference(*args)
            for t in (1, 2):
                torch.set_num_threads(t)
                assert torch.equal(build(*args), want), (t, [getattr(a, "shape", a)
                                                              for a in args])
    finally:
        torch.set_num_threads(threads)


@needs_ext
def test_cell_list_radius_graph_bad_input_from_cpp() -> None:
    """The C++ op checks its own arguments (ValueError / TypeError naming them), whatever
    the Python wrapper checked before."""
    def op(x, r, ptr, *rest, y=None, yptr=None):
        y = x if y is None else y
        return torch.ops.graphattn.radius(x, y, r, ptr, ptr if yptr is None else yptr, *rest)

    pos, ptr = torch.rand(4, 3), torch.tensor([0, 4])
    with pytest.raises(ValueError, match=r"'src' must have shape \[N, 3\]"):
        op(torch.rand(4, 2), 1.0, ptr)
    with pytest.raises(ValueError, match=r"'tgt' must have shape \[N, 3\]"):
        op(pos, 1.0, ptr, y=torch.rand(4))
    with pytest.raises(TypeError, match="'src' must be float32 or float64"):
        op(pos.half(), 1.0, ptr)
    with pytest.raises(TypeError, match="'tgt' must have the dtype of 'src'"):
        op(pos, 1.0, ptr, y=pos.double())
    with pytest.raises(ValueError, match="'src' must be finite: row 2"):
        op(torch.tensor([[0.0, 0, 0], [1, 1, 1], [math.nan, 0, 0]]), 1.0, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="'tgt' must be finite: row 0"):
        op(pos, 1.0, ptr, y=torch.full((1, 3), math.inf), yptr=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="'r' must be a finite non-negative"):
        op(pos, -1.0, ptr)
    with pytest.raises(ValueError, match="'r' must be a finite non-negative"):
        op(pos, math.inf, ptr)
    with pytest.raises(ValueError, match=r"'exclude_offset' must lie in \[0, number of sources"):
        op(pos, 1.0, ptr, -2)
    with pytest.raises(ValueError, match=r"'exclude_offset' must lie in \[0, number of sources"):
        op(pos, 1.0, ptr, 2 ** 62)
    with pytest.raises(ValueError, match="'max_num_neighbors' must be >= 0"):
        op(pos, 1.0, ptr, 0, -2)
    with pytest.raises(TypeError, match="'src_ptr' must be an int64"):
        op(pos, 1.0, ptr.int(), yptr=ptr)
    with pytest.raises(ValueError, match="'src_ptr' must be a non-empty 1-D"):
        op(pos, 1.0, torch.zeros(0, dtype=torch.long), yptr=ptr)
    with pytest.raises(ValueError, match=r"'src_ptr' must run from 0 to the number of sources"):
        op(pos, 1.0, torch.tensor([0, 5]), yptr=ptr)
    with pytest.raises(ValueError, match=r"'tgt_ptr' must run from 0 to the number of targets"):
        op(pos, 1.0, ptr, yptr=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="'src_ptr' must be non-decreasing"):
        op(pos, 1.0, torch.tensor([0, 3, 2, 4]), yptr=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="the same number of graphs, got 1 and 2"):
        op(pos, 1.0, ptr, yptr=torch.tensor([0, 2, 4]))
    # empty graphs inside ptr are fine, and so are graphs with targets but no sources
    assert torch.equal(op(pos, 10.0, torch.tensor([0, 0, 4, 4]), 0), radius_graph(pos, 10.0))
    got = op(pos, 10.0, torch.tensor([0, 0, 4]), y=pos, yptr=torch.tensor([0, 2, 4]))
    assert torch.equal(got, torch.tensor([[0, 1, 2, 3] * 2, [2] * 4 + [3] * 4]))


@needs_ext
def test_cell_list_op_passes_opcheck() -> None:
    """Schema, fake (shape) implementation and dispatch of ``graphattn::radius``."""
    g = torch.Generator().manual_seed(6)
    pos = torch.rand(30, 3, generator=g, dtype=torch.float64) * 2
    ptr = torch.tensor([0, 12, 30])
    for args in ((pos, pos, 0.8, ptr, ptr, 0, -1), (pos, pos[:20], 1.2, ptr,
                                                    torch.tensor([0, 5, 20]), -1, 3)):
        torch.library.opcheck(torch.ops.graphattn.radius.default, args)


@needs_ext
def test_cell_list_targets_outside_the_sources_box() -> None:
    """Targets beyond the sources' box (near it and very far) are clamped to its border
    cells: the bipartite pairs equal a brute force."""
    g = torch.Generator().manual_seed(4)
    src = torch.rand(200, 3, generator=g, dtype=torch.float64) * 4
    tgt = torch.cat([torch.rand(50, 3, generator=g, dtype=torch.float64) * 8 - 2,
                     torch.tensor([[1e300, 0.0, 0.0], [-1e12, 2.0, 2.0]], dtype=torch.float64)])
    ei = torch.ops.graphattn.radius(src, tgt, 0.7, torch.tensor([0, 200]), torch.tensor([0, 52]))
    d = torch.cdist(tgt, src)  # [targets, sources]
    want = {(s, t) for t, s in (d < 0.7).nonzero().tolist()}
    assert _as_set(ei) == want and ei.size(1) == len(want)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_list_periodic_graph_equals_blockwise(dtype) -> None:
    """Triclinic cells, partial periodicity, atoms outside the cell and cutoffs beyond the
    cell size: the C++ path (images as sources) gives the blockwise graph and shifts."""
    g = torch.Generator().manual_seed(8)
    for trial in range(12):
        n = 1 + int(torch.randint(0, 40, (), generator=g))
        cell = (torch.eye(3) * 3 + torch.randn(3, 3, generator=g) * 0.6).to(dtype)
        pos = (torch.rand(n, 3, generator=g) * 1.6 - 0.3).to(dtype) @ cell
        pbc = [(True, True, True), (True, False, True), (False, False, True)][trial % 3]
        r = [1.0, 2.5, 4.5][trial % 3]
        got = periodic_radius_graph(pos, cell, r, pbc)
        with set_backend("reference"):
            want = periodic_radius_graph(pos, cell, r, pbc)
        assert torch.equal(got[0], want[0]), trial
        assert torch.equal(got[1], want[1]), trial


@needs_ext
def test_periodic_native_falls_back_when_the_images_are_too_many(monkeypatch) -> None:
    """Past ``_MAX_IMAGE_POINTS`` image coordinates the periodic graph takes the blockwise
    path (the same graph)."""
    import graphattn.geometry as geo

    g = torch.Generator().manual_seed(9)
    pos, cell = torch.rand(10, 3, generator=g) * 2, torch.eye(3) * 2
    want = periodic_radius_graph(pos, cell, 1.5)
    calls = []
    native = geo._periodic_native
    monkeypatch.setattr(geo, "_periodic_native", lambda *a: calls.append(native(*a)) or calls[-1])
    monkeypatch.setattr(geo, "_MAX_IMAGE_POINTS", 50)
    got = periodic_radius_graph(pos, cell, 1.5)
    assert calls == [None]  # 27 images x 10 atoms > 50: the native path declined
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@needs_ext
def test_cell_list_pairs_at_the_cutoff_and_extreme_scales() -> None:
    """Pairs whose squared distance rounds to r^2 (no fused multiply-add on either path: both
    round each product and sum), lattices whose pairs sit at multiples of the spacing, and
    scales where no finite cell edge fits (a subnormal r, coordinates spanning more than the
    largest double, r beyond 1e154): the C++ path equals the blockwise one, and returns."""
    pos = torch.tensor([[0.04974580556154251, -0.8072746992111206, -1.6487566232681274],
                        [0.11905446648597717, 1.2789355516433716, -0.6658817529678345]])
    r = 2.3071887464872307  # float32(r^2) is the unfused d2 of the pair
    assert torch.equal(radius_graph(pos, r), _reference_radius(pos, r))
    grid = torch.tensor(list(itertools.product(range(4), repeat=3)), dtype=torch.float64)
    for a in (0.1, 0.3, 1.54, 3.567, 5.43):
        for mult in (1.0, 2.0, 3.0, 2 ** 0.5, 3 ** 0.5):
            lat = (grid * a).float()
            assert torch.equal(radius_graph(lat, mult * a), _reference_radius(lat, mult * a))
    cases = [(torch.tensor([[0.0, 0, 0], [0, 0, 0], [1, 0, 0]]), 5e-324),
             (torch.tensor([[0.0, 0, 0], [0, 0, 0]], dtype=torch.float64), 1e-309),
             (torch.tensor([[-1e308, 0, 0], [1e308, 0, 0], [1e308, 1, 0]],
                           dtype=torch.float64), 2.0),
             (torch.rand(20, 3, dtype=torch.float64), 1e200)]
    for p, r in cases:
        assert torch.equal(radius_graph(p, r), _reference_radius(p, r)), r
    # the periodic path at r = 0 (nothing, as the blockwise path) and at a subnormal r
    for p, r, pbc in ((torch.zeros(2, 3), 0.0, True), (torch.zeros(1, 3), 0.0, False),
                      (torch.rand(4, 3), 5e-324, True)):
        got = periodic_radius_graph(p, torch.eye(3), r, pbc)
        assert got[0].shape == (2, 0) and got[1].shape == (0, 3)


def _reference_knn(*args, **kwargs):
    with set_backend("reference"):
        return knn_graph(*args, **kwargs)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_list_knn_graph_equals_blockwise(dtype) -> None:
    """The C++ kNN cell lists give the blockwise graph edge for edge (same order) over random
    batches: sorted and shuffled ids, loops, k from 1 to beyond the graph sizes, lattices
    (many ties in distance: they go to the lower id), flat clouds (a grid one cell thick), a far
    outlier, a tight cluster far from the origin, coincident points."""
    g = torch.Generator().manual_seed(12)
    for trial in range(80):
        n = int(torch.randint(0, 300, (), generator=g))
        kind = trial % 6
        if kind == 0:
            pos = torch.randn(n, 3, generator=g, dtype=dtype) * 3
        elif kind == 1:  # a lattice of spacing 0.5: ties everywhere
            pos = torch.randint(0, 4, (n, 3), generator=g).to(dtype) * 0.5
        elif kind == 2:  # flat
            pos = torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([1.0, 1.0, 0.0],
                                                                              dtype=dtype)
        elif kind == 3:
            pos = torch.rand(n, 3, generator=g, dtype=dtype)
            pos[:1] = 1e4  # outlier: the grid's cells grow
        elif kind == 4:
            pos = torch.randn(n, 3, generator=g, dtype=dtype) * 1e-3 + 100.0
        else:
            pos = torch.randn(n, 3, generator=g, dtype=dtype)
            pos[5:12] = pos[4:5]  # coincident points
        batch = torch.randint(0, 1 + trial % 5, (n,), generator=g)
        if trial % 3:
            batch = batch.sort().values
        k = int(torch.randint(1, 40, (), generator=g))
        loop = trial % 4 == 0
        got = knn_graph(pos, k, batch, loop=loop)
        assert torch.equal(got, _reference_knn(pos, k, batch, loop=loop)), (trial, k, loop)


@needs_ext
def test_cell_list_knn_large_clouds_ties_and_thread_count() -> None:
    """A uniform cloud (a fine grid, searched in rings), a lattice whose spacing sits a
    rounding below the cell edges' multiples (ties at every ring's face) and a cloud in a
    thin shell (the empty inside searched through): the blockwise graph with 1 and 2
    threads."""
    g = torch.Generator().manual_seed(5)
    axis = torch.arange(14, dtype=torch.float64) * (1.0 - 1e-9)
    direction = torch.randn(3000, 3, generator=g)
    clouds = [(torch.rand(5000, 3, generator=g) * 20, 16),
              (torch.cartesian_prod(axis, axis, axis), 7),
              (direction / direction.norm(dim=1, keepdim=True) * 10, 12)]
    _equal_on_1_and_2_threads(knn_graph, _reference_knn, clouds)


@needs_ext
def test_cell_list_knn_extreme_scales() -> None:
    """Squared distances that overflow float32 (both paths keep k neighbours: the blockwise
    ranking puts them before the pairs that are not candidates), spans below the smallest
    normal double and beyond the largest (one cell)."""
    big = torch.tensor([[0.0, 0, 0], [3e19, 0, 0], [0, 3e19, 0], [1, 0, 0]])
    tiny = torch.tensor([[0.0, 0, 0], [1e-310, 0, 0], [0, 3e-311, 0], [5e-320, 0, 0]],
                        dtype=torch.float64)
    huge = torch.tensor([[0.0, 0, 0], [1.5e308, 0, 0], [0, 1e308, 0], [1, 0, 0]],
                        dtype=torch.float64)
    for pos in (big, tiny, huge):
        pos = torch.cat([pos, -pos[1:]])
        for k in (1, 3, 10):
            got = knn_graph(pos, k)
            assert torch.equal(got, _reference_knn(pos, k))
            assert torch.bincount(got[1], minlength=7).eq(min(k, 6)).all()


@needs_ext
def test_cell_list_knn_bad_input_from_cpp() -> None:
    """``graphattn::knn`` checks its own arguments (ValueError / TypeError naming them)."""
    def op(x, ptr, k, *rest, y=None, yptr=None):
        y = x if y is None else y
        return torch.ops.graphattn.knn(x, y, ptr, ptr if yptr is None else yptr, k, *rest)

    pos, ptr = torch.rand(4, 3), torch.tensor([0, 4])
    with pytest.raises(ValueError, match=r"'src' must have shape \[N, 3\]"):
        op(torch.rand(4, 2), ptr, 2)
    with pytest.raises(ValueError, match=r"'tgt' must have shape \[N, 3\]"):
        op(pos, ptr, 2, y=torch.rand(4))
    with pytest.raises(TypeError, match="'src' must be float32 or float64"):
        op(pos.half(), ptr, 2)
    with pytest.raises(TypeError, match="'tgt' must have the dtype of 'src'"):
        op(pos, ptr, 2, y=pos.double())
    with pytest.raises(ValueError, match="'k' must be >= 1, got 0"):
        op(pos, ptr, 0)
    with pytest.raises(ValueError, match="'src' must be finite: row 1"):
        op(torch.tensor([[0.0, 0, 0], [math.inf, 0, 0]]), torch.tensor([0, 2]), 1)
    with pytest.raises(ValueError, match="'tgt' must be finite: row 0"):
        op(pos, ptr, 1, y=torch.full((1, 3), math.nan), yptr=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"'exclude_offset' must lie in \[0, number of sources"):
        op(pos, ptr, 2, -2)
    with pytest.raises(TypeError, match="'src_ptr' must be an int64"):
        op(pos, ptr.int(), 2, yptr=ptr)
    with pytest.raises(ValueError, match=r"'src_ptr' must run from 0 to the number of sources"):
        op(pos, torch.tensor([0, 3]), 2, yptr=ptr)
    with pytest.raises(ValueError, match="'tgt_ptr' must be non-decreasing"):
        op(pos, torch.tensor([0, 1, 2, 4]), 2, yptr=torch.tensor([0, 3, 2, 4]))
    with pytest.raises(ValueError, match="the same number of graphs, got 1 and 2"):
        op(pos, ptr, 2, yptr=torch.tensor([0, 2, 4]))
    # empty graphs inside ptr are fine, and so are graphs with targets but no sources
    assert torch.equal(op(pos, torch.tensor([0, 0, 4, 4]), 2, 0), knn_graph(pos, 2))
    got = op(pos, torch.tensor([0, 0, 4]), 9, y=pos, yptr=torch.tensor([0, 2, 4]))
    assert torch.equal(got, torch.tensor([[0, 1, 2, 3] * 2, [2] * 4 + [3] * 4]))


@needs_ext
def test_cell_list_knn_op_passes_opcheck() -> None:
    """Schema, fake (shape) implementation and dispatch of ``graphattn::knn``."""
    g = torch.Generator().manual_seed(7)
    pos = torch.rand(30, 3, generator=g, dtype=torch.float64) * 2
    ptr = torch.tensor([0, 12, 30])
    for args in ((pos, pos, ptr, ptr, 4, 0), (pos, pos[:20], torch.tensor([0, 30]),
                                               torch.tensor([0, 20]), 40, -1)):
        torch.library.opcheck(torch.ops.graphattn.knn.default, args)


def _brute_bipartite(x, y, bx, by, keep):
    """``[(i, j)]`` of ``y[i]``, ``x[j]`` that ``keep(distances of y[i] to its graph's x,
    their indices)`` selects, by brute force in float64."""
    d = torch.cdist(y.double(), x.double())
    out = []
    for i in range(y.size(0)):
        js = (bx == by[i]).nonzero().view(-1)
        out += [(i, j) for j in keep(d[i, js], js)]
    return sorted(out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("sort", [False, True])
def test_bipartite_radius_and_knn_match_brute_force(backend, dim, sort) -> None:
    """PyG's ``radius(x, y, ...)`` / ``knn(x, y, ...)``: row 0 indexes ``y``, row 1 ``x``,
    sorted; unsorted batches with gapped ids, a graph with queries but no points of ``x`` and
    one with points but no queries; 2-D points take the blockwise path."""
    g = torch.Generator().manual_seed(21)
    x, y = torch.randn(70, dim, generator=g), torch.randn(40, dim, generator=g) * 1.5
    bx = torch.tensor([3, 9, 40])[torch.randint(0, 3, (70,), generator=g)]
    by = torch.tensor([3, 9, 7])[torch.randint(0, 3, (40,), generator=g)]  # 7: no x; 40: no y
    if sort:  # the blockwise path then reads each block's own graphs' sources only
        bx, by = bx.sort().values, by.sort().values
    r, k = 0.9, 5
    with set_backend(backend):
        got_r = radius(x, y, r, bx, by)
        got_m = radius(x, y, r, bx, by, max_num_neighbors=3)
        got_k = knn(x, y, k, bx, by, block=7)
    d_ok = (torch.cdist(y.double(), x.double()) - r).abs().min() > 1e-6
    assert d_ok  # no pair at the cutoff

    def near(d, js):
        return js[d < r].tolist()

    def first(m):
        return lambda d, js: sorted(js[torch.argsort(d, stable=True)[:m]].tolist())

    assert _as_set(got_r) == set(_brute_bipartite(x, y, bx, by, near))
    assert got_r.t().tolist() == sorted(got_r.t().tolist())
    assert _as_set(got_m) == set(_brute_bipartite(
        x, y, bx, by, lambda d, js: sorted(js[d < r][torch.argsort(d[d < r])[:3]].tolist())))
    assert got_k.t().tolist() == [list(p) for p in _brute_bipartite(x, y, bx, by, first(k))]
    assert not (by[got_k[0]] == 7).any()  # queries of a graph without points: no neighbours


def test_bipartite_radius_on_pyg_documentation_example() -> None:
    """The example of ``torch_geometric.nn.pool.radius``'s docstring, in 2-D (blockwise) and
    lifted to 3-D (the cell lists where built): ``[[0, 0, 1, 1], [0, 1, 2, 3]]``."""
    x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    y = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    want = torch.tensor([[0, 0, 1, 1], [0, 1, 2, 3]])
    assert torch.equal(radius(x, y, 1.5, torch.zeros(4, dtype=torch.long),
                              torch.zeros(2, dtype=torch.long)), want)
    x3, y3 = torch.nn.functional.pad(x, (0, 1)), torch.nn.functional.pad(y, (0, 1))
    assert torch.equal(radius(x3, y3, 1.5), want)
    assert torch.equal(knn(x3, y3, 2), want)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_list_bipartite_equals_blockwise(dtype) -> None:
    """``radius`` and ``knn`` through the C++ cell lists equal the blockwise path over random
    bipartite batches (queries inside and far outside the points' box, lattices with ties,
    graphs on one side only, k beyond the graphs' sizes)."""
    g = torch.Generator().manual_seed(22)
    for trial in range(40):
        nx, ny = (int(v) for v in torch.randint(0, 200, (2,), generator=g))
        x = torch.randn(nx, 3, generator=g, dtype=dtype) * 2
        y = torch.randn(ny, 3, generator=g, dtype=dtype) * (2 if trial % 3 else 30)
        if trial % 4 == 1:
            x, y = x.round(), y.round()  # lattice points: ties
        bx = torch.randint(0, 1 + trial % 4, (nx,), generator=g)
        by = torch.randint(0, 1 + trial % 5, (ny,), generator=g)
        if trial % 3:  # sorted batches (PyG's collation; the blockwise path's graph ranges)
            bx, by = bx.sort().values, (by if trial % 3 == 1 else by.sort().values)
        r = 0.1 + 3 * float(torch.rand((), generator=g))
        k = int(torch.randint(1, 30, (), generator=g))
        m = [None, 0, 2, 9][trial % 4]
        got = (radius(x, y, r, bx, by, max_num_neighbors=m), knn(x, y, k, bx, by))
        with set_backend("reference"):
            want = (radius(x, y, r, bx, by, max_num_neighbors=m), knn(x, y, k, bx, by))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), trial


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_list_knn_targets_outside_the_box_on_some_axes(dtype) -> None:
    """kNN queries outside the sources' box on one, two or three axes, near and far (the stop
    bound adds their distance to the box on the other axes to a face's): the blockwise
    result, also for lattices whose distances tie (exactly at the bound)."""
    g = torch.Generator().manual_seed(31)
    for trial in range(24):
        lattice = trial % 2 == 1
        x = (torch.randint(0, 6, (300, 3), generator=g) if lattice
             else torch.rand(300, 3, generator=g) * 5).to(dtype)
        y = torch.rand(60, 3, generator=g, dtype=dtype) * 5
        shift = [0.05, 0.5, 3.0, 40.0, 1e3, 7.0][trial % 6]
        axes = torch.rand(60, 3, generator=g) < [0.3, 0.6, 1.0][trial % 3]
        sign = torch.where(torch.rand(60, 3, generator=g) < 0.5, -1.0, 1.0)
        y = y + (axes * sign * (5 + shift)).to(dtype)
        if lattice:
            y = y.round()
        k = [1, 4, 16, 40][trial % 4]
        got = knn(x, y, k)
        with set_backend("reference"):
            want = knn(x, y, k)
        assert torch.equal(got, want), trial


def test_bipartite_bad_input() -> None:
    x, y = torch.rand(5, 3), torch.rand(4, 3)
    with pytest.raises(ValueError, match="y must have the width and device of x"):
        knn(x, torch.rand(4, 2), 2)
    with pytest.raises(TypeError, match="y must have the dtype of x"):
        radius(x, y.double(), 1.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        knn([[0.0, 0, 0]], y, 1)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        radius([[0.0, 0, 0]], y, 1.0, max_num_neighbors=2)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        knn(x.long(), y, 1)
    with pytest.raises(ValueError, match=r"y must have shape \[N, D\]"):
        knn(x, y[0], 1)
    with pytest.raises(ValueError, match="r must be a finite non-negative float"):
        radius(x, y, 10 ** 400)  # an int beyond the largest double
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        knn(x, y, 0)
    with pytest.raises(ValueError, match="max_num_neighbors must be an int >= 0"):
        radius(x, y, 1.0, max_num_neighbors=-1)
    with pytest.raises(ValueError, match="r must be a finite non-negative float"):
        radius(x, y, math.nan)
    with pytest.raises(ValueError, match="y must be finite"):
        knn(x, torch.full((1, 3), math.inf), 1)
    with pytest.raises(ValueError, match=r"batch must have shape \[N\] = \[4\]"):
        knn(x, y, 1, batch_y=torch.zeros(5, dtype=torch.long))
    assert knn(x[:0], y, 3).shape == (2, 0) and radius(x, y[:0], 1.0).shape == (2, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_neighbour_limits_beyond_int64(backend) -> None:
    """``k`` / ``max_num_neighbors`` of any size (Python ints) give every candidate, on both
    paths (the C++ ops take int64: the limits are clamped to the point count first)."""
    g = torch.Generator().manual_seed(23)
    x, y = torch.randn(10, 3, generator=g), torch.randn(4, 3, generator=g)
    with set_backend(backend):
        assert knn_graph(x, 2 ** 63).shape == (2, 90)
        assert knn(x, y, 2 ** 70).shape == (2, 40)
        assert radius(x, y, 100.0, None, None, 2 ** 63).shape == (2, 40)
        assert radius_graph(x, 100.0, max_num_neighbors=2 ** 64).shape == (2, 90)


@needs_ext
def test_cell_list_knn_at_scales_where_float32_squares_flush_to_zero() -> None:
    """float32 points ~1e-30 apart: their squared distances are 0 or subnormal, all ties; the
    search must not stop before a lower-indexed source of the same (rounded) distance, so the
    C++ path still equals the blockwise one (it stopped early here once)."""
    g = torch.Generator().manual_seed(24)
    line = torch.arange(8.0).reshape(8, 1) * torch.tensor([1.0, 0, 0]) * 1e-30
    for pos in (line, torch.rand(60, 3, generator=g) * 1e-23, torch.rand(60, 3, generator=g)
                * 1e-19):
        for k in (1, 3, 7):
            assert torch.equal(knn_graph(pos, k), _reference_knn(pos, k)), (k, pos.abs().max())
        q = pos[:5] * 0.7
        with set_backend("reference"):
            want = knn(pos, q, 2)
        assert torch.equal(knn(pos, q, 2), want)
