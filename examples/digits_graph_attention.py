#!/usr/bin/env python
"""Node classification on scikit-learn's digits kNN graph: GraphAttention vs an MLP.

    python examples/digits_graph_attention.py            # demo size (as `graphattn demo`)
    python examples/digits_graph_attention.py --full     # full size (more epochs)
    python examples/digits_graph_attention.py --resume   # continue interrupted runs exactly

Writes runs/digits/{gat,mlp}/ (metrics.json, curve.png, checkpoints) and
runs/digits/comparison.png. The implementation lives in graphattn/demos/digits.py.
"""

import argparse
from pathlib import Path

from tabulate import tabulate

from graphattn.demos.digits import run

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--full", action="store_true")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoints")
    a = p.parse_args()
    rows = run(a.full, Path(a.runs_dir), True, a.resume)
    print(tabulate(rows, headers="keys", tablefmt="github"))
