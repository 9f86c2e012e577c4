#!/usr/bin/env python
"""Window-attention token graph: graphattn's fused core vs dense masked SDPA vs naive.

    python benchmarks/tokens.py          # T = 1k, 4k, 16k; writes its section of BENCHMARKS.md
    python benchmarks/tokens.py --quick    # T = 1k, 4k only, prints the table

One causal sliding window of half-width w (each token attends to itself and the w previous
tokens), H heads x D channels, float32, a single sequence. Each configuration runs in a fresh
process; peak extra memory = peak RSS (VmHWM) minus RSS once the inputs exist.

* core: graphattn.tokens.token_attention on the window TokenGraph (O(T w) edges, the fused
  sparse kernel when the extension is built);
* sdpa: torch.nn.functional.scaled_dot_product_attention with the dense [T, T] boolean mask;
* naive: scores = q k^T / sqrt(D), masked_fill, softmax, @ v (the [H, T, T] tensors in full).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from graphattn.memory import status_kb as _status_kb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sections import markers, publish, run_worker, script_parser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = markers("tokens")



def worker(a: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from graphattn import tokens
    from graphattn.ops import backend

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    T, H, D, w = a.T, a.heads, a.dim, a.window
    q, k, v = (torch.randn(T, H, D, requires_grad=a.backward) for _ in range(3))
    tg = tokens.window(T, w)
    if a.impl == "core":
        tg.graph  # noqa: B018 - build the CSR/CSC views outside the timing

        def run():
            return tokens.token_attention(q, k, v, tg)
    elif a.impl == "sdpa":
        mask = tg.dense_mask()

        def run():
            return F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                                  v.transpose(0, 1), attn_mask=mask)
    else:
        mask = tg.dense_mask()

        def run():
            s = torch.einsum("ihd,jhd->hij", q, k) / D**0.5
            p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
            return torch.einsum("hij,jhd->ihd", p, v)
    rss = _status_kb("VmRSS")
    times = []
    for it in range(a.warmup + a.iters):
        t0 = time.perf_counter()
        if a.backward:
            run().sum().backward()
        else:
            with torch.no_grad():
                run()
        if it >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return {"impl": a.impl, "T": T, "mode": "fwd+bwd" if a.backward else "fwd",
            "median_ms": statistics.median(times),
            "peak_extra_mb": (_status_kb("VmHWM") - rss) / 1024, "edges": tg.num_edges,
            "backend": backend()}


def run_config(a, impl: str, T: int, backward: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--T", str(T), "--iters",
           str(a.iters), "--warmup", str(a.warmup), "--threads", str(a.threads), "--window",
           str(a.window), "--heads", str(a.heads), "--dim", str(a.dim)]
    if backward:
        cmd.append("--backward")
    return run_worker(cmd, {"impl": impl, "T": T, "mode": "fwd+bwd" if backward else "fwd"})


def render(a, rows: list[dict]) -> str:
    import torch

    lines = [BEGIN, "## Token graphs: sliding-window attention (`benchmarks/tokens.py`)", "",
             f"Made by `python benchmarks/tokens.py` on {time.strftime('%Y-%m-%d')}: causal window "
             f"w={a.window}, H={a.heads} x D={a.dim}, float32, one sequence, {a.threads} threads, "
             f"torch {torch.__version__}; median of {a.iters} runs after {a.warmup} warm-up, each "
             "configuration in a fresh process (peak = VmHWM minus RSS with the inputs).", "",
             "| T | mode | core (graphattn) | dense masked SDPA | naive | core vs SDPA | core peak "
             "| SDPA peak | naive peak |", "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["impl"], r["T"], r["mode"]): r for r in rows}

    def cell(r, key, unit):
        if r is None:
            return "—"
        if "error" in r:
            return "failed"
        return f"{r[key]:,.1f} {unit}"

    for T in sorted({r["T"] for r in rows}):
        for mode in ("fwd", "fwd+bwd"):
            c, s, n = (by.get((i, T, mode)) for i in ("core", "sdpa", "naive"))
            if c is None:
                continue
            ratio = (f"{s['median_ms'] / c['median_ms']:.1f}x" if s and "error" not in s
                     and "error" not in c else "—")
            lines.append(f"| {T:,} | {mode} | {cell(c, 'median_ms', 'ms')} | "
                         f"{cell(s, 'median_ms', 'ms')} | {cell(n, 'median_ms', 'ms')} | {ratio} "
                         f"| {cell(c, 'peak_extra_mb', 'MB')} | {cell(s, 'peak_extra_mb', 'MB')} "
                         f"| {cell(n, 'peak_extra_mb', 'MB')} |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    p = script_parser(__doc__, ROOT / "BENCHMARKS.md", iters=5, warmup=2)
    p.add_argument("--impl", default="core")
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--backward", action="store_true")
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=32)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return 0
    sizes = (1024, 4096) if a.quick else (1024, 4096, 16384)
    rows = []
    for T in sizes:
        for backward in (False, True):
            for impl in ("core", "sdpa", "naive"):
                if impl == "naive" and backward and T > 4096:
                    continue  # [H, T, T] scores with autograd: tens of GB
                r = run_config(a, impl, T, backward)
                rows.append(r)
                print(json.dumps(r), flush=True)
    publish(Path(a.out), "tokens", render(a, rows), a.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
