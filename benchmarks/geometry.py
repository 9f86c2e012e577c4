#!/usr/bin/env python
"""Radius and kNN graphs: graphattn's C++ cell lists vs its blockwise torch path vs PyG
(``torch_geometric.nn.radius_graph`` / ``knn_graph``, i.e. torch-cluster's KD-tree) vs SciPy's
``cKDTree``.

    python benchmarks/geometry.py          # writes its section of BENCHMARKS.md
    python benchmarks/geometry.py --quick    # the small configurations only, prints the table
    PYTHONPATH=/path/to/torch_cluster python benchmarks/geometry.py   # with the PyG columns

Configurations: a QM9 training batch (32 molecules, r = 4 A, the molecular examples' graph)
and single point clouds of N atoms at 0.1 atoms / A^3 (liquid water's density of atoms)
with r = 5 A; kNN graphs (``knn-N``) of the same clouds with k = 16. Each configuration
runs in a fresh process; the time is the median of the calls after warm-up, the peak extra
memory the peak RSS (VmHWM) minus RSS once the inputs exist. Every implementation must return
the same number of edges (checked). PyG runs twice, with the default allocator and with
``THP_MEM_ALLOC_ENABLE=1``: ``torch_geometric.nn.radius_graph`` / ``knn_graph`` where
``pyg-lib`` (>= 0.6, PyG 2.8's backend) is installed, else torch-cluster's (the backend of
PyG up to 2.7); neither is a dependency of
graphattn (torch-cluster builds from its sdist), and the columns are left out without them.
PyG's ``max_num_neighbors`` is set to N (its default, 32, would cut the graph). SciPy's kNN
is ``cKDTree.query`` of k + 1 points per point, the point itself dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from graphattn.memory import status_kb as _status_kb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sections import markers, publish, run_worker, script_parser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = markers("geometry")
IMPLS = ("cells", "blockwise", "pyg", "pyg-thp", "scipy")
K = 16  # neighbours of the kNN configurations
LABEL = {"cells": "graphattn cell lists (C++)", "blockwise": "graphattn blockwise (torch)",
         "pyg": "PyG (torch-cluster)", "pyg-thp": "PyG (torch-cluster), THP allocator",
         "scipy": "SciPy cKDTree"}


def _inputs(config: str):
    import torch

    if config == "qm9":
        from torch_geometric.loader import DataLoader

        from graphattn.datasets.molecules import QM9Energies

        b = next(iter(DataLoader(QM9Energies(subset=2000, seed=0)[:32], batch_size=32)))
        return b.pos, b.batch, 4.0
    n = int(config.removeprefix("knn-"))
    side = (n / 0.1) ** (1 / 3)
    pos = torch.rand(n, 3, generator=torch.Generator().manual_seed(0)) * side
    return pos, torch.zeros(n, dtype=torch.long), 5.0


def worker(a: argparse.Namespace) -> dict:
    import torch

    from graphattn import geometry
    from graphattn.ops import set_backend

    torch.set_num_threads(a.threads)
    pos, batch, r = _inputs(a.config)
    n, knn = pos.size(0), a.config.startswith("knn-")
    if a.impl in ("cells", "blockwise"):
        set_backend("auto" if a.impl == "cells" else "reference")
        if a.impl == "cells" and not geometry._native_cells(pos, "knn" if knn else "radius"):
            raise SystemExit("graphattn._C is not built")

        def run():
            if knn:
                return geometry.knn_graph(pos, K, batch)
            return geometry.radius_graph(pos, r, batch)
    elif a.impl in ("pyg", "pyg-thp"):
        import torch_geometric.typing

        if torch_geometric.typing.WITH_RADIUS:  # PyG >= 2.8 takes pyg-lib's radius and knn
            import pyg_lib
            from torch_geometric.nn import knn_graph, radius_graph

            lib = f"pyg-lib {pyg_lib.__version__}"
        else:  # torch-cluster's, PyG's backend before
            import torch_cluster
            from torch_cluster import knn_graph, radius_graph

            lib = f"torch-cluster {torch_cluster.__version__}"

        def run():
            if knn:
                return knn_graph(pos, K, batch)
            return radius_graph(pos, r, batch, max_num_neighbors=n)
    else:
        import numpy as np
        from scipy.spatial import cKDTree

        x, b = pos.double().numpy(), batch.numpy()

        def run():
            if knn:  # one graph
                idx = cKDTree(x).query(x, K + 1)[1]
                keep = idx != np.arange(n)[:, None]
                keep[keep.all(1), -1] = False  # the point itself was not among them (ties)
                src = idx[keep].reshape(n, K)
                return torch.from_numpy(np.stack([src.ravel(), np.repeat(np.arange(n), K)]))
            out = []
            for g in np.unique(b):  # one tree per graph
                idx = np.nonzero(b == g)[0]
                pairs = cKDTree(x[idx]).query_pairs(r, output_type="ndarray")
                both = np.concatenate([pairs, pairs[:, ::-1]])
                out.append(idx[both])
            return torch.from_numpy(np.concatenate(out).T.copy())
    rss = _status_kb("VmRSS")
    times = []
    for it in range(a.warmup + a.iters):
        t0 = time.perf_counter()
        ei = run()
        if it >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return {"impl": a.impl, "config": a.config, "N": n, "edges": int(ei.size(1)),
            "lib": locals().get("lib"),
            "median_ms": statistics.median(times),
            "peak_extra_mb": (_status_kb("VmHWM") - rss) / 1024}


def run_config(a, impl: str, config: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--config", config, "--iters",
           str(a.iters), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    env = dict(os.environ)
    if impl == "pyg-thp":
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    return run_worker(cmd, {"impl": impl, "config": config}, env)


def render(a, rows: list[dict]) -> str:
    import torch

    present = [i for i in IMPLS if any(r["impl"] == i and "error" not in r for r in rows)]
    lib = next((r["lib"] for r in rows if r.get("lib")), None)
    label = {k: v.replace("torch-cluster", (lib or "torch-cluster").split()[0])
             for k, v in LABEL.items()}
    pyg = (f" PyG's columns: {lib} (PyG 2.8's `radius_graph` and `knn_graph` want pyg-lib"
           " >= 0.6; without it the benchmark calls torch-cluster's, PyG's backend before 2.8,"
           " when importable)." if lib else " PyG's radius and kNN graphs need pyg-lib or"
           " torch-cluster, neither installed: no PyG columns.")
    lines = [BEGIN, "## Radius and kNN graphs (`benchmarks/geometry.py`)", "",
             f"Made by `python benchmarks/geometry.py` on {time.strftime('%Y-%m-%d')}: "
             f"{a.threads} threads, torch {torch.__version__}, float32 coordinates; median of "
             f"{a.iters} calls after {a.warmup} warm-up, each configuration in a fresh process "
             "(peak = VmHWM minus RSS with the inputs). QM9: one training batch of 32 molecules, "
             "r = 4 Å; N atoms: one cloud at 0.1 atoms / Å³, r = 5 Å; kNN: the same clouds, "
             f"k = {K}. The ratio is the best other "
             "implementation's time over the cell lists'." + pyg, "",
             "| input | edges | " + " | ".join(label[i] for i in present)
             + " | cell lists vs best other | " + " | ".join(f"{label[i]} peak" for i in present)
             + " |", "|---|---|" + "---|" * (2 * len(present) + 1)]
    for config in dict.fromkeys(r["config"] for r in rows):
        by = {r["impl"]: r for r in rows if r["config"] == config}
        ok = [r for r in by.values() if "error" not in r]
        edges = {r["edges"] for r in ok}
        if len(edges) > 1:
            raise SystemExit(f"{config}: the implementations disagree on the edge count {edges}")

        def cell(i, key, unit, by=by):
            r = by.get(i)
            if r is None:
                return "—"
            return "failed" if "error" in r else f"{r[key]:,.2f} {unit}"

        others = [by[i]["median_ms"] for i in present if i != "cells" and i in by
                  and "error" not in by[i]]
        c = by.get("cells")
        ratio = (f"{min(others) / c['median_ms']:.1f}x" if others and c and "error" not in c
                 else "—")
        name = ("QM9 batch (32 molecules)" if config == "qm9" else
                f"kNN, N = {int(config[4:]):,}" if config.startswith("knn-")
                else f"N = {int(config):,}")
        lines.append(f"| {name} | {next(iter(edges)):,} | "
                     + " | ".join(cell(i, "median_ms", "ms") for i in present)
                     + f" | {ratio} | " + " | ".join(cell(i, "peak_extra_mb", "MB")
                                                      for i in present) + " |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    p = script_parser(__doc__, ROOT / "BENCHMARKS.md", iters=7, warmup=2)
    p.add_argument("--impl", default="cells")
    p.add_argument("--config", default="qm9")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return 0
    configs = ("qm9", "1000", "knn-1000") if a.quick else (
        "qm9", "1000", "10000", "100000", "knn-1000", "knn-10000", "knn-100000")
    rows = []
    for config in configs:
        for impl in IMPLS:
            if impl == "blockwise" and config.endswith("100000"):
                continue  # O(N^2) pair distances: minutes at 1e5 atoms
            r = run_config(a, impl, config)
            rows.append(r)
            print(json.dumps(r), flush=True)
    publish(Path(a.out), "geometry", render(a, rows), a.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
