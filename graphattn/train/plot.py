"""Learning-curve plots for a :class:`~graphattn.train.RunResult` history."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["plot_curves"]

_SKIP = ("epoch", "time")


def plot_curves(history: list[dict[str, float]], path: Path, title: str = "") -> None:
    """Plots every metric of ``history`` against the epoch and saves a PNG.

    Keys containing ``"loss"`` share one subplot, all other metrics share a second one; a group
    with no key gets no subplot. ``"epoch"`` and ``"time"`` are not plotted. A metric missing
    from some rows is drawn over the rows that have it. The figure is drawn on an Agg canvas
    directly, so neither pyplot nor the global matplotlib backend is touched.

    Args:
        history: One dict per epoch, as in :attr:`RunResult.history`.
        path: Where to write the PNG; its parent directory must exist.
        title: Figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: keeps imports light
    from matplotlib.figure import Figure

    keys = list(dict.fromkeys(k for row in history for k in row if k not in _SKIP))
    groups = [g for g in ([k for k in keys if "loss" in k], [k for k in keys if "loss" not in k])
              if g]
    fig = Figure(figsize=(5.0 * max(len(groups), 1), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes: Sequence = fig.subplots(1, max(len(groups), 1), squeeze=False)[0]
    for ax, group in zip(axes, groups):
        for key in group:
            rows = [(row.get("epoch", i), row[key]) for i, row in enumerate(history) if key in row]
            ax.plot([e for e, _ in rows], [v for _, v in rows], label=key,
                    marker="o" if len(rows) < 30 else None, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if "loss" in group[0] else "metric")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if not groups:
        axes[0].text(0.5, 0.5, "no metrics", ha="center", va="center")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
