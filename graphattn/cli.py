"""The ``graphattn`` command: ``info``, ``demo``, ``bench`` and ``quantum``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def _info() -> dict:
    import torch
    import torch_geometric

    import graphattn
    from graphattn.ops import _native, backend

    versions = {"python": platform.python_version(), "graphattn": graphattn.__version__,
                "torch": torch.__version__, "torch_geometric": torch_geometric.__version__}
    for mod in ("e3nn", "geoopt", "qiskit", "qiskit_aer", "qiskit_ibm_runtime", "rdkit",
                "networkx", "torch_scatter"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", "installed")
        except ImportError:
            versions[mod] = "not installed"
    return {
        "versions": versions,
        "backend": backend(),
        "extension_built": _native.WITH_EXT,
        "extension_error": _native.LOAD_ERROR,
        "openmp": _native.WITH_OPENMP,
        "cuda_kernels": _native.CUDA_VERSION > 0,
        "torch_threads": torch.get_num_threads(),
        "torch_parallel": torch.__config__.parallel_info().splitlines()[0:3],
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = _info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info["versions"].items():
        print(f"{k:>20}: {v}")
    print(f"{'backend':>20}: {info['backend']}")
    print(f"{'extension built':>20}: {info['extension_built']}"
          + (f" ({info['extension_error']})" if info["extension_error"] else ""))
    print(f"{'OpenMP':>20}: {info['openmp']}")
    print(f"{'CUDA kernels':>20}: {info['cuda_kernels']}")
    print(f"{'threads':>20}: {info['torch_threads']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from graphattn.demos import load_all

    registry = load_all()
    names = args.only or list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        print(f"unknown demo(s) {unknown}; available: {sorted(registry)}", file=sys.stderr)
        return 2
    rows = []
    runs_dir = Path(args.runs_dir)
    for name in names:
        print(f"== {name} ({'full' if args.full else 'demo'} size) ==", flush=True)
        rows.extend(registry[name](args.full, runs_dir, not args.no_progress, args.resume))
    print()
    print(tabulate(rows, headers="keys", tablefmt="github"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / "demo_summary.json").write_text(json.dumps(rows, indent=2))
    print(f"\nruns written under {runs_dir.resolve()}")
    return 0


def _benchmarks_dir() -> Path:
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    if not here.is_dir():
        raise SystemExit("graphattn bench needs the source checkout (benchmarks/ next to the "
                         "package); install with `pip install -e .` from the repository")
    return here


def cmd_bench(args: argparse.Namespace, rest: list[str]) -> int:
    script = _benchmarks_dir() / f"{args.name}.py"
    if not script.exists():
        avail = sorted(p.stem for p in _benchmarks_dir().glob("*.py"))
        print(f"unknown benchmark {args.name!r}; available: {avail}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    return subprocess.call([sys.executable, str(script), *rest], env=env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="graphattn", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="versions, backend, threads, how the extension was built")
    pi.add_argument("--json", action="store_true")
    pd = sub.add_parser("demo", help="run the registered examples and print a summary table")
    pd.add_argument("--full", action="store_true", help="full size instead of demo size")
    pd.add_argument("--only", nargs="*", help="run only these demos")
    pd.add_argument("--runs-dir", default="runs")
    pd.add_argument("--no-progress", action="store_true")
    pd.add_argument("--resume", action="store_true",
                    help="continue each run from runs/<name>/checkpoint.pt (exact resume)")
    pb = sub.add_parser("bench", help="run a benchmark of benchmarks/ (extra args pass through)")
    pb.add_argument("name", nargs="?", default="attention")
    from . import cli_quantum

    cli_quantum.add_parser(sub)
    args, rest = p.parse_known_args(argv)
    if args.cmd == "info":
        return cmd_info(args)
    if args.cmd == "demo":
        return cmd_demo(args)
    if args.cmd == "quantum":
        if rest:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        return cli_quantum.main(args)
    return cmd_bench(args, rest)


if __name__ == "__main__":
    raise SystemExit(main())
