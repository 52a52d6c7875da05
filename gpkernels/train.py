"""`python -m gpkernels.train --dataset 8gaussians --regularizer gp`: the reference WGAN trainer
(gpkernels/trainer/). `--help` lists the options."""

import sys

from .trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
