"""The run directory's contents: RUN_DIR/checkpoint.pt (a trainer's state, saved and loaded) and what a new or
resumed run keeps of RUN_DIR/metrics.jsonl (rundir.py: the lock, atomic writes, temporaries, advice).

A checkpoint is a dict: format, version, the resolved config, step, train_seconds, world_size, the nets'
and optimisers' state_dicts, the penalty's (its lazy call counter), the AMP scalers', every process's random
generator states (rng: one dict per rank), the --compare-reference copy's (reference, or None), and digest:
a SHA-256 of all of that (`digest`), checked on every load, so a checkpoint damaged on disk or edited by hand
is refused instead of training on from wrong numbers; the fields' types are checked too.
`check_compatible` is the one rule for what a resumed run may change: the CLI applies it to the command line
before building the Trainer, the Trainer again when it loads.
"""

import hashlib
import io
import json
import math
import numbers
import pathlib

import torch
import torch.distributed as dist

from . import rundir
from .config import RESUMABLE, UsageError, check, check_types
from .models import unwrap
from .rundir import CHECKPOINT, METRICS, RunDirError, agree, reason

FORMAT = "gpkernels-trainer"
VERSION = 2                                  # 2: with digest; 1 (no digest) is still read
READS = (1, 2)
RNG_KEYS = ("data", "noise", "penalty")


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


def digest(saved):
    """SHA-256 (hex) of a checkpoint dict's contents, its "digest" entry left out: every tensor's dtype, shape
    and bytes and every plain value, walked in a fixed order. It is the same after a save and a load."""
    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            keys = sorted((k for k in x if not (x is saved and k == "digest")),
                          key=lambda k: (type(k).__name__, repr(k)))
            h.update(f"D{len(keys)}{{".encode())
            for k in keys:
                walk(k)
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(f"{type(x).__name__[0]}{len(x)}[".encode())
            for v in x:
                walk(v)
            h.update(b"]")
        else:                                # str, int, float (repr round-trips), bool, None, dtype, ...
            h.update(f"{type(x).__name__}:{x!r};".encode())

    walk(saved)
    return h.hexdigest()


def save(trainer, path):
    """Write the trainer's checkpoint to `path` atomically (rank 0 writes; every process must call it). A failed
    write (a full disk, say) removes its temporary, keeps the previous checkpoint and raises RunDirError on
    every process."""
    saved = state(trainer)                   # every process joins the gather
    problem = None
    if trainer.main:
        saved["digest"] = digest(saved)
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        try:
            rundir.write_atomic(path, buffer.getbuffer())
        except OSError as e:
            problem = f"cannot write {path}: {reason(e)}"
    agree(trainer, problem, RunDirError)
    if trainer.out is not None and pathlib.Path(path) == trainer.out / CHECKPOINT:
        trainer.saved_step = trainer.step


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
    trainer.train_seconds = float(saved["train_seconds"])
    trainer.saved_step = saved["step"]


