"""The reference WGAN trainer: the Trainer class builds the nets, optimisers and penalty from a config, runs the
critic and generator steps with the chosen regulariser (and the --compare-reference copy in lock-step), and
drives the run: evaluation (evaluation.py), logging to metrics.jsonl, checkpoints (checkpoint.py), Ctrl-C,
--time-budget and divergence, agreed across DDP processes.

One step = n_critic critic updates, then one generator update (the paper's "generator iteration").

    critic:     L_D = mean D(fake) - mean D(real) + penalty     (clip: then clamp every weight to [-c, c])
    generator:  L_G = -mean D(G(z))

Randomness comes from three generators the trainer owns and checkpoints (batches, noise, penalty points),
so a run stopped and resumed gives the same parameters as one that ran straight through. Evaluation draws
from a generator seeded by (seed, step) and so never disturbs training.
"""

import contextlib
import copy
import json
import math
import os
import pathlib
import signal
import time

import torch
import torch.distributed as dist

from . import checkpoint, data, evaluation, models, regularizers, rundir
from .checkpoint import CHECKPOINT, METRICS
from .config import UsageError
from .models import unwrap
from .rundir import RunDirError


# --------------------------------------------------------------------------------------- distribution

def distributed_env():
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


@contextlib.contextmanager
def flushed_denormals():
    """Within the block, subnormal floats are flushed to zero (torch.set_flush_denormal), as every run of the
    command line and the experiments does.

    Weight clipping drives the critic's activations into subnormal floats, which x86 CPUs process 10-100x
    slower (a 12-layer clipped critic: 8x slower per step here); values below 1e-38 do not matter to training.
    The switch is process-wide, so it is turned back off (torch's default) on the way out."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


# ---------------------------------------------------------------------------------------------- trainer

class Trainer:
    """Builds everything a run needs from a resolved config (gpkernels.trainer.config.resolve).

    Attributes after construction: generator, critic (DDP-wrapped under torchrun: models.unwrap gives the
    net), opt_g, opt_d, penalty (GradientPenalty or None), sampler, step (completed generator steps), history
    (the metrics.jsonl records, newest last), reference (--compare-reference: a dict of the plain-autograd
    copy's generator, critic, opt_g, opt_d, penalty (regularizers.ReferencePenalty) and rng; else None).

    out: the run directory, or None to keep everything in memory (experiments, tests).
    """

    def __init__(self, config, out=None, progress=True, resume=False, overwrite=False):
        self.config = config
        self.rank, self.world, local_rank = distributed_env()
        try:
            device = torch.device(config["device"])
        except RuntimeError:
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            raise UsageError(f"--device must be cpu, cuda or cuda:N, got {config['device']}")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UsageError(f"--device {config['device']}: torch sees no CUDA device here")
            if self.world > 1:
                device = torch.device("cuda", local_rank)
                # Each rank's current device is its own: NCCL, and any kernel launched on "the current
                # device" (Triton's), must not all land on GPU 0.
                torch.cuda.set_device(device)
        self.device = device
        self.dtype = getattr(torch, config["dtype"])
        self.penalty = regularizers.fused_penalty(config, device)
        if self.world > 1 and config["compare_reference"]:
            raise UsageError("--compare-reference runs in a single process; start it without torchrun")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

        self.out = None if out is None else pathlib.Path(out)
        self.main = self.rank == 0
        self.progress = progress and self.main
        try:
            self.sampler = data.make_sampler(config["dataset"], self.dtype, device, config["text_file"])
        except OSError as e:
            raise UsageError(f"--text-file: {e}") from None
        except ValueError as e:
            where = "" if config["text_file"] is None else f"--text-file {config['text_file']}: "
            raise UsageError(where + str(e)) from None
        vocab = getattr(self.sampler, "vocab_size", None)
        check_memory(config, self.sampler, vocab, device, self.dtype)

        seed = config["seed"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            g, d, self.noise_dim = models.build(config, vocab)
        self.generator = g.to(device, self.dtype)
        self.critic = d.to(device, self.dtype)
        self.reference = None
        if config["compare_reference"]:
            self.reference = dict(generator=copy.deepcopy(self.generator), critic=copy.deepcopy(self.critic),
                                  penalty=regularizers.ReferencePenalty(config))
            self.reference["opt_g"], self.reference["opt_d"] = self._optimizers(
                self.reference["generator"], self.reference["critic"])
            self.reference["rng"] = torch.Generator(device=device)
        if self.world > 1:
            ddp = torch.nn.parallel.DistributedDataParallel
            ids = [device.index] if device.type == "cuda" else None
            self.generator = ddp(self.generator, device_ids=ids)
            self.critic = ddp(self.critic, device_ids=ids)
        self.opt_g, self.opt_d = self._optimizers(self.generator, self.critic)

        # Different batches and noise per process; the same initialisation everywhere (DDP broadcasts it too).
        # (Modulo 2^64: every 64-bit --seed gives valid generator seeds; smaller ones are unchanged by it.)
        stream = seed * 1_000_003 + self.rank * 7919
        self.rng = dict(data=torch.Generator().manual_seed((stream + 1) % 2**64),
                        noise=torch.Generator().manual_seed((stream + 2) % 2**64),
                        penalty=torch.Generator(device=device).manual_seed((stream + 3) % 2**64))
        self.amp_dtype = None
        self.scalers = None
        if config["amp"]:
            self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
            if device.type == "cuda":
                self.scalers = dict(d=torch.amp.GradScaler("cuda"), g=torch.amp.GradScaler("cuda"))
        self.step = 0
        self.diverged = None                 # the step whose losses were not finite, if training diverged
        self.train_seconds = 0.0
        self.history = []
        self.last = {}
        self._evaluator = None
        self._stop_requested = False
        self.lock = None                     # rundir.RunLock on self.out, held by rank 0 until close()
        self.saved_step = None               # the step of the checkpoint in self.out, once there is one
        if self.out is not None:
            try:
                checkpoint.prepare(self, resume, overwrite)
            except BaseException:
                self.close()
                raise

    def close(self):
        """Release the run directory's lock (also released when the process ends, however it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def checkpoint_note(self):
        """Which checkpoint the run directory holds now, for the messages that end a run early."""
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the checkpoint in {self.out} is from step {self.saved_step}"

    # ------------------------------------------------------------------------------------------ pieces

    def _optimizers(self, generator, critic):
        c = self.config
        if c["optimizer"] == "rmsprop":
            return (torch.optim.RMSprop(generator.parameters(), lr=c["lr"]),
                    torch.optim.RMSprop(critic.parameters(), lr=c["lr"]))
        return (torch.optim.Adam(generator.parameters(), lr=c["lr"], betas=c["betas"]),
                torch.optim.Adam(critic.parameters(), lr=c["lr"], betas=c["betas"]))

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def noise(self, batch, generator=None):
        """(batch, noise_dim) standard normal noise for the generator, on the trainer's device."""
        g = self.rng["noise"] if generator is None else generator
        return torch.randn(batch, self.noise_dim, generator=g, dtype=self.dtype).to(self.device)

    def critic_backward(self, real, fake, alpha=None):
        """Zero the critic's gradients, then backpropagate L_D (penalty included) on one batch.
        real, fake: (B, *) on the trainer's device. alpha: optional (B,) penalty mixing weights (tests).
        Returns (critic loss without penalty, penalty, mean penalty-point norm or NaN) as floats."""
        self.opt_d.zero_grad(set_to_none=True)
        scaler = None if self.scalers is None else self.scalers["d"]
        with self._autocast():
            wdist = self.critic(real).float().mean() - self.critic(fake).float().mean()
            loss = -wdist
            pen = None
            if self.penalty is not None:
                due = self.penalty.due
                pen = self.penalty(self.critic, real, fake, alpha=alpha, generator=self.rng["penalty"],
                                   scaler=scaler if self.penalty.method == "gradient" else None)
                loss = loss + pen
        (loss if scaler is None else scaler.scale(loss)).backward()
        norm = math.nan
        if pen is not None and due and self.penalty.last_norms is not None:
            norm = float(self.penalty.last_norms.float().nanmean())
        return float(wdist.detach()), (0.0 if pen is None else float(pen.detach())), norm

    def _critic_update(self, real, fake):
        wdist, pen, norm = self.critic_backward(real, fake)
        if self.scalers is None:
            self.opt_d.step()
        else:
            self.scalers["d"].step(self.opt_d)
            self.scalers["d"].update()
        if self.config["regularizer"] == "clip":
            c = self.config["clip"]
            with torch.no_grad():
                for p in self.critic.parameters():
                    p.clamp_(-c, c)
        return wdist, pen, norm

    def _generator_update(self, z):
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            loss = -self.critic(self.generator(z)).float().mean()
        if self.scalers is None:
            loss.backward()
            self.opt_g.step()
        else:
            self.scalers["g"].scale(loss).backward()
            self.scalers["g"].step(self.opt_g)
            self.scalers["g"].update()
        return float(loss.detach())

    def _reference_step(self, batches, z_gen, pen_states):
        """The plain-autograd copy's step on the same batches, noise and penalty points."""
        # The critic and generator updates again, deliberately bare (no AMP, scaler, DDP or clipping): the copy.
        ref = self.reference
        gen, crit = ref["generator"], ref["critic"]
        for (real, z), state in zip(batches, pen_states):
            with torch.no_grad():
                fake = gen(z)
            ref["opt_d"].zero_grad(set_to_none=True)
            ref["rng"].set_state(state)
            loss = crit(fake).mean() - crit(real).mean() + ref["penalty"](crit, real, fake, ref["rng"])
            loss.backward()
            ref["opt_d"].step()
        ref["opt_g"].zero_grad(set_to_none=True)
        (-crit(gen(z_gen)).mean()).backward()
        ref["opt_g"].step()

    def max_reference_difference(self):
        """The largest |parameter - reference parameter| over both nets (--compare-reference)."""
        worst = 0.0
        for mine, theirs in ((self.generator, self.reference["generator"]),
                             (self.critic, self.reference["critic"])):
            for p, q in zip(unwrap(mine).parameters(), theirs.parameters()):
                worst = max(worst, float((p.detach() - q.detach()).abs().max()))
        return worst

    def train_step(self):
        """One generator step (after n_critic critic steps). Returns the step's log record (floats)."""
        c = self.config
        batch = c["batch_size"]
        batches, pen_states = [], []
        for _ in range(c["n_critic"]):
            real = self.sampler.sample(batch, self.rng["data"])
            z = self.noise(batch)
            with torch.no_grad(), self._autocast():
                fake = self.generator(z).to(self.dtype)
            if self.reference is not None:
                batches.append((real, z))
                pen_states.append(self.rng["penalty"].get_state())
            wdist, pen, norm = self._critic_update(real, fake)
        z = self.noise(batch)
        g_loss = self._generator_update(z)
        if self.reference is not None:
            self._reference_step(batches, z, pen_states)
        self.step += 1
        return dict(d_loss=-wdist + pen, g_loss=g_loss, wasserstein=wdist, penalty=pen, grad_norm=norm)

    # ------------------------------------------------------------------------------------- evaluation

    def evaluator(self):
        """The run's evaluation.Evaluator (built on first use: its real reference takes a moment)."""
        if self._evaluator is None:
            self._evaluator = evaluation.Evaluator(self.config["dataset"], self.sampler)
        return self._evaluator

    def generate(self, n, generator):
        """(n, *) samples of the generator (eval mode, no autograd), on the CPU in float32."""
        gen = unwrap(self.generator)
        with torch.no_grad():
            out = [gen(self.noise(min(512, n - i), generator)).float().cpu() for i in range(0, n, 512)]
        return torch.cat(out)

    def evaluate(self):
        """The dataset's sample-quality metric now: {"w1"} (toy), {"frechet"} (digits) or {"js1".."js4",
        "samples"} (text)."""
        return self.evaluator()(self, evaluation.generator_at(self.config["seed"], self.step))

    # ---------------------------------------------------------------------------------------- the loop

    def _log(self, record):
        """Append `record` to history and (rank 0) to metrics.jsonl. Returns None, or what went wrong writing."""
        self.history.append(record)
        if self.out is not None and self.main:
            try:
                with open(self.out / METRICS, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                return f"cannot append to {self.out / METRICS}: {rundir.reason(e)}"
        return None

    def request_stop(self, *_):
        if self._stop_requested:            # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self._stop_requested = True

    def run(self, steps=None, quiet=False):
        """Train until `steps` generator steps (config["steps"] by default) or the time budget; evaluate,
        log and checkpoint on the way. Ctrl-C stops after the current step with a checkpoint. A step whose
        losses are not finite (without AMP's scaler) stops the run at once, sets `diverged` to that step and
        leaves the last checkpoint as it was."""
        c = self.config
        total = c["steps"] if steps is None else steps
        budget = c["time_budget"]
        bar = None
        if self.progress and not quiet:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=self.step, unit="step", dynamic_ncols=True,
                       desc=f"{c['dataset']}/{c['regularizer']}")
        previous = None
        if self.out is not None and self.main and hasattr(signal, "SIGINT"):
            try:
                previous = signal.signal(signal.SIGINT, self.request_stop)
            except ValueError:              # not the main thread
                previous = None
        try:
            while self.step < total:
                start = time.perf_counter()
                record = self.train_step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.train_seconds += time.perf_counter() - start
                # Non-finite losses mean the run diverged. (With a GradScaler a non-finite step is expected now
                # and then: the scaler skips it and lowers its scale.)
                bad = self.scalers is None and not all(math.isfinite(record[k]) for k in ("d_loss", "g_loss"))
                over_budget = budget is not None and self.train_seconds >= budget
                stop, bad = self._stop_flag(over_budget, bad)
                if bad:
                    # Log what happened, keep the last good checkpoint, stop (every process, together).
                    self.diverged = self.step
                    self.last = record
                    problem = None
                    if self.main:
                        problem = self._log(dict(step=self.step, seconds=round(self.train_seconds, 4),
                                                 **{k: _finite(v) for k, v in record.items()}))
                    if self.out is not None:
                        rundir.agree(self, problem, RunDirError)
                    break
                last = self.step == total or stop
                self.last = record
                if self.step % c["log_every"] == 0 or self.step % c["eval_every"] == 0 or last:
                    record = dict(step=self.step, seconds=round(self.train_seconds, 4),
                                  **{k: _finite(v) for k, v in record.items()})
                    if self.reference is not None:
                        record["ref_max_param_diff"] = self.max_reference_difference()
                    if self.main and (self.step % c["eval_every"] == 0 or last):
                        record.update(self.evaluate())
                        if "samples" in record and bar is not None:
                            bar.write(f"step {self.step}: " + " | ".join(record["samples"][:3]))
                    problem = self._log(record) if self.main else None
                    if self.out is not None:
                        rundir.agree(self, problem, RunDirError)      # a full disk stops every process
                if self.out is not None and (self.step % c["checkpoint_every"] == 0 or last):
                    self.save(self.out / CHECKPOINT)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(self._postfix(), refresh=False)
                if stop:
                    break
        finally:
            if bar is not None:
                bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self._stop_requested and self.main:
            print(f"stopped after step {self.step}; the checkpoint is in {self.out}: --resume continues")
        return self.history

    def latest(self, key):
        """The newest value of `key` in the logged records (history), or None if none has one."""
        for record in reversed(self.history):
            if record.get(key) is not None:
                return record[key]
        return None

    def _postfix(self):
        post = {short: f"{self.last[k]:.3g}" for k, short in (("d_loss", "d"), ("g_loss", "g"), ("wasserstein", "W"))
                if k in self.last}
        for key in ("w1", "frechet", "js4"):
            value = self.latest(key)
            if value is not None:
                post[key] = f"{value:.3g}"
        return post

    def _stop_flag(self, over_budget=False, diverged=False):
        """(stop, diverged): whether any process asked to stop (Ctrl-C), ran out of --time-budget or saw
        non-finite losses, agreed across processes so they stop together (each process times itself and sees
        its own batches; one that trained on alone would wait forever in DDP)."""
        stop = self._stop_requested or over_budget or diverged
        if self.world == 1:
            return stop, diverged
        flags = torch.tensor([float(stop), float(diverged)],
                             device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flags)
        return bool(flags[0].item() > 0), bool(flags[1].item() > 0)

    # ------------------------------------------------------------------------------------ checkpoints

    def state(self):
        """The checkpoint dict (checkpoint.state); under DDP every process must call it."""
        return checkpoint.state(self)

    def save(self, path):
        """Write a checkpoint to `path` (checkpoint.save); under DDP every process must call it."""
        checkpoint.save(self, path)

    def load(self, path):
        """Continue from the checkpoint at `path` (checkpoint.load): UsageError if it does not fit this run."""
        checkpoint.load(self, path)


def check_memory(config, sampler, vocab, device, dtype):
    """UsageError (naming --batch-size, or --width) when the run plainly needs more memory than the
    device has available: known before anything is allocated, from the nets built on the meta device.

    The estimate: parameters with gradients and optimiser moments (twice with --compare-reference), plus the
    activations of a critic step with its penalty (a generator forward, three critic forwards and their
    backward) for the batch. It is close to what a run takes (digits, batch 20,000: 2.1 GB measured beyond the
    process's baseline, 2.0 GB estimated), and a run is refused only when it exceeds all the available memory."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        g, d, noise_dim = models.build(config, vocab)
    size = 8 if dtype == torch.float64 else 4
    params = sum(p.numel() for net in (g, d) for p in net.parameters())
    moments = 1 if config["optimizer"] == "rmsprop" else 2
    copies = 2 if config["compare_reference"] else 1
    param_bytes = params * size * (2 + moments) * copies
    # Activations per sample: the outputs of every leaf module in one generator and one critic forward.
    counted = {"g": 0, "d": 0}
    hooks = []
    for name, net in (("g", g), ("d", d)):
        for m in net.modules():
            if not list(m.children()):
                hooks.append(m.register_forward_hook(
                    lambda _m, _i, out, name=name: counted.__setitem__(name, counted[name] + out.numel())))
    with torch.no_grad():
        d(g(torch.zeros(1, noise_dim, device="meta")))
    for h in hooks:
        h.remove()
    sample = int(torch.Size(sampler.sample(1, torch.Generator().manual_seed(0)).shape[1:]).numel())
    per_sample = counted["g"] + 3 * 2 * counted["d"] + 4 * sample
    activation_bytes = config["batch_size"] * per_sample * size * copies
    need = param_bytes + activation_bytes
    available = available_memory(device)
    if available is None:
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    if need * local > available:
        where = "the GPU" if device.type == "cuda" else "this machine"
        share = f", shared by {local} processes" if local > 1 else ""
        if activation_bytes >= param_bytes:
            what, fix = f"--batch-size {config['batch_size']}", "lower --batch-size"
        else:
            what = f"--width {config['width']}"
            fix = {"digits": "lower --width", "text": "lower --width or --depth"}.get(
                config["dataset"], "lower --width, --depth or --critic-depth")
        if copies > 1:
            fix += " (--compare-reference doubles it)"
        raise UsageError(f"{what}: this run needs about {rundir.size(need)} of memory ({rundir.size(available)} "
                         f"available on {where}{share}); {fix}")


def available_memory(device):
    """Bytes of memory available to this process on `device` (None when unknown): free GPU memory; on the CPU,
    MemAvailable, or less where a cgroup limit leaves less."""
    if device.type == "cuda":
        try:
            return torch.cuda.mem_get_info(device)[0]
        except Exception:                    # pragma: no cover
            return None
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        limit = pathlib.Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(pathlib.Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            left = int(limit) - used
            available = left if available is None else min(available, left)
    except (OSError, ValueError):
        pass
    return available


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v
