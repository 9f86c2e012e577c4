#!/usr/bin/env python
"""Temporal-KG forecasting: DyMRL vs PyG's DistMult/ComplEx/RotatE and a recurrence baseline.

    python examples/tkg_dymrl.py                                   # synthetic Nations TKG (demo)
    python examples/tkg_dymrl.py --data ../shared/data/ICE14-IMG-TXT --full   # ICEWS14

Writes runs/tkg/<data>/ (metrics.json with raw and time-aware filtered MRR/Hits@k for every
model, dymrl_curves.png, the DyMRL run with checkpoints). Implementation:
graphattn/demos/tkg.py.
"""

import argparse
from pathlib import Path

from tabulate import tabulate

from graphattn.demos.tkg import run

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="temporal-KG folder (RE-GCN/DyMRL format)")
    p.add_argument("--full", action="store_true", help="more epochs")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--resume", action="store_true", help="continue DyMRL from its checkpoint")
    p.add_argument("--riemannian", action="store_true", help="geoopt RiemannianAdam for DyMRL")
    p.add_argument("--dim", type=int, default=None,
                   help="DyMRL rank d, even (default: 40 with --data, else the paper's 20)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="L2 of DyMRL's optimiser (default: 1e-5 with --data, else 0 as in the "
                        "paper)")
    a = p.parse_args()
    rows = run(a.full, Path(a.runs_dir), True, a.resume, data=a.data, riemannian=a.riemannian,
               dim=a.dim, weight_decay=a.weight_decay)
    print(tabulate(rows, headers="keys", tablefmt="github"))
