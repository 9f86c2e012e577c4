#!/usr/bin/env python
"""GPU graph-attention benchmark: graphattn's CUDA kernels against PyG on the same GPU.

    python benchmarks/attention_cuda.py            # writes its section of BENCHMARKS.md
    python benchmarks/attention_cuda.py --quick    # small sizes, print only
    graphattn bench attention_cuda [same flags]

Needs a GPU and ``graphattn._C`` built with CUDA (``python setup.py build_ext --inplace``
with a CUDA build of torch). Workloads as in ``attention.py``: random graphs, H=4 heads x
C=32 channels, 128 input channels, float32; PyG ``GATConv`` / ``GATv2Conv`` /
``TransformerConv`` against graphattn's ``GraphAttention`` of the same kind (native CUDA
kernels, and the pure-torch reference path), forward (``no_grad``) and forward + backward.
Timings: median over ``--iters`` steps after ``--warmup``, each step synchronised. Peak
extra memory: ``torch.cuda.max_memory_allocated`` during the step minus the memory allocated
before it (inputs and weights). The fused op alone is set against its bandwidth floor (the
bytes it must move, ``attention.floor_bytes``, over the measured device-to-device copy
bandwidth).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sections import markers, write_section  # noqa: E402
from attention import LAYERS, correctness, floor_bytes, fused_op, make_layer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = markers("cuda")


def copy_gbps(n: int = 1 << 28) -> float:
    """Device-to-device copy of n float32 (bytes read + written), best of 10, GB/s."""
    import torch

    a = torch.empty(n, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(10):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        b.copy_(a)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best / 1e9


def time_step(run, backward: bool, params, warmup: int, iters: int) -> dict:
    import torch

    times = []
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for it in range(warmup + iters):
        for p in params:
            p.grad = None
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if backward:
            run().sum().backward()
        else:
            with torch.no_grad():
                run()
        torch.cuda.synchronize()
        if it >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() - base
    return {"ms": statistics.median(times), "peak_mb": peak / 2**20}


def bench(layer: str, N: int, E: int, a: argparse.Namespace) -> list[dict]:
    import torch

    from graphattn import ops

    torch.manual_seed(0)
    F, H, C = 128, 4, 32
    x = torch.randn(N, F, device="cuda")
    ei = torch.randint(0, N, (2, E), device="cuda")
    rows = []
    impls = ["pyg", "native"] + (["reference"] if E <= a.max_reference_edges else [])
    for impl in impls:
        if impl != "pyg":
            ops.set_backend(impl)
        model = make_layer(impl, layer, F, C, H).cuda()
        for backward in (False, True):
            try:
                r = time_step(lambda m=model: m(x, ei), backward, list(model.parameters()),
                              a.warmup, a.iters)
            except torch.OutOfMemoryError:  # reported as a missing cell, not a crash
                print(f"{impl} {layer} N={N} E={E}: out of GPU memory", flush=True)
                torch.cuda.empty_cache()
                continue
            rows.append({"impl": impl, "layer": layer, "nodes": N, "edges": E,
                         "mode": "fwd+bwd" if backward else "fwd", **r})
            print(json.dumps(rows[-1]), flush=True)
        ops.set_backend("auto")
        del model
        torch.cuda.empty_cache()
    # the fused op alone on precomputed q, k, v (no linear layers), forward
    r = time_step(fused_op(layer, ei, N, H, C), False, [], a.warmup, a.iters)
    rows.append({"impl": "op", "layer": layer, "nodes": N, "edges": E, "mode": "fwd", **r})
    print(json.dumps(rows[-1]), flush=True)
    ops.set_backend("auto")
    return rows


def render(rows: list[dict], checks: list[str], bw: float, a: argparse.Namespace) -> str:
    import torch
    import torch_geometric

    by = {(r["impl"], r["layer"], r["nodes"], r["edges"], r["mode"]): r for r in rows}
    sizes = sorted({(r["nodes"], r["edges"]) for r in rows}, key=lambda s: (s[1], s[0]))
    cmd = "python benchmarks/attention_cuda.py" + (" --quick" if a.quick else "")
    lines = [
        BEGIN,
        "## GPU (`benchmarks/attention_cuda.py`)",
        "",
        f"Made by `{cmd}` on {time.strftime('%Y-%m-%d')}: {torch.cuda.get_device_name()}, "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"PyG {torch_geometric.__version__}. "
        "Same layers as above at the sizes below, float32, one process; median of "
        f"{a.iters} synchronised steps after {a.warmup} warm-up steps; peak extra memory = "
        "`torch.cuda.max_memory_allocated()` during the steps minus the memory allocated "
        "before them. `native` is graphattn's CUDA kernels (one warp per row and head, online "
        "softmax, no atomics), `reference` its pure-torch path, both the same "
        "`GraphAttention` layer.",
        "",
        "Correctness checked first on the GPU (same weights, 500 nodes / 4,000 edges): "
        + "; ".join(checks) + ".",
        "",
        "| layer | N | E | mode | PyG ms | reference ms | native ms | speed-up vs PyG | "
        "PyG peak MB | native peak MB | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for N, E in sizes:
        for layer in LAYERS:
            for mode in ("fwd+bwd", "fwd"):
                p, n = by.get(("pyg", layer, N, E, mode)), by.get(("native", layer, N, E, mode))
                r = by.get(("reference", layer, N, E, mode))
                if p is None or n is None:
                    continue
                ratio = p["peak_mb"] / max(n["peak_mb"], 1e-9)
                ref_ms = f"{r['ms']:.2f}" if r else "—"
                lines.append(
                    f"| {layer} | {N:,} | {E:,} | {mode} | {p['ms']:.2f} | {ref_ms} | "
                    f"{n['ms']:.2f} | {p['ms'] / n['ms']:.1f}x | {p['peak_mb']:,.0f} | "
                    f"{n['peak_mb']:,.0f} | 1/{ratio:.1f} |"
                )
    lines += [
        "",
        f"Fused op alone (forward, precomputed q/k/v) against its bandwidth floor; "
        f"device-to-device copy bandwidth {bw:,.0f} GB/s:",
        "",
        "| layer | N | E | op ms | floor ms | op / floor |",
        "|---|---|---|---|---|---|",
    ]
    for N, E in sizes:
        for layer in LAYERS:
            o = by.get(("op", layer, N, E, "fwd"))
            if o is None:
                continue
            floor = floor_bytes(layer, N, E, 4, 32) / (bw * 1e9) * 1e3
            lines.append(f"| {layer} | {N:,} | {E:,} | {o['ms']:.3f} | {floor:.3f} | "
                         f"{o['ms'] / floor:.1f}x |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small sizes, print only")
    p.add_argument("--max-reference-edges", type=int, default=4_000_000)
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    a = p.parse_args()
    import torch

    from graphattn.ops import _native

    if not torch.cuda.is_available() or _native.CUDA_VERSION <= 0:
        print("attention_cuda: needs a GPU and graphattn._C built with CUDA", file=sys.stderr)
        return 2
    checks = correctness("cuda")
    bw = copy_gbps()
    sizes = [(20_000, 200_000), (100_000, 1_000_000)]
    if not a.quick:
        sizes += [(100_000, 4_000_000), (1_000_000, 16_000_000)]
    rows = [r for N, E in sizes for layer in LAYERS for r in bench(layer, N, E, a)]
    text = render(rows, checks, bw, a)
    print(text)
    if not a.quick:
        write_section(Path(a.out), "cuda", text)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
