"""The critics the benchmark scripts time the penalty and the critic step on.

None has BatchNorm: WGAN-GP's critic must not, because the penalty is taken per sample and batch
statistics would couple the samples. The activations are nn.ReLU / nn.LeakyReLU modules, out of place by
default; inplace=True gives the form most public WGAN-GP code writes (`nn.LeakyReLU(0.2, inplace=True)`,
`nn.ReLU(True)`). gpkernels reroutes both at the penalty points (see gpkernels/_reroute.py).

Not a package module: imported as `_critics` by the scripts in this folder (see _common.py).
"""

import torch.nn.functional as F
from torch import nn


def mlp_critic(inplace=False):
    """The WGAN-GP paper's toy critic: 2 -> 512 -> 512 -> 512 -> 1 with ReLU."""
    return nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace), nn.Linear(512, 512), nn.ReLU(inplace),
                         nn.Linear(512, 512), nn.ReLU(inplace), nn.Linear(512, 1))


class ConvCritic(nn.Module):
    """DCGAN-style critic: stride-2 4x4 convolutions doubling the channels from 64, LeakyReLU(0.2), and a
    final 4x4 valid convolution to one score per sample."""

    def __init__(self, size, inplace=False):
        super().__init__()
        stages = {32: 3, 64: 4}[size]
        layers, c_in = [], 3
        for k in range(stages):
            c_out = 64 * 2 ** k
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, 4, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).view(x.shape[0])


class _ResidualBlock(nn.Module):
    """Pre-activation block, x + conv(relu(conv(relu(x)))), with no normalisation layer."""

    def __init__(self, channels, inplace=False):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        # The first activation is out of place whatever `inplace` says: its input is also the skip branch,
        # so an in-place ReLU would change what is added back.
        self.act1 = nn.ReLU()
        self.act2 = nn.ReLU(inplace)

    def forward(self, x):
        return x + self.conv2(self.act2(self.conv1(self.act1(x))))


class ResNetCritic(nn.Module):
    """A small ResNet critic on 3x32x32 at 64 channels throughout:
    stride-2 3x3 stem conv (-> 16x16), block, stride-2 4x4 conv (-> 8x8), block, stride-2 4x4 conv (-> 4x4),
    block, ReLU, global mean pool, Linear(64, 1).
    The stem already halves the resolution so that a penalty step on 64 samples stays near 0.3 s on one
    CPU thread (measured on a 2-core EPYC); blocks at 32x32 would cost about four times as much."""

    def __init__(self, width=64, inplace=False):
        super().__init__()
        self.inplace = inplace
        self.stem = nn.Conv2d(3, width, 3, 2, 1)
        self.blocks = nn.ModuleList(_ResidualBlock(width, inplace) for _ in range(3))
        self.down = nn.ModuleList(nn.Conv2d(width, width, 4, 2, 1) for _ in range(2))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        h = self.blocks[0](self.stem(x))
        for down, block in zip(self.down, self.blocks[1:]):
            h = block(down(h))
        return self.head(F.relu(h, inplace=self.inplace).mean(dim=(2, 3))).view(x.shape[0])
