"""The run directory on disk: RUN_DIR/checkpoint.pt (a trainer's state, saved and loaded) and what a new or
resumed run keeps of RUN_DIR/metrics.jsonl.

A checkpoint is a dict: format, version, the resolved config, step, train_seconds, world_size, the nets'
and optimisers' state_dicts, the penalty's (its lazy call counter), the AMP scalers', every process's random
generator states (rng: one dict per rank) and the --compare-reference copy's (reference, or None).
`check_compatible` is the one rule for what a resumed run may change: the CLI applies it to the command line
before building the Trainer, the Trainer again when it loads.
"""

import json
import math
import os
import pathlib

import torch
import torch.distributed as dist

from .config import RESUMABLE, UsageError
from .models import unwrap

FORMAT = "gpkernels-trainer"
VERSION = 1
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def state(trainer):
    """The trainer's checkpoint dict. Under DDP every process must call it (the random states are gathered)."""
    rng = {k: g.get_state().cpu() for k, g in trainer.rng.items()}
    if trainer.world > 1:
        gathered = [None] * trainer.world
        dist.all_gather_object(gathered, rng)
    else:
        gathered = [rng]
    scalers = trainer.scalers
    out = dict(format=FORMAT, version=VERSION, config=trainer.config, step=trainer.step,
               train_seconds=trainer.train_seconds, world_size=trainer.world,
               generator=unwrap(trainer.generator).state_dict(), critic=unwrap(trainer.critic).state_dict(),
               opt_g=trainer.opt_g.state_dict(), opt_d=trainer.opt_d.state_dict(),
               penalty=None if trainer.penalty is None else trainer.penalty.state_dict(),
               scalers=None if scalers is None else {k: s.state_dict() for k, s in scalers.items()},
               rng=gathered, reference=None)
    if trainer.reference is not None:
        ref = trainer.reference
        out["reference"] = dict(generator=ref["generator"].state_dict(), critic=ref["critic"].state_dict(),
                                opt_g=ref["opt_g"].state_dict(), opt_d=ref["opt_d"].state_dict(),
                                calls=ref["penalty"].calls)
    return out


def save(trainer, path):
    """Write the trainer's checkpoint to `path` (rank 0 writes; every process must call it)."""
    saved = state(trainer)                   # every process joins the gather
    if not trainer.main:
        return
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(saved, tmp)
    os.replace(tmp, path)                    # a crash mid-save leaves the previous checkpoint intact


def load(trainer, path):
    """Restore the trainer from the checkpoint at `path` (each process its own random states); UsageError when
    the checkpoint is unreadable or does not fit the trainer's config and process count."""
    saved = read_checkpoint(path)
    check_compatible(saved, trainer.config, trainer.world)
    try:
        unwrap(trainer.generator).load_state_dict(saved["generator"])
        unwrap(trainer.critic).load_state_dict(saved["critic"])
        trainer.opt_g.load_state_dict(saved["opt_g"])
        trainer.opt_d.load_state_dict(saved["opt_d"])
        if trainer.penalty is not None:
            trainer.penalty.load_state_dict(saved["penalty"])
        if trainer.scalers is not None and saved["scalers"] is not None:
            for k, s in trainer.scalers.items():
                s.load_state_dict(saved["scalers"][k])
        for k, g in trainer.rng.items():
            g.set_state(saved["rng"][trainer.rank][k].to(g.get_state().device))
        if trainer.reference is not None:
            ref, theirs = trainer.reference, saved["reference"]
            for k in ("generator", "critic", "opt_g", "opt_d"):
                ref[k].load_state_dict(theirs[k])
            ref["penalty"].calls = theirs["calls"]
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
        raise UsageError(f"{path} does not match this run's models ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from None
    trainer.step = saved["step"]
    trainer.train_seconds = saved["train_seconds"]


def read_checkpoint(path):
    """The checkpoint dict, or UsageError with one line saying why it cannot be used."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                   # truncated, not a torch file, unpickling refused, ...
        raise UsageError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise UsageError(f"{path} is not a gpkernels trainer checkpoint")
    if saved.get("version") != VERSION:
        raise UsageError(f"{path} has checkpoint version {saved.get('version')}; this gpkernels reads "
                         f"version {VERSION}")
    return saved


def check_compatible(saved, config, world):
    """UsageError unless the run `config` (a complete config) running in `world` processes may continue the
    checkpoint dict `saved`: the same settings except RESUMABLE ones, the same process count, --steps not below
    the checkpoint's step."""
    flags = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE)
    old = saved["config"]
    for key, value in config.items():
        if key not in RESUMABLE and old.get(key) != value:
            raise UsageError(f"the checkpoint was trained with --{key.replace('_', '-')} {old.get(key)!r}, this run "
                             f"asks for {value!r}; only {flags} may change on --resume")
    if saved["world_size"] != world:
        raise UsageError(f"the checkpoint was written by {saved['world_size']} process(es); resume it with the "
                         f"same number (got {world})")
    if config["steps"] < saved["step"]:
        raise UsageError(f"--steps {config['steps']} is below the checkpoint's step {saved['step']}")


def prepare(trainer, resume, overwrite):
    """Set up trainer.out for a run: on `resume` load its checkpoint and keep the metrics.jsonl records up to
    its step (in trainer.history too); otherwise refuse a directory that holds a run unless `overwrite`, which
    deletes that run's files."""
    out = trainer.out
    path = out / CHECKPOINT
    if resume:
        if not path.exists():
            raise UsageError(f"--resume: {path} does not exist (nothing to resume)")
        load(trainer, path)
    existing = path.exists() or (out / METRICS).exists()
    if trainer.world > 1:
        # Every process looks before rank 0 writes anything, so all of them see the same directory and
        # all of them stop on a refusal (none is left waiting in a collective).
        dist.barrier()
    if existing and not resume:
        if not overwrite:
            raise UsageError(f"{out} already holds a run; pass --resume to continue it, --overwrite "
                             f"to start again, or choose another --out")
        if trainer.main:
            for name in (CHECKPOINT, METRICS, "samples.png", "samples.txt"):
                (out / name).unlink(missing_ok=True)
    if trainer.main:
        out.mkdir(parents=True, exist_ok=True)
        lines = []
        if resume and (out / METRICS).exists():
            for line in (out / METRICS).read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue                 # a line cut short by a crash
                if record.get("step", math.inf) <= trainer.step:
                    lines.append(line)
                    trainer.history.append(record)
        (out / METRICS).write_text("".join(line + "\n" for line in lines))
