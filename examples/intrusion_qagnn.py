#!/usr/bin/env python
"""Intrusion detection on a generated host-flow graph: Q-AGNN vs PyG GAT/GCN/TransformerConv,
then the trained Q-AGNN under shot noise, a fake IBM device's noise model and the fake device.

    python examples/intrusion_qagnn.py              # demo size (as `graphattn demo`)
    python examples/intrusion_qagnn.py --full       # ~12,000 flows, more epochs
    python examples/intrusion_qagnn.py --shots 4096 --backends statevector aer fake-lagos

Writes runs/intrusion/ (metrics.json, comparison.png, noise.png, one run per model, and
qagnn/{model.json,best.pt} for `graphattn quantum submit`). Implementation:
graphattn/demos/intrusion.py.
"""

import argparse
from pathlib import Path

from tabulate import tabulate

from graphattn.demos.intrusion import NOISE_BACKENDS, run

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoints")
    p.add_argument("--shots", type=int, default=1024)
    p.add_argument("--backends", nargs="+", default=list(NOISE_BACKENDS),
                   help="first one is the reference for the degradation")
    a = p.parse_args()
    rows = run(a.full, Path(a.runs_dir), True, a.resume, backends=a.backends, shots=a.shots)
    print(tabulate(rows, headers="keys", tablefmt="github"))