def read_checkpoint(path):
    """The checkpoint dict, or UsageError with one line saying why it cannot be used: unreadable, not a trainer
    checkpoint, another version, contents that do not match their digest, or fields of the wrong type."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                   # truncated, not a torch file, unpickling refused, ...
        raise UsageError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise UsageError(f"{path} is not a gpkernels trainer checkpoint")
    if saved.get("version") not in READS:
        raise UsageError(f"{path} has checkpoint version {saved.get('version')!r}; this gpkernels reads "
                         f"version{'s' if len(READS) > 1 else ''} {', '.join(map(str, READS))}")
    if saved["version"] >= 2 and (not isinstance(saved.get("digest"), str) or saved["digest"] != digest(saved)):
        raise UsageError(f"{path} is corrupt: its contents do not match the SHA-256 digest saved with them "
                         f"(damaged on disk, or edited); restore a good copy, or start the run again with "
                         f"--overwrite")
    _validate(saved, path)
    return saved


def _validate(saved, path):
    """UsageError naming the first field of `saved` that is missing or of the wrong type."""
    def bad(field, value, what):
        text = repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        raise UsageError(f"{path} is damaged: its {field} is {text}, not {what}; restore a good copy, or start "
                         f"the run again with --overwrite")

    def integer(v, minimum):
        return isinstance(v, int) and not isinstance(v, bool) and v >= minimum

    config = saved.get("config")
    if not isinstance(config, dict):
        bad("config", config, "a dict of the run's options")
    try:
        check_types(config)
        check(config, {})
    except UsageError as e:
        raise UsageError(f"{path} is damaged: its config is not valid ({e}); restore a good copy, or start the run "
                         f"again with --overwrite") from None
    if not integer(saved.get("step"), 0):
        bad("step", saved.get("step"), "an integer >= 0")
    seconds = saved.get("train_seconds")
    if not (isinstance(seconds, numbers.Real) and not isinstance(seconds, bool) and math.isfinite(seconds)
            and seconds >= 0):
        bad("train_seconds", seconds, "a finite number >= 0")
    world = saved.get("world_size")
    if not integer(world, 1):
        bad("world_size", world, "an integer >= 1")
    for key in ("generator", "critic"):
        sd = saved.get(key)
        if not (isinstance(sd, dict) and sd and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in sd.items())):
            bad(key, sd if not isinstance(sd, dict) else type(sd).__name__, "a state_dict of tensors")
    for key in ("opt_g", "opt_d"):
        sd = saved.get(key)
        if not (isinstance(sd, dict) and isinstance(sd.get("state"), dict)
                and isinstance(sd.get("param_groups"), list)):
            bad(key, sd, "an optimizer state_dict")
    for key in ("penalty", "scalers", "reference"):
        if saved.get(key) is not None and not isinstance(saved[key], dict):
            bad(key, saved[key], "a dict or None")
    rng = saved.get("rng")
    if not (isinstance(rng, list) and len(rng) == world
            and all(isinstance(r, dict) and all(isinstance(r.get(k), torch.Tensor) and r[k].dtype == torch.uint8
                                                for k in RNG_KEYS) for r in rng)):
        bad("rng", type(rng).__name__, f"a list of {world} dicts of random generator states")


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


def _claim(out, resume):
    """Rank 0's first look at `out`: a directory (created unless resuming), locked for this run (RunLock), in
    which files can be created. Returns the lock; UsageError when any of that fails."""
    try:
        exists, is_dir = out.exists(), out.is_dir()
    except OSError as e:
        raise UsageError(f"--out {out} cannot be examined ({reason(e)})") from None
    if exists and not is_dir:
        raise UsageError(f"--out {out} is a file, not a directory" + (" (nothing to resume)" if resume else ""))
    if not exists:
        if resume:
            raise UsageError(rundir.nothing_to_resume(out))
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out {out}: cannot create the directory ({reason(e)})") from None
    lock = rundir.RunLock(out)
    try:
        rundir.check_writable(out)
    except BaseException:
        lock.release()
        raise
    return lock


def checkpoint_bytes(trainer):
    """About how many bytes a checkpoint of this trainer takes: the nets, the optimisers' moments, the
    --compare-reference copy, and some room for the rest."""
    nets = sum(t.numel() * t.element_size() for net in (trainer.generator, trainer.critic)
               for t in unwrap(net).state_dict().values())
    moments = 1 if trainer.config["optimizer"] == "rmsprop" else 2
    return nets * (1 + moments) * (2 if trainer.reference is not None else 1) + (64 << 10)


def prepare(trainer, resume, overwrite):
    """Set up trainer.out for a run. Rank 0 creates it (unless resuming) and locks it for the run's life
    (trainer.lock, released by trainer.close()); then on `resume` every process loads its checkpoint, and the
    metrics.jsonl records up to its step are kept (in trainer.history too); otherwise a directory that holds a
    run is refused unless `overwrite`, which deletes that run's files. Temporaries that killed writers left are
    removed, and metrics.jsonl is rewritten atomically. Every refusal is a UsageError on every process."""
    out = trainer.out
    path = out / CHECKPOINT
    problem = None
    if trainer.main:
        try:
            trainer.lock = _claim(out, resume)
        except UsageError as e:
            problem = str(e)
    agree(trainer, problem)
    if resume:
        if not path.exists():
            raise UsageError(rundir.nothing_to_resume(out, locked=True))
        load(trainer, path)
    has_checkpoint, has_metrics = path.exists(), (out / METRICS).exists()
    if trainer.world > 1:
        # Every process looks before rank 0 writes anything, so all of them see the same directory and
        # all of them stop on a refusal (none is left waiting in a collective).
        dist.barrier()
    if (has_checkpoint or has_metrics) and not resume and not overwrite:
        if has_checkpoint:
            raise UsageError(f"{out} already holds a run; pass --resume to continue it, --overwrite "
                             f"to start again, or choose another --out")
        raise UsageError(f"{out} holds a run that stopped before it wrote a checkpoint, so there is nothing to "
                         f"resume; start it again with --overwrite, or choose another --out")
    problem = None
    if trainer.main:
        target = out
        try:
            if not resume:
                for name in (CHECKPOINT, METRICS, "samples.png", "samples.txt"):
                    target = out / name
                    target.unlink(missing_ok=True)
            target = out
            rundir.remove_temporaries(out)
            rundir.check_free_space(out, checkpoint_bytes(trainer))
            lines = []
            target = out / METRICS
            if resume and target.exists():
                for line in target.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue             # a line cut short by a crash
                    step = record.get("step") if isinstance(record, dict) else None
                    if isinstance(step, numbers.Real) and not isinstance(step, bool) and step <= trainer.step:
                        lines.append(line)
                        trainer.history.append(record)
            # Replaced in one step: a kill or a full disk mid-way leaves the old file whole.
            rundir.write_atomic(target, "".join(line + "\n" for line in lines).encode())
        except UsageError as e:
            problem = str(e)
        except OSError as e:
            problem = f"cannot write {target}: {reason(e)}" + ("; the run is left as it was" if resume else "")
    agree(trainer, problem)
