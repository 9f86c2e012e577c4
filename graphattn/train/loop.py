r"""A small, resumable epoch loop shared by the examples.

:func:`fit` owns everything around the caller's two closures ``train_epoch(epoch)`` and
``evaluate(epoch)``: seeding, ``train()``/``eval()`` modes, ``torch.no_grad()`` around
evaluation, a tqdm bar, early stopping on ``config.monitor``, and the run directory
``runs_dir/name/``:

* ``metrics.json``: the config, the history, the best epoch and row, whether the run stopped
  early and the total wall time; rewritten after every epoch. It is strict JSON: a metric
  that is NaN or infinite is written as ``null``.
* ``checkpoint.pt``: model, optimizer and scheduler states, the epoch, history, best row,
  early-stopping counter and the python / numpy / torch (and CUDA) RNG states; rewritten
  after every epoch. ``TrainConfig(resume=True)`` continues from it, bitwise identical to an
  uninterrupted run as long as the closures draw randomness only from those global RNGs
  (data loaders with worker processes or private generators carry their own state). A
  resume refuses a checkpoint made with another ``seed``, ``monitor`` or ``mode``, or for
  another optimizer class, before it loads anything.
* ``best.pt``: the model state of the best epoch so far; :func:`load_best` loads it. The model
  itself is left at its *last* state when :func:`fit` returns.
* ``curve.png``: :func:`~graphattn.train.plot_curves` of the history, written at the end.

Files are replaced atomically, so an interrupted run never leaves a torn checkpoint.

Distributed data parallel works without changing callers: a model wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` (or ``DataParallel``) is saved and
loaded through ``model.module``, so checkpoints are interchangeable with single-process
runs; when :mod:`torch.distributed` is initialised only rank 0 writes files and shows a
progress bar, while every rank reads the checkpoint on resume (so all ranks restart from rank
0's RNG states). ``evaluate`` must return the same values on every rank (e.g. all-reduced),
since each rank decides early stopping on its own. Launching processes is left to the
caller.

Example:
    >>> cfg = TrainConfig("demo", epochs=50, patience=10, monitor="val_acc", mode="max")
    >>> result = fit(model, optimizer, train_epoch, evaluate, cfg)  # doctest: +SKIP
    >>> result.best["val_acc"], result.run_dir / "best.pt"  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .plot import plot_curves

__all__ = ["RunResult", "TrainConfig", "fit", "load_best", "seed_everything"]

_RESERVED = ("epoch", "time")


@dataclass
class TrainConfig:
    """Settings of one :func:`fit` run.

    Attributes:
        name: Run name; files go to ``runs_dir/name/``.
        epochs: Total number of epochs (including those done before a resume).
        seed: Seed for :func:`seed_everything` at the start of a fresh run.
        runs_dir: Parent directory of all runs.
        patience: Stop after this many consecutive epochs without improvement of ``monitor``
            (at least 1); ``None`` disables early stopping.
        monitor: Key of the dict returned by ``evaluate`` that decides the best epoch.
        mode: ``"min"`` or ``"max"``: whether a smaller or larger ``monitor`` is better.
        resume: Continue from ``runs_dir/name/checkpoint.pt`` if it exists, else start fresh.
        progress: Show a tqdm bar over epochs whose postfix holds the latest metrics.
    """

    name: str
    epochs: int = 100
    seed: int = 0
    runs_dir: str | Path = "runs"
    patience: int | None = None
    monitor: str = "val_loss"
    mode: str = "min"
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ``ValueError`` for an unusable setting."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("TrainConfig.name must be a non-empty string")
        if self.name in (".", "..") or any(c in self.name for c in "/\\"):
            # runs_dir / name must stay inside runs_dir ("../x" wrote beside it)
            raise ValueError(f"TrainConfig.name must be one folder name (no '/', '\\', '.' or "
                             f"'..'), got {self.name!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"TrainConfig.mode must be 'min' or 'max', got {self.mode!r}")
        for key in ("epochs", "patience"):
            v = getattr(self, key)
            if (v is not None or key == "epochs") and (not isinstance(v, int)
                                                       or isinstance(v, bool)):
                raise TypeError(f"TrainConfig.{key} must be an int, got {v!r}")
        if self.epochs < 0:
            raise ValueError(f"TrainConfig.epochs must be >= 0, got {self.epochs}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(
                f"TrainConfig.patience must be >= 1 or None, got {self.patience}")

    @property
    def run_dir(self) -> Path:
        """``runs_dir/name`` as a :class:`~pathlib.Path`."""
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(self).items()}


@dataclass
class RunResult:
    """What :func:`fit` returns.

    Attributes:
        history: One dict per epoch: ``{"epoch": e, **train_metrics, **eval_metrics,
            "time": seconds}`` (evaluation metrics win over training metrics of the same name).
        best_epoch: Epoch (0-based) of the best ``monitor`` value; -1 if no epoch ran.
        best: The history row of the best epoch (empty if no epoch ran).
        run_dir: ``runs_dir/name``.
        stopped_early: Whether early stopping ended the run before ``epochs``.
    """

    history: list[dict[str, float]]
    best_epoch: int
    best: dict[str, float]
    run_dir: Path
    stopped_early: bool


def seed_everything(seed: int) -> None:
    """Seeds python's :mod:`random`, numpy's global RNG and torch (CPU and every GPU).

    Args:
        seed: The seed; numpy receives it modulo ``2**32``.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_best(model: nn.Module, run_dir: str | Path) -> nn.Module:
    """Loads the best weights of a run (``run_dir/best.pt``) into ``model``.

    Args:
        model: The model, possibly wrapped in ``DistributedDataParallel``.
        run_dir: The run directory, e.g. :attr:`RunResult.run_dir`.

    Returns:
        ``model``, for chaining.
    """
    state = _load(Path(run_dir) / "best.pt")
    _unwrap(model).load_state_dict(state)
    return model


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_epoch: Callable[[int], dict[str, float]],
    evaluate: Callable[[int], dict[str, float]],
    config: TrainConfig,
    scheduler: Any | None = None,
) -> RunResult:
    """Trains for ``config.epochs`` epochs, checkpointing and logging every epoch.

    Each epoch runs ``model.train(); train_epoch(epoch)``, then ``model.eval()`` and
    ``evaluate(epoch)`` under ``torch.no_grad()``, then ``scheduler.step()`` if a scheduler is
    given (``ReduceLROnPlateau`` gets the monitored value), and finally writes the files
    described in the module docstring. The model is left at its last state; the best weights
    are in ``best.pt`` (see :func:`load_best`).

    Args:
        model: The model (plain or wrapped in ``DistributedDataParallel``).
        optimizer: Its optimizer; its state is checkpointed.
        train_epoch: ``train_epoch(epoch)`` trains one epoch and returns metrics such as
            ``{"loss": ...}``. Values may be floats or 0-d tensors.
        evaluate: ``evaluate(epoch)`` returns metrics such as ``{"val_loss": ...,
            "val_acc": ...}``; it must contain ``config.monitor``.
        config: The run settings.
        scheduler: Optional learning-rate scheduler, stepped once per epoch.

    Returns:
        The :class:`RunResult` (history includes epochs done before a resume).

    Raises:
        ValueError: If ``config`` is invalid, if ``evaluate`` does not return
            ``config.monitor``, or if a metric uses a reserved key (``"epoch"``, ``"time"``).
    """
    config.validate()
    main = _is_main()
    run_dir = config.run_dir
    ckpt_path = run_dir / "checkpoint.pt"
    sign = 1.0 if config.mode == "min" else -1.0
    wall_start = time.perf_counter()

    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_epoch, bad, prior_time, start = -1, 0, 0.0, 0
    if config.resume and ckpt_path.exists():
        ckpt = _load(ckpt_path)
        _check_resumable(ckpt, ckpt_path, config, optimizer)
        _unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        history, best, best_epoch = ckpt["history"], ckpt["best"], ckpt["best_epoch"]
        bad, prior_time, start = ckpt["bad_epochs"], ckpt["total_time"], ckpt["epoch"] + 1
        _set_rng_state(ckpt["rng"])
    else:
        seed_everything(config.seed)
    best_value = sign * best[config.monitor] if config.monitor in best else math.inf

    def exhausted() -> bool:
        return config.patience is not None and bad >= config.patience

    def write_metrics(stopped: bool) -> None:
        _atomic_write_text(run_dir / "metrics.json", json.dumps(_finite_or_null({
            "config": config.to_dict(), "history": history, "best_epoch": best_epoch,
            "best": best, "stopped_early": stopped,
            "total_time": prior_time + time.perf_counter() - wall_start,
        }), indent=1, allow_nan=False))

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    stopped_early = exhausted() and start < config.epochs  # resumed a run that had stopped
    end = start if stopped_early else config.epochs
    bar = tqdm(range(start, end), desc=config.name, initial=start, total=config.epochs,
               disable=not (config.progress and main), dynamic_ncols=True)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        train_metrics = _as_floats(train_epoch(epoch), "train_epoch")
        model.eval()
        with torch.no_grad():
            eval_metrics = _as_floats(evaluate(epoch), "evaluate")
        if config.monitor not in eval_metrics:
            raise ValueError(
                f"evaluate() returned no {config.monitor!r} (TrainConfig.monitor); "
                f"keys present: {sorted(eval_metrics)}")
        row: dict[str, float] = {"epoch": epoch, **train_metrics, **eval_metrics}
        row["time"] = time.perf_counter() - t0
        history.append(row)

        if not math.isfinite(row[config.monitor]):
            # no epoch could count as better than a NaN, or ever beat an infinite best: early
            # stopping would end the run without a best.pt; the files of the epochs before stay
            raise FloatingPointError(
                f"evaluate() returned {config.monitor}={row[config.monitor]} at epoch {epoch} "
                f"(TrainConfig.monitor): the run diverged; lower the learning rate or clip "
                f"the gradients, and resume from {run_dir / 'checkpoint.pt'} if it exists")
        value = sign * row[config.monitor]
        improved = value < best_value
        if improved:
            best_value, best, best_epoch, bad = value, row, epoch, 0
        else:
            bad += 1
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(row[config.monitor])
            else:
                scheduler.step()
        stopped_early = exhausted() and epoch + 1 < config.epochs

        if main:
            if improved:
                _atomic_save(_unwrap(model).state_dict(), run_dir / "best.pt")
            _atomic_save({
                "model": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "optimizer_class": type(optimizer).__name__,
                "run": {k: getattr(config, k) for k in _RESUME_KEYS},
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "epoch": epoch, "history": history, "best": best, "best_epoch": best_epoch,
                "bad_epochs": bad, "total_time": prior_time + time.perf_counter() - wall_start,
                "rng": _get_rng_state(),
            }, ckpt_path)
            write_metrics(stopped_early)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in _RESERVED},
                            refresh=False)
        if stopped_early:
            break
    bar.close()

    if main:
        write_metrics(stopped_early)
        plot_curves(history, run_dir / "curve.png", title=config.name)
    return RunResult(history=history, best_epoch=best_epoch, best=best, run_dir=run_dir,
                     stopped_early=stopped_early)


