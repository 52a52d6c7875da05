"""`python -m gpkernels train`: the command line of the reference trainer."""

import pathlib
import sys

import torch

from . import config as cfg
from .checkpoint import CHECKPOINT, check_compatible, read_checkpoint
from .loop import Trainer, distributed_env, flushed_denormals
from .rundir import RunDirError, nothing_to_resume, reason

MAX_THREADS = 1024


def _default_out(given):
    return pathlib.Path("runs") / f"{given['dataset']}-{given.get('regularizer') or 'gp'}-seed{given.get('seed') or 0}"


PROG = "python -m gpkernels train"


def build(argv=None, prog=PROG):
    """(Trainer, args) from a command line; raises config.UsageError for a bad one."""
    args = cfg.parser(prog).parse_args(argv)
    given = cfg.given_from_args(args)
    if args.threads is not None:
        if not 1 <= args.threads <= MAX_THREADS:
            raise cfg.UsageError(f"--threads must be an integer in [1, {MAX_THREADS}], got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.resume and args.overwrite:
        raise cfg.UsageError("--resume and --overwrite contradict each other")
    if args.resume:
        if args.out is None:
            raise cfg.UsageError("--resume needs --out RUN_DIR (the run to continue)")
        path = pathlib.Path(args.out) / CHECKPOINT
        if not path.exists():
            raise cfg.UsageError(nothing_to_resume(args.out))
        saved = read_checkpoint(path)
        # Unset options come from the checkpoint; set ones must agree with it, except the resumable ones.
        config = dict(saved["config"])
        config.update({k: tuple(v) if k == "betas" else v for k, v in given.items() if v is not None})
        check_compatible(saved, config, distributed_env()[1])
        cfg.check(config, {})
    else:
        config = cfg.resolve(given)
    out = args.out if args.out is not None else _default_out(given)
    trainer = Trainer(config, out=out, progress=not args.no_progress, resume=args.resume,
                      overwrite=args.overwrite)
    return trainer, args


def summary(trainer):
    """Lines describing the finished run."""
    h = [r for r in trainer.history if any(k in r for k in ("w1", "frechet", "js4"))]
    lines = [f"run directory   {trainer.out}",
             f"steps           {trainer.step} in {trainer.train_seconds:.1f} s of training "
             f"({trainer.step / max(trainer.train_seconds, 1e-9):.2f} steps/s)"]
    if trainer.last:
        lines.append(f"last step       critic loss {trainer.last['d_loss']:.4g}, generator loss "
                     f"{trainer.last['g_loss']:.4g}, Wasserstein estimate {trainer.last['wasserstein']:.4g}")
    if h:
        r = h[-1]
        if "w1" in r:
            lines.append(f"W1 (exact, 1000 vs 1000 samples)   {r['w1']:.4f} (two real samples: "
                         f"{trainer.evaluator().floor:.4f})")
        if "frechet" in r:
            ev = trainer.evaluator().frechet
            lines.append(f"digits Frechet distance   {r['frechet']:.3f} (real held-out vs train: {ev.floor:.3f}; "
                         f"classifier accuracy {ev.accuracy:.3f})")
        if "js4" in r:
            floor = trainer.evaluator().floor
            lines.append("n-gram JS (bits)   " + ", ".join(f"JS-{n} {r[f'js{n}']:.4f}" for n in range(1, 5))
                         + "   (real text: " + ", ".join(f"{floor[f'js{n}']:.4f}" for n in range(1, 5)) + ")")
            lines.append("samples:")
            lines.extend("  " + repr(s) for s in r["samples"][:8])
    if trainer.reference is not None:
        lines.append(f"largest |parameter - plain-autograd parameter|   {trainer.max_reference_difference():.3e}")
    return lines


def write_samples(trainer):
    """RUN_DIR/samples.png (toy, digits) or samples.txt (text)."""
    g = torch.Generator().manual_seed(trainer.config["seed"])
    group = cfg.dataset_group(trainer.config["dataset"])
    if group == "text":
        strings = trainer.sampler.decode(trainer.generate(64, g))
        (trainer.out / "samples.txt").write_text("\n".join(strings) + "\n")
        return
    from .plots import critic_contour, digit_grid, pyplot
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5, 5))
    if group == "toy":
        critic_contour(ax, trainer, g)
    else:
        ax.imshow(digit_grid(trainer.generate(64, g), rows=8).numpy(), cmap="gray_r", vmin=-1, vmax=1)
        ax.axis("off")
    fig.suptitle(f"{trainer.config['dataset']} / {trainer.config['regularizer']}, step {trainer.step}")
    fig.savefig(trainer.out / "samples.png", dpi=100)
    plt.close(fig)


