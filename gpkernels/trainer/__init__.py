"""The reference WGAN trainer, one job per module:

    cli.py           `python -m gpkernels train`: the command line, the run's summary and samples
    config.py        the options, the paper's defaults per dataset and regulariser, the usage checks
    data.py          the datasets: toy 2-D sets, 8x8 digits, character text
    models.py        the generators and critics (and `unwrap` for DDP-wrapped nets)
    regularizers.py  what each --regularizer asks of gpkernels.GradientPenalty, and the plain-autograd penalty
                     (gpkernels.reference) of the --compare-reference copy
    loop.py          the Trainer: nets, optimisers, critic and generator steps, the run loop and its log
    checkpoint.py    the run directory's contents: checkpoint save/load (with a SHA-256 digest), read_checkpoint,
                     the resume compatibility check, prepare (a new or resumed run's directory)
    rundir.py        the run directory on disk: its lock, atomic writes, leftover temporaries, resume advice
    evaluation.py    the Evaluator: each dataset's sample-quality metric on a trainer's generator
    metrics.py       the metrics themselves: exact W1, the digits Frechet distance, n-gram JS divergences
    plots.py         matplotlib helpers (pyplot, critic contours, digit grids)
    experiments.py   `python -m gpkernels experiments`: the WGAN-GP paper's findings as figures and a report
    frontier.py      the experiment `frontier`: cost against quality of clip, GP, LP, lazy/subsampled GP, FD
"""

from .config import PENALTIES, REGULARIZERS, UsageError, resolve
from .data import DATASETS
from .loop import Trainer

__all__ = ["Trainer", "resolve", "UsageError", "DATASETS", "REGULARIZERS", "PENALTIES"]
