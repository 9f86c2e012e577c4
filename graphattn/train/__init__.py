"""Training kit shared by the examples: a resumable, checkpointing epoch loop and curve plots.

See :mod:`graphattn.train.loop` for the run-directory layout, exact resume and DDP notes.
"""

from .loop import RunResult, TrainConfig, fit, load_best, seed_everything
from .plot import plot_curves

__all__ = ["RunResult", "TrainConfig", "fit", "load_best", "plot_curves", "seed_everything"]
