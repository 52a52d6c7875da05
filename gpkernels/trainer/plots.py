"""Matplotlib helpers shared by the trainer's sample figure and the experiments: `pyplot` (the package's one
way to get a file-only pyplot; the benchmarks use it too), `critic_contour` (toy sets) and `digit_grid`."""

import torch

from .models import unwrap


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def critic_contour(ax, trainer, generator, n=500, grid=120):
    """Draw the critic's value as filled contours on a 2-D toy set, with `n` real (orange) and generated
    (green) samples on top. Returns the contour set (for a colour bar)."""
    real = trainer.sampler.sample(n, generator).float().cpu()
    fake = trainer.generate(n, generator)
    both = torch.cat([real, fake])
    lo = both.min(0).values.clamp(min=-4.0) - 0.3
    hi = both.max(0).values.clamp(max=4.0) + 0.3
    xs = torch.linspace(float(lo[0]), float(hi[0]), grid)
    ys = torch.linspace(float(lo[1]), float(hi[1]), grid)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    critic = unwrap(trainer.critic)
    with torch.no_grad():
        values = critic(points.to(trainer.device, trainer.dtype)).float().cpu().reshape(grid, grid)
    filled = ax.contourf(gx.numpy(), gy.numpy(), values.numpy(), levels=20, cmap="viridis", alpha=0.85)
    ax.scatter(real[:, 0], real[:, 1], s=3, c="tab:orange", label="real")
    ax.scatter(fake[:, 0], fake[:, 1], s=3, c="tab:green", label="generated")
    ax.set_xlim(float(lo[0]), float(hi[0]))
    ax.set_ylim(float(lo[1]), float(hi[1]))
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return filled


def digit_grid(images, rows=6, gap=1):
    """(rows * rows, 1, 8, 8) images in [-1, 1] -> one (rows * (8 + gap) + gap)-square picture, -1 between."""
    size = 8 + gap
    canvas = torch.full((rows * size + gap, rows * size + gap), -1.0)
    for i, img in enumerate(images[:rows * rows]):
        r, c = divmod(i, rows)
        canvas[gap + r * size:gap + r * size + 8, gap + c * size:gap + c * size + 8] = img[0].float()
    return canvas
