"""Generators and critics of the reference trainer. No critic holds BatchNorm: it couples the samples of
a batch, and the per-sample gradient the penalty constrains would no longer be per-sample (LayerNorm is
the substitute, optional for the digits critic).

    toy      G: (B, 2) noise -> (B, 2)            D: (B, 2) -> (B,)           ReLU MLPs, 512 wide
    digits   G: (B, 64) noise -> (B, 1, 8, 8)     D: (B, 1, 8, 8) -> (B,)     conv nets, LeakyReLU critic
    text     G: (B, 128) noise -> (B, V, L) softmax over V per position     D: (B, V, L) -> (B,)
             1-D conv residual nets (Gulrajani et al. 2017, section 5.3)

`unwrap` gives the plain module behind a DistributedDataParallel wrapper (the trainer's nets under torchrun).
"""

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    """(B, d_in) -> (B, d_out) (squeezed to (B,) when d_out == 1): `depth` hidden ReLU layers of `width`."""

    def __init__(self, d_in, d_out, width=512, depth=3):
        super().__init__()
        dims = [d_in] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], d_out)

    def forward(self, x):
        for layer in self.hidden:
            x = F.relu(layer(x))
        x = self.out(x)
        return x.squeeze(1) if x.shape[1] == 1 else x


class DigitsGenerator(nn.Module):
    """(B, noise) -> (B, 1, 8, 8) in (-1, 1): linear to 128x2x2, two stride-2 transposed convs, tanh."""

    def __init__(self, noise=64, width=64):
        super().__init__()
        self.width = width
        self.fc = nn.Linear(noise, 2 * width * 2 * 2)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)        # 2 -> 4
        self.up2 = nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1)      # 4 -> 8
        self.to_image = nn.Conv2d(width // 2, 1, 3, padding=1)

    def forward(self, z):
        x = F.relu(self.fc(z)).view(-1, 2 * self.width, 2, 2)
        x = F.relu(self.up1(x))
        x = F.relu(self.up2(x))
        return torch.tanh(self.to_image(x))


class DigitsCritic(nn.Module):
    """(B, 1, 8, 8) -> (B,): 3x3 conv, two stride-2 4x4 convs (8 -> 4 -> 2), LeakyReLU(0.2), a linear score.
    layernorm=True normalises each conv output over (C, H, W) per sample."""

    def __init__(self, width=64, layernorm=False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(width // 2, width, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)
        if layernorm:
            self.norms = nn.ModuleList([nn.LayerNorm([width // 2, 8, 8]), nn.LayerNorm([width, 4, 4]),
                                        nn.LayerNorm([2 * width, 2, 2])])
        else:
            self.norms = None
        self.fc = nn.Linear(2 * width * 2 * 2, 1)

    def forward(self, x):
        for i, conv in enumerate((self.conv1, self.conv2, self.conv3)):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = F.leaky_relu(x, 0.2)
        return self.fc(x.flatten(1)).squeeze(1)


class ResBlock1d(nn.Module):
    """x + 0.3 * conv(relu(conv(relu(x)))), kernel 5, as in the WGAN-GP language model."""

    def __init__(self, dim):
        super().__init__()
        self.conv1 = nn.Conv1d(dim, dim, 5, padding=2)
        self.conv2 = nn.Conv1d(dim, dim, 5, padding=2)

    def forward(self, x):
        return x + 0.3 * self.conv2(F.relu(self.conv1(F.relu(x))))


class TextGenerator(nn.Module):
    """(B, noise) -> (B, V, L): per position a softmax probability vector over the V characters."""

    def __init__(self, vocab, seq_len=32, dim=128, blocks=5, noise=128):
        super().__init__()
        self.dim, self.seq_len = dim, seq_len
        self.fc = nn.Linear(noise, dim * seq_len)
        self.blocks = nn.Sequential(*[ResBlock1d(dim) for _ in range(blocks)])
        self.to_chars = nn.Conv1d(dim, vocab, 1)

    def forward(self, z):
        x = self.fc(z).view(-1, self.dim, self.seq_len)
        return torch.softmax(self.to_chars(self.blocks(x)), dim=1)


class TextCritic(nn.Module):
    """(B, V, L) one-hot or probabilities -> (B,)."""

    def __init__(self, vocab, seq_len=32, dim=128, blocks=5):
        super().__init__()
        self.from_chars = nn.Conv1d(vocab, dim, 1)
        self.blocks = nn.Sequential(*[ResBlock1d(dim) for _ in range(blocks)])
        self.fc = nn.Linear(dim * seq_len, 1)

    def forward(self, x):
        return self.fc(self.blocks(self.from_chars(x)).flatten(1)).squeeze(1)


def build(config, vocab=None):
    """(generator, critic, noise_dim) for a resolved trainer config (see gpkernels.trainer.config)."""
    name = config["dataset"]
    if name in ("8gaussians", "25gaussians", "swissroll"):
        g = MLP(2, 2, config["width"], config["depth"])
        d = MLP(2, 1, config["width"], config["critic_depth"])
        return g, d, 2
    if name == "digits":
        return (DigitsGenerator(config["noise"], config["width"]),
                DigitsCritic(config["width"], config["layernorm"]), config["noise"])
    if name == "text":
        return (TextGenerator(vocab, 32, config["width"], config["depth"], config["noise"]),
                TextCritic(vocab, 32, config["width"], config["depth"]), config["noise"])
    raise ValueError(f"unknown dataset {name!r}")


def unwrap(module):
    """The module itself, or the one a DistributedDataParallel wrapper holds (its parameters and state_dict
    without the wrapper's "module." prefix)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
