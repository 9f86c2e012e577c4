"""Tests of the training kit :mod:`graphattn.train`."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from graphattn.train import RunResult, TrainConfig, fit, load_best, plot_curves

N, D = 64, 4


def _data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)  # private generator: data independent of global RNG
    x = torch.randn(N, D, generator=g)
    y = x @ torch.randn(D, 1, generator=g) + 0.1 * torch.randn(N, 1, generator=g)
    return x[:48], y[:48], x[48:], y[48:]


def _model(init_seed: int = 1) -> nn.Module:
    torch.manual_seed(init_seed)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))


def _closures(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[Callable, Callable]:
    xt, yt, xv, yv = _data()

    def train_epoch(epoch: int) -> dict[str, float]:
        # Draws from all three global RNGs (torch: order + dropout, python: batch size,
        # numpy: target noise), so exact resume needs all of their states.
        bs = random.choice([8, 16])
        perm = torch.randperm(len(xt))
        total = 0.0
        for i in range(0, len(xt), bs):
            idx = perm[i:i + bs]
            noise = torch.from_numpy(np.random.normal(0, 0.01, (len(idx), 1))).float()
            loss = nn.functional.mse_loss(model(xt[idx]), yt[idx] + noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        return {"loss": total / len(xt)}

    def evaluate(epoch: int) -> dict[str, float]:
        assert not model.training and not torch.is_grad_enabled()
        return {"val_loss": nn.functional.mse_loss(model(xv), yv)}  # 0-d tensor is accepted

    return train_epoch, evaluate


def _run(tmp_path: Path, name: str, epochs: int, init_seed: int = 1, **kw) -> tuple:
    model = _model(init_seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    cfg = TrainConfig(name, epochs=epochs, runs_dir=tmp_path, **{"progress": False, **kw})
    return fit(model, opt, *_closures(model, opt), cfg, scheduler=sched), model


def test_files_and_history(tmp_path: Path) -> None:
    res, _ = _run(tmp_path, "basic", 4, resume=True)  # resume without checkpoint: fresh run
    assert isinstance(res, RunResult) and res.run_dir == tmp_path / "basic"
    for f in ("metrics.json", "checkpoint.pt", "best.pt", "curve.png"):
        assert (res.run_dir / f).is_file(), f
    assert (res.run_dir / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["epoch"] for r in res.history] == [0, 1, 2, 3]
    assert all(set(r) == {"epoch", "loss", "val_loss", "time"} for r in res.history)
    assert res.best == res.history[res.best_epoch] and not res.stopped_early
    assert res.best["val_loss"] == min(r["val_loss"] for r in res.history)
    meta = json.loads((res.run_dir / "metrics.json").read_text())
    assert meta["history"] == res.history and meta["best_epoch"] == res.best_epoch
    assert meta["config"]["runs_dir"] == str(tmp_path) and meta["stopped_early"] is False
    assert meta["total_time"] > 0


def test_exact_resume(tmp_path: Path) -> None:
    straight, m_straight = _run(tmp_path, "straight", 6)
    _run(tmp_path, "resumed", 3)
    resumed, m_resumed = _run(tmp_path, "resumed", 6, init_seed=99, resume=True)

    for a, b in zip(m_straight.state_dict().values(), m_resumed.state_dict().values()):
        assert torch.equal(a, b)

    def strip(h: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in r.items() if k != "time"} for r in h]

    assert len(resumed.history) == 6
    assert strip(resumed.history) == strip(straight.history)
    assert resumed.best_epoch == straight.best_epoch


def test_early_stopping_and_resume_after_stop(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = TrainConfig("es", epochs=20, patience=3, runs_dir=tmp_path, progress=False)
    res = fit(model, opt, lambda e: {"loss": 1.0}, lambda e: {"val_loss": 1.0}, cfg)
    assert len(res.history) == 4 and res.stopped_early and res.best_epoch == 0
    assert json.loads((res.run_dir / "metrics.json").read_text())["stopped_early"] is True

    cfg.resume = True
    again = fit(model, opt, lambda e: pytest.fail("ran an epoch"), lambda e: {}, cfg)
    assert len(again.history) == 4 and again.stopped_early


def test_monitor_errors_and_max_mode(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = TrainConfig("bad", epochs=2, runs_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"'val_loss'.*\['val_acc'\]"):
        fit(model, opt, lambda e: {}, lambda e: {"val_acc": 1.0}, cfg)
    with pytest.raises(ValueError, match="mode"):
        TrainConfig("x", mode="maximum")
    for bad in ("../escape", "a/b", "..", 3):
        with pytest.raises(ValueError, match="TrainConfig.name must be"):
            TrainConfig(bad)
    for kw in ({"epochs": "3"}, {"epochs": 2.5}, {"patience": True}):
        with pytest.raises(TypeError, match="must be an int"):
            TrainConfig("x", **kw)
    # a NaN monitor (a diverged run) raises at once: no epoch could improve on it, so early
    # stopping would end the run without best.pt (and a NaN in metrics.json)
    cfg = TrainConfig("nan", epochs=3, patience=1, runs_dir=tmp_path, progress=False)
    with pytest.raises(FloatingPointError, match="val_loss=nan at epoch 0"):
        fit(model, opt, lambda e: {}, lambda e: {"val_loss": float("nan")}, cfg)

    accs = [0.1, 0.5, 0.3, 0.2]
    saved: dict[int, dict[str, torch.Tensor]] = {}

    def train_epoch(epoch: int) -> dict[str, float]:
        with torch.no_grad():
            model.weight.add_(1.0)
        return {"loss": 1.0 - accs[epoch]}

    def evaluate(epoch: int) -> dict[str, float]:
        saved[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"val_acc": accs[epoch]}

    cfg = TrainConfig("max", epochs=4, monitor="val_acc", mode="max", runs_dir=tmp_path,
                      progress=False)
    res = fit(model, opt, train_epoch, evaluate, cfg)
    assert res.best_epoch == 1 and res.best["val_acc"] == 0.5
    assert torch.equal(model.weight, saved[3]["weight"])  # model left at its last state
    load_best(model, res.run_dir)
    assert all(torch.equal(v, saved[1][k]) for k, v in model.state_dict().items())


def test_plot_curves_groups(tmp_path: Path) -> None:
    hist = [{"epoch": e, "loss": 1 / (e + 1), "val_loss": 2 / (e + 1), "val_acc": e / 5,
             "time": 0.1} for e in range(5)]
    plot_curves(hist, tmp_path / "c.png", title="t")
    plot_curves([], tmp_path / "empty.png")
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "empty.png").is_file()


def test_non_main_rank_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("graphattn.train.loop._is_main", lambda: False)
    res, _ = _run(tmp_path, "rank1", 2, progress=True)
    assert len(res.history) == 2 and not res.run_dir.exists()


def test_ddp_model_saves_plain_state(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(nn.Linear(2, 1))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))

        def train_epoch(epoch: int) -> dict[str, float]:
            loss = ddp(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return {"loss": loss}  # tensor with grad is accepted

        cfg = TrainConfig("ddp", epochs=2, runs_dir=tmp_path, progress=False)
        res = fit(ddp, opt, train_epoch, lambda e: {"val_loss": ddp(x).pow(2).mean()}, cfg)
        state = torch.load(res.run_dir / "checkpoint.pt", weights_only=True)["model"]
        assert set(state) == {"weight", "bias"}
        plain = load_best(nn.Linear(2, 1), res.run_dir)
        assert res.best_epoch == 1  # val_loss decreases, so best.pt holds the last weights
        assert torch.equal(plain.weight, ddp.module.weight)
    finally:
        dist.destroy_process_group()


def test_resume_refuses_another_seed_optimizer_or_a_corrupt_checkpoint(tmp_path: Path) -> None:
    """Each case raises an error naming the file and the setting, before anything is loaded
    (another seed was recorded but not used; another optimizer's state loaded the weights and
    then failed with a KeyError; a torn file failed with struct.error or pickle errors)."""
    _run(tmp_path, "r", 2)
    ckpt = tmp_path / "r" / "checkpoint.pt"

    def resume(opt_cls=torch.optim.Adam, **kw):
        model = _model(init_seed=5)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        opt = opt_cls(model.parameters(), lr=1e-2)
        cfg = TrainConfig("r", epochs=3, runs_dir=tmp_path, resume=True, progress=False, **kw)
        try:
            fit(model, opt, *_closures(model, opt), cfg)
        finally:  # refused before the weights were touched
            for k, v in model.state_dict().items():
                assert torch.equal(v, before[k]), k

    with pytest.raises(ValueError, match=r"checkpoint.pt was written with seed=0, this run has "
                                         r"TrainConfig.seed=7"):
        resume(seed=7)
    with pytest.raises(ValueError, match="written with monitor='val_loss'"):
        resume(monitor="loss")
    with pytest.raises(ValueError, match="written with mode='min'"):
        resume(mode="max")
    with pytest.raises(ValueError, match="holds the state of a Adam optimizer, this run has a "
                                         "SGD"):
        resume(torch.optim.SGD)
    ckpt.write_bytes(ckpt.read_bytes()[:200])  # torn
    with pytest.raises(ValueError, match="cannot read .*checkpoint.pt .*corrupt"):
        resume()
    torch.save({"model": {}}, ckpt)  # a torch file, but not a checkpoint of fit()
    with pytest.raises(ValueError, match=r"is not a checkpoint of fit\(\) \(missing"):
        resume()
    (tmp_path / "r" / "best.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read .*best.pt"):
        load_best(_model(), tmp_path / "r")


def test_metrics_json_is_strict_with_non_finite_metrics(tmp_path: Path) -> None:
    """A NaN or infinite metric that is not the monitored one is written as null (a bare NaN
    made metrics.json unreadable by strict JSON parsers); the history keeps the float."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_epoch, evaluate = _closures(model, opt)

    def train_nan(epoch):
        return {**train_epoch(epoch), "grad_norm": float("nan"), "ratio": float("inf")}

    cfg = TrainConfig("nan", epochs=2, runs_dir=tmp_path, progress=False)
    result = fit(model, opt, train_nan, evaluate, cfg)
    assert math.isnan(result.history[0]["grad_norm"])

    def strict(c):
        raise ValueError(f"non-strict JSON constant {c}")

    data = json.loads((tmp_path / "nan" / "metrics.json").read_text(), parse_constant=strict)
    assert data["history"][1]["grad_norm"] is None and data["history"][1]["ratio"] is None
    assert data["best"]["grad_norm"] is None
    assert math.isfinite(data["history"][1]["loss"])
