"""``graphattn quantum run`` and ``graphattn quantum submit``: Q-AGNN on simulators, fake IBM
devices and IBM Quantum hardware."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SIM_BACKENDS = "statevector, estimator, aer, aer-noise, aer-depolarizing, fake-<device>"


def add_parser(sub) -> None:
    pq = sub.add_parser("quantum", help="Q-AGNN: simulate, run on fake devices, submit to IBM")
    qs = pq.add_subparsers(dest="qcmd", required=True)
    pr = qs.add_parser("run", help="train (or load) Q-AGNN and evaluate it on a backend")
    pr.add_argument("--backend", default="statevector", help=f"one of {SIM_BACKENDS}")
    pr.add_argument("--train-backend", default="statevector",
                    help="backend used for training; anything but statevector trains with "
                         "parameter-shift gradients (costly: see --help of submit)")
    pr.add_argument("--checkpoint", help="a trained run directory (model.json + best.pt): "
                                         "skip training and only evaluate")
    pr.add_argument("--full", action="store_true", help="full-size flow graph")
    pr.add_argument("--epochs", type=int, default=None)
    pr.add_argument("--shots", type=int, default=1024)
    pr.add_argument("--noise-device", default="manila",
                    help="fake device whose calibrated noise aer-noise uses")
    pr.add_argument("--runs-dir", default="runs")
    pr.add_argument("--no-progress", action="store_true")
    ps = qs.add_parser("submit", help="run a trained Q-AGNN's circuits on IBM Quantum hardware")
    ps.add_argument("--backend", required=True, help="IBM device, e.g. ibm_brisbane")
    ps.add_argument("--checkpoint", default="runs/intrusion/qagnn",
                    help="trained run directory (written by `graphattn demo` or quantum run)")
    ps.add_argument("--shots", type=int, default=1024)
    ps.add_argument("--primitive", choices=("sampler", "estimator"), default="sampler")
    ps.add_argument("--account", default=None, help="name of a saved IBM Quantum account")
    ps.add_argument("--dry-run", action="store_true",
                    help="transpile for the device offline (its fake twin's target) and print "
                         "depth, two-qubit gates and jobs; send nothing")
    ps.add_argument("--runs-dir", default="runs")


def _checkpoint(path: str) -> Path:
    p = Path(path)
    if not (p / "model.json").exists() or not (p / "best.pt").exists():
        raise SystemExit(f"no trained Q-AGNN in {p} (model.json + best.pt); train one with "
                         "`graphattn demo --only intrusion` or `graphattn quantum run`")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    import torch
    from tabulate import tabulate

    from .demos import intrusion as ex
    from .nn.quantum import QAGNN, make_executor

    out = Path(args.runs_dir) / "quantum"
    out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        model, data = ex.load_qagnn(_checkpoint(args.checkpoint))
        trained = {"checkpoint": args.checkpoint}
    else:
        data, cfg = ex.load_data(args.full)
        torch.manual_seed(0)
        model = QAGNN(data.num_features, **ex.QAGNN_ARGS)
        train_ex = make_executor(args.train_backend, model.conv.spec, shots=args.shots,
                                 noise_device=args.noise_device)
        if train_ex is not None:
            spec, N = model.conv.spec, data.num_nodes
            per_epoch = 2 * N + 2 * N * spec.num_parameters
            print(f"training on {args.train_backend} with parameter shift: {per_epoch:,} circuit "
                  f"evaluations per epoch ({args.shots} shots each), 3 jobs per epoch",
                  file=sys.stderr)
        model.executor = train_ex
        res, seconds = ex.train("qagnn", model, data, args.epochs or (400 if args.full else 300),
                                out, not args.no_progress)
        model.executor = None
        ex.save_qagnn(model, out / "qagnn", cfg, 0)
        trained = {"train_backend": args.train_backend, "train_time_s": seconds,
                   "epochs": len(res.history),
                   "circuit_evaluations": train_ex.circuit_evaluations if train_ex else None}
    rows = [ex.evaluate_on(model, data, None)]
    if args.backend != "statevector":
        rows.append(ex.evaluate_on(model, data, make_executor(
            args.backend, model.conv.spec, shots=args.shots, noise_device=args.noise_device)))
        rows[-1]["delta_macro_f1"] = rows[-1]["macro_f1"] - rows[0]["macro_f1"]
    name = args.backend.replace("/", "_")
    (out / f"metrics_{name}.json").write_text(json.dumps({"trained": trained, "eval": rows},
                                                         indent=1))
    keys = ("backend", "macro_f1", "fpr", "recall", "embedding_mad", "time_s")
    print(tabulate([{k: r.get(k) for k in keys} for r in rows], headers="keys",
                   tablefmt="github", floatfmt=".4f"))
    print(f"\nwritten to {(out / f'metrics_{name}.json').resolve()}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .demos import intrusion as ex
    from .nn.quantum import CredentialsError, fake_backend, make_executor, transpile_for

    model, data = ex.load_qagnn(_checkpoint(args.checkpoint))
    spec = model.conv.spec
    device = args.backend if args.backend.startswith("ibm") else f"ibm_{args.backend}"
    if args.dry_run:
        try:
            twin = fake_backend(device)
        except ValueError as err:
            msg = f"--dry-run works offline from the fake twin of the device: {err}"
            raise SystemExit(msg) from None
        circuit = transpile_for(spec.circuit(measure=args.primitive == "sampler"), twin)
        two_q = sum(1 for i in circuit.data if i.operation.num_qubits == 2)
        report = {"device": device, "target": twin.name, "device_qubits": twin.num_qubits,
                  "primitive": args.primitive, "depth": circuit.depth(), "two_qubit_gates": two_q,
                  "ops": dict(circuit.count_ops()), "jobs": 1, "circuits_per_job": data.num_nodes,
                  "shots": args.shots, "total_shots": args.shots * data.num_nodes}
        print(json.dumps(report, indent=1))
        print("dry run: nothing was sent", file=sys.stderr)
        return 0
    try:
        executor = make_executor(f"ibm-{device[4:]}", spec, shots=args.shots,
                                 primitive=args.primitive, account=args.account)
    except CredentialsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    result = ex.evaluate_on(model, data, executor)
    result["job_ids"] = executor.job_ids
    out = Path(args.runs_dir) / "quantum"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"submit_{device}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


def main(args: argparse.Namespace) -> int:
    return cmd_run(args) if args.qcmd == "run" else cmd_submit(args)
