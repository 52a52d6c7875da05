"""Run under `torchrun --nproc_per_node=2` by tests/test_trainer.py as `_ddp_worker.py MODE PATH`.

gradients: each rank builds the trainer for a few (dataset, regulariser) cases, backpropagates the critic loss +
penalty on its half of one fixed batch through the DDP-wrapped critic, and rank 0 saves the resulting parameter
gradients to PATH. The test compares them with one process on the whole batch.
budget: the ranks stop together when only one of them is over --time-budget.

Also imported by the test for `CASES`, `config` and `inputs`, so both sides build exactly the same thing.
"""

import os
import sys

import torch

HALF = 6                # samples per rank; the single-process comparison uses 2 * HALF

# (dataset, regulariser). DRAGAN is left out: its perturbation scale is the std over the whole local batch and
# its noise is drawn per process, so two halves can never reproduce one full batch.
CASES = [("8gaussians", "gp"), ("8gaussians", "r1"), ("8gaussians", "fd"), ("digits", "gp")]


def config(dataset, regularizer):
    from gpkernels.trainer.config import resolve
    depths = dict(depth=1, critic_depth=2) if dataset != "digits" else {}   # the digits nets have a fixed depth
    return resolve(dict(dataset=dataset, regularizer=regularizer, dtype="float64", width=8, batch_size=HALF,
                        weight=10.0, steps=1, seed=3, **depths))


def inputs(trainer, regularizer, n):
    """(real, fake, alpha) for n samples from fixed seeds; alpha as GradientPenalty takes it for this
    regulariser (None for r1, a pair for fd)."""
    g = torch.Generator().manual_seed(2024)
    real = trainer.sampler.sample(n, g)
    fake = torch.randn(real.shape, generator=g, dtype=torch.float64).tanh()
    a1 = torch.rand(n, generator=g, dtype=torch.float64)
    a2 = torch.rand(n, generator=g, dtype=torch.float64)
    alpha = {"r1": None, "fd": (a1, a2)}.get(regularizer, a1)
    return real, fake, alpha


def take(x, rank, half):
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(take(p, rank, half) for p in x)
    return x[rank * half:(rank + 1) * half]


def grads(trainer):
    from gpkernels.trainer.models import unwrap
    return {name: p.grad.detach().clone() for name, p in unwrap(trainer.critic).named_parameters()}


def gradients(path):
    """Each case's critic gradients after one DDP critic_backward on this rank's half; rank 0 saves them."""
    from gpkernels.trainer.loop import Trainer
    results = {}
    for dataset, reg in CASES:
        trainer = Trainer(config(dataset, reg), out=None, progress=False)
        assert trainer.world == 2 and isinstance(trainer.critic, torch.nn.parallel.DistributedDataParallel)
        real, fake, alpha = inputs(trainer, reg, 2 * HALF)
        r = trainer.rank
        wdist, pen, _ = trainer.critic_backward(take(real, r, HALF), take(fake, r, HALF),
                                                alpha=take(alpha, r, HALF))
        results[f"{dataset}/{reg}"] = dict(grads=grads(trainer), penalty=pen, rank=r)
        del trainer                          # DDP modules go before the process group does
    if torch.distributed.get_rank() == 0:
        torch.save(results, path)


def budget(path):
    """--time-budget under DDP: rank 0 is over budget after its first step while rank 1's clock says an hour
    is left. The ranks must agree to stop (a rank that trains on alone waits forever in DDP's all-reduce).
    Each rank saves the step it stopped at to PATH.RANK."""
    from gpkernels.trainer.config import resolve
    from gpkernels.trainer.loop import Trainer
    c = resolve(dict(dataset="8gaussians", width=8, depth=1, critic_depth=1, batch_size=4, n_critic=1, steps=20,
                     time_budget=1e-9))
    trainer = Trainer(c, out=None, progress=False)
    if trainer.rank == 1:
        trainer.train_seconds = -3600.0
    trainer.run(quiet=True)
    torch.save(dict(rank=trainer.rank, step=trainer.step), f"{path}.{trainer.rank}")
    del trainer


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    torch.set_num_threads(1)
    {"gradients": gradients, "budget": budget}[sys.argv[1]](sys.argv[2])
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