def divergence_advice(config):
    """What may help a run whose losses became non-finite, given its settings: never a change that makes it
    worse (a larger --weight for a weight that is already far above the paper's)."""
    reg, lr = config["regularizer"], config["lr"]
    tips = [f"a smaller --lr (this run: {lr:g})"]
    if reg in cfg.PENALTIES:
        paper = cfg.DATASET_DEFAULTS[cfg.dataset_group(config["dataset"])]["weight"]
        weight = config["weight"] * config["lazy"]
        if weight > 10 * paper:
            tips.append(f"a smaller --weight (this run: {config['weight']:g}"
                        + (f" x --lazy {config['lazy']}" if config["lazy"] > 1 else "")
                        + f"; the paper uses {paper:g} on this dataset)")
        elif weight < paper / 10:
            tips.append(f"a larger --weight (this run: {config['weight']:g}; the paper uses {paper:g} on this "
                        f"dataset)")
    elif reg == "none":
        tips.append("a constraint on the critic (--regularizer gp)")
    elif reg == "clip":
        tips.append(f"a smaller --clip (this run: {config['clip']:g})")
    if config["amp"]:
        tips.append("running without --amp")
    return "Try " + (tips[0] if len(tips) == 1 else "; ".join(tips[:-1]) + "; or " + tips[-1]) + "."


def main(argv=None, prog=PROG):
    """The command line; returns the exit status (0, or 2 for a usage error)."""
    with flushed_denormals():                # weight clipping's subnormal floats: see there
        return _main(argv, prog)


def _main(argv, prog):
    try:
        trainer, args = build(argv, prog)
    except cfg.UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        if trainer.step >= trainer.config["steps"]:
            if trainer.main:
                print(f"{trainer.out} is already at step {trainer.step}; raise --steps to train further")
        else:
            try:
                trainer.run()
            except RunDirError as e:         # e.g. the disk filled up: the last checkpoint stays as it was
                if trainer.main:
                    print(f"{prog}: error: {e}; {trainer.checkpoint_note()}", file=sys.stderr)
                return 1
            if trainer.diverged is not None:
                if trainer.main:
                    losses = ", ".join(f"{k} {trainer.last[k]}" for k in ("d_loss", "g_loss"))
                    print(f"{prog}: training diverged at step {trainer.diverged} ({losses}); "
                          f"{trainer.checkpoint_note()}. {divergence_advice(trainer.config)}", file=sys.stderr)
                return 1
            if trainer.main:
                if trainer.out is not None:
                    try:
                        write_samples(trainer)
                    except OSError as e:
                        print(f"{prog}: error: cannot write the samples to {trainer.out}: {reason(e)}; "
                              f"{trainer.checkpoint_note()}", file=sys.stderr)
                        return 1
                print("\n".join(summary(trainer)))
    finally:
        trainer.close()
        if trainer.world > 1:
            # Free the DDP-wrapped nets before their process group, and leave together: a rank whose DDP
            # reducers outlived the destroyed gloo group, exiting while rank 0 still wrote its files, now and
            # then died in std::terminate at exit (SIGABRT; torchrun then failed the run).
            del trainer
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