#: Settings a resume must share with the run that wrote the checkpoint: another seed would be
#: recorded but not used (the RNG states come from the checkpoint), another monitor or mode
#: would compare new values with a best row chosen by the old rule.
_RESUME_KEYS = ("seed", "monitor", "mode")
_CKPT_KEYS = ("model", "optimizer", "history", "best", "best_epoch", "bad_epochs",
              "total_time", "epoch", "rng")


def _load(path: Path) -> Any:
    """``torch.load`` of a run file, with an error naming it if it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files fail in zipfile, pickle, struct, ...
        raise ValueError(f"cannot read {path} ({type(e).__name__}: {e}); it is corrupt or not "
                         f"a graphattn run file: delete it, or start a fresh run "
                         f"(TrainConfig(resume=False) or another name)") from e


def _check_resumable(ckpt: Any, path: Path, config: TrainConfig,
                     optimizer: torch.optim.Optimizer) -> None:
    """Refuses a checkpoint that this run cannot continue, before anything is loaded."""
    missing = [k for k in _CKPT_KEYS if k not in ckpt] if isinstance(ckpt, dict) else _CKPT_KEYS
    if missing:
        raise ValueError(f"{path} is not a checkpoint of fit() (missing {list(missing)}): delete "
                         f"it or start a fresh run (TrainConfig(resume=False) or another name)")
    fresh = "start a fresh run (TrainConfig(resume=False) or another name)"
    run = ckpt.get("run")  # absent in checkpoints written before it was recorded
    if isinstance(run, dict):
        for key in _RESUME_KEYS:
            if key in run and run[key] != getattr(config, key):
                raise ValueError(f"{path} was written with {key}={run[key]!r}, this run has "
                                 f"TrainConfig.{key}={getattr(config, key)!r}: resume with the "
                                 f"same {key}, or {fresh}")
    cls = ckpt.get("optimizer_class")
    if cls is not None and cls != type(optimizer).__name__:
        raise ValueError(f"{path} holds the state of a {cls} optimizer, this run has a "
                         f"{type(optimizer).__name__}: resume with a {cls}, or {fresh}")


def _finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None`` (JSON ``null``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _unwrap(model: nn.Module) -> nn.Module:
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, parallel) else model


def _as_floats(metrics: Mapping[str, Any], source: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{source}() must return a dict of metrics, got {type(metrics).__name__}")
    clash = [k for k in _RESERVED if k in metrics]
    if clash:
        raise ValueError(f"{source}() returned reserved key(s) {clash}")
    return {str(k): v.detach().item() if isinstance(v, torch.Tensor) else float(v)
            for k, v in metrics.items()}


def _get_rng_state() -> dict[str, Any]:
    # Plain containers and tensors only, so the checkpoint loads with ``weights_only=True``.
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
