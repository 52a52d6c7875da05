"""`python -m gpkernels.experiments NAME --out DIR [--quick]`: the WGAN-GP paper's findings as figures and a
report (gpkernels/trainer/experiments.py). NAME: weights, grad-norms, toy, convergence, text or all."""

import sys

from .trainer.experiments import main

if __name__ == "__main__":
    sys.exit(main())
