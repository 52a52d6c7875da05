"""Counting a training step's FLOPs, gradient penalty included, to compare it with its floor.

    with gpkernels.FlopCount() as count:
        loss = critic(fake).mean() - critic(real).mean() + gpkernels.gradient_penalty(critic, real, fake)
        loss.backward()
    count.total            # FLOPs of the matrix products and convolutions, forwards and backwards

torch.utils.flop_counter.FlopCounterMode cannot be used around a gradient penalty: its module tracker hooks
the inputs of every module, and those hooks raise inside an autograd.grad() taken w.r.t. a module's input,
as every gradient penalty takes it. FlopCount applies the same per-op formulas without the tracker (no
per-module breakdown). Counts are deterministic: use them in tests where a time would be flaky.
"""

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class FlopCount(TorchDispatchMode):
    """While active, adds up the FLOPs of every matrix product and convolution (forward or backward, on
    any device) run on this thread, by FlopCounterMode's formulas, into `total`."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out
