"""The reference WGAN trainer: `python -m gpkernels.train` (cli.py), the Trainer class (loop.py), datasets
(data.py), networks (models.py), metrics (metrics.py), figures (experiments.py, plots.py)."""

from .config import PENALTIES, REGULARIZERS, UsageError, resolve
from .data import DATASETS
from .loop import Trainer

__all__ = ["Trainer", "resolve", "UsageError", "DATASETS", "REGULARIZERS", "PENALTIES"]
