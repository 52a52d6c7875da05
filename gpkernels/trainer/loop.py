"""The reference WGAN trainer: one class that builds the nets, runs the critic and generator steps with the
chosen regulariser, evaluates, logs and checkpoints.

One step = n_critic critic updates, then one generator update (the paper's "generator iteration").

    critic:     L_D = mean D(fake) - mean D(real) + penalty     (clip: then clamp every weight to [-c, c])
    generator:  L_G = -mean D(G(z))

Randomness comes from three generators the trainer owns and checkpoints (batches, noise, penalty points),
so a run stopped and resumed gives the same parameters as one that ran straight through. Evaluation draws
from a generator seeded by (seed, step) and so never disturbs training.
"""

import copy
import json
import math
import os
import pathlib
import signal
import time

import torch
import torch.distributed as dist

from .. import backends
from ..penalties import GradientPenalty
from ..reference import accum_dtype
from . import data, metrics, models
from .config import RESUMABLE, UsageError, dataset_group

FORMAT = "gpkernels-trainer"
VERSION = 1
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


# ------------------------------------------------------------------------------------------ penalties

def penalty_settings(config):
    """GradientPenalty keyword arguments for a penalty regulariser (None for clip and none)."""
    reg = config["regularizer"]
    if reg in ("clip", "none"):
        return None
    kw = dict(weight=config["weight"], target=1.0, one_sided=False, sample="interpolate", method="gradient",
              lazy=config["lazy"], dragan_scale=config["dragan_scale"])
    if reg == "lp":
        kw["one_sided"] = True
    elif reg == "r1":
        kw.update(target=0.0, sample="real")
    elif reg == "dragan":
        kw["sample"] = "dragan"
    elif reg == "fd":
        kw["method"] = "finite_difference"
    return kw


class PlainPenalty:
    """The same regulariser written with plain autograd, as a blog's calc_gradient_penalty would be: for
    --compare-reference. It draws its random numbers in GradientPenalty's documented order (alpha, then
    DRAGAN's noise; FD: alpha1 then alpha2) so that, given a generator in the same state, both penalise the
    same points."""

    def __init__(self, weight, target, one_sided, sample, method, lazy, dragan_scale, min_gap=1e-3):
        self.weight, self.target, self.one_sided, self.sample = weight, target, one_sided, sample
        self.method, self.lazy, self.dragan_scale, self.min_gap = method, lazy, dragan_scale, min_gap
        self.calls = 0

    def __call__(self, critic, real, fake, generator):
        due = self.calls % self.lazy == 0
        self.calls += 1
        if not due:
            return torch.zeros((), dtype=accum_dtype(real.dtype), device=real.device)
        weight = self.weight * self.lazy
        batch = real.shape[0]
        acc = accum_dtype(real.dtype)
        view = (batch,) + (1,) * (real.dim() - 1)

        def draw():
            return torch.rand(batch, generator=generator, device=real.device, dtype=acc).to(real.dtype).view(view)

        if self.method == "finite_difference":
            a1, a2 = draw(), draw()
            x1, x2 = a1 * real + (1 - a1) * fake, a2 * real + (1 - a2) * fake
            dist_ = (x1 - x2).flatten(1).norm(dim=1)
            span = (real - fake).flatten(1).norm(dim=1)
            keep = (dist_ > self.min_gap * span) & (dist_ > 0)
            slopes = (critic(x1) - critic(x2)).abs() / torch.where(keep, dist_, torch.ones_like(dist_))
            excess = slopes - self.target
            if self.one_sided:
                excess = excess.clamp_min(0)
            return weight * torch.where(keep, excess.square(), torch.zeros_like(excess)).sum() / batch
        if self.sample == "interpolate":
            a = draw()
            x = a * real + (1 - a) * fake
        elif self.sample == "dragan":
            a = draw()
            u = torch.rand(real.shape, generator=generator, device=real.device, dtype=acc).to(real.dtype)
            perturbed = real + self.dragan_scale * real.std(correction=0) * u
            x = a * perturbed + (1 - a) * real
        else:
            x = real
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        excess = grad.flatten(1).norm(dim=1) - self.target
        if self.one_sided:
            excess = excess.clamp_min(0)
        return weight * excess.square().mean()


# --------------------------------------------------------------------------------------- distribution

def distributed_env():
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _unwrap(module):
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


# ---------------------------------------------------------------------------------------------- trainer

class Trainer:
    """Builds everything a run needs from a resolved config (gpkernels.trainer.config.resolve).

    Attributes after construction: generator, critic (DDP-wrapped under torchrun), opt_g, opt_d, penalty
    (GradientPenalty or None), sampler, step (completed generator steps), history (the metrics.jsonl
    records, newest last).

    out: the run directory, or None to keep everything in memory (experiments, tests).
    """

    def __init__(self, config, out=None, progress=True, resume=False, overwrite=False):
        self.config = config
        self.rank, self.world, local_rank = distributed_env()
        try:
            device = torch.device(config["device"])
        except RuntimeError:
            raise UsageError(f"--device must be cpu, cuda or cuda:N, got {config['device']}") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UsageError(f"--device {config['device']}: torch sees no CUDA device here")
            if self.world > 1:
                device = torch.device("cuda", local_rank)
        elif device.type != "cpu":
            raise UsageError(f"--device must be cpu, cuda or cuda:N, got {config['device']}")
        self.device = device
        self.dtype = getattr(torch, config["dtype"])
        self.penalty_kw = penalty_settings(config)
        if self.penalty_kw is not None and config["backend"] != "auto":
            reasons = backends.refusals(config["backend"], device)
            if reasons:
                raise UsageError(f"--backend {config['backend']} cannot run on {device}: " + "; ".join(reasons))
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

        seed = config["seed"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            g, d, self.noise_dim = models.build(config, vocab)
        self.generator = g.to(device, self.dtype)
        self.critic = d.to(device, self.dtype)
        self.reference = None
        if config["compare_reference"]:
            self.reference = dict(generator=copy.deepcopy(self.generator), critic=copy.deepcopy(self.critic),
                                  penalty=PlainPenalty(**self.penalty_kw))
            self.reference["opt_g"], self.reference["opt_d"] = self._optimizers(
                self.reference["generator"], self.reference["critic"])
            self.reference["rng"] = torch.Generator(device=device)
        if self.world > 1:
            ddp = torch.nn.parallel.DistributedDataParallel
            ids = [device.index] if device.type == "cuda" else None
            self.generator = ddp(self.generator, device_ids=ids)
            self.critic = ddp(self.critic, device_ids=ids)
        self.opt_g, self.opt_d = self._optimizers(self.generator, self.critic)
        self.penalty = None
        if self.penalty_kw is not None:
            backend = None if config["backend"] == "auto" else config["backend"]
            self.penalty = GradientPenalty(**self.penalty_kw, strict=True, backend=backend)

        # Different batches and noise per process; the same initialisation everywhere (DDP broadcasts it too).
        stream = seed * 1_000_003 + self.rank * 7919
        self.rng = dict(data=torch.Generator().manual_seed(stream + 1),
                        noise=torch.Generator().manual_seed(stream + 2),
                        penalty=torch.Generator(device=device).manual_seed(stream + 3))
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
        if self.out is not None:
            self._prepare_out(resume, overwrite)

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
            for p, q in zip(_unwrap(mine).parameters(), theirs.parameters()):
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
        if self._evaluator is None:
            self._evaluator = Evaluator(self.config["dataset"], self.sampler)
        return self._evaluator

    def generate(self, n, generator):
        """(n, *) samples of the generator (eval mode, no autograd), on the CPU in float32."""
        gen = _unwrap(self.generator)
        with torch.no_grad():
            out = [gen(self.noise(min(512, n - i), generator)).float().cpu() for i in range(0, n, 512)]
        return torch.cat(out)

    def evaluate(self):
        """The dataset's sample-quality metric now: {"w1"} (toy), {"frechet"} (digits) or {"js1".."js4",
        "samples"} (text)."""
        g = torch.Generator().manual_seed(self.config["seed"] * 1_000_003 + self.step)
        return self.evaluator()(self, g)

    # ---------------------------------------------------------------------------------------- the loop

    def _prepare_out(self, resume, overwrite):
        path = self.out / CHECKPOINT
        if resume:
            if not path.exists():
                raise UsageError(f"--resume: {path} does not exist (nothing to resume)")
            self.load(path)
        existing = path.exists() or (self.out / METRICS).exists()
        if self.world > 1:
            # Every process looks before rank 0 writes anything, so all of them see the same directory and
            # all of them stop on a refusal (none is left waiting in a collective).
            dist.barrier()
        if existing and not resume:
            if not overwrite:
                raise UsageError(f"{self.out} already holds a run; pass --resume to continue it, --overwrite "
                                 f"to start again, or choose another --out")
            if self.main:
                for name in (CHECKPOINT, METRICS, "samples.png", "samples.txt"):
                    (self.out / name).unlink(missing_ok=True)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            lines = []
            if resume and (self.out / METRICS).exists():
                for line in (self.out / METRICS).read_text().splitlines():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue           # a line cut short by a crash
                    if record.get("step", math.inf) <= self.step:
                        lines.append(line)
                        self.history.append(record)
            (self.out / METRICS).write_text("".join(line + "\n" for line in lines))

    def _log(self, record):
        self.history.append(record)
        if self.out is not None and self.main:
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

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
                    if self.main:
                        self._log(dict(step=self.step, seconds=round(self.train_seconds, 4),
                                       **{k: _finite(v) for k, v in record.items()}))
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
                    if self.main:
                        self._log(record)
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

    def _postfix(self):
        post = {short: f"{self.last[k]:.3g}" for k, short in (("d_loss", "d"), ("g_loss", "g"), ("wasserstein", "W"))
                if k in self.last}
        for key in ("w1", "frechet", "js4"):
            for record in reversed(self.history):
                if record.get(key) is not None:
                    post[key] = f"{record[key]:.3g}"
                    break
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
        rng = {k: g.get_state().cpu() for k, g in self.rng.items()}
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        state = dict(format=FORMAT, version=VERSION, config=self.config, step=self.step,
                     train_seconds=self.train_seconds, world_size=self.world,
                     generator=_unwrap(self.generator).state_dict(), critic=_unwrap(self.critic).state_dict(),
                     opt_g=self.opt_g.state_dict(), opt_d=self.opt_d.state_dict(),
                     penalty=None if self.penalty is None else self.penalty.state_dict(),
                     scalers=None if self.scalers is None else {k: s.state_dict() for k, s in self.scalers.items()},
                     rng=gathered, reference=None)
        if self.reference is not None:
            ref = self.reference
            state["reference"] = dict(generator=ref["generator"].state_dict(), critic=ref["critic"].state_dict(),
                                      opt_g=ref["opt_g"].state_dict(), opt_d=ref["opt_d"].state_dict(),
                                      calls=ref["penalty"].calls)
        return state

    def save(self, path):
        state = self.state()                 # every process joins the gather
        if not self.main:
            return
        path = pathlib.Path(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)                # a crash mid-save leaves the previous checkpoint intact

    def load(self, path):
        state = read_checkpoint(path)
        check_compatible(state, self.config, self.world)
        try:
            _unwrap(self.generator).load_state_dict(state["generator"])
            _unwrap(self.critic).load_state_dict(state["critic"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
            if self.penalty is not None:
                self.penalty.load_state_dict(state["penalty"])
            if self.scalers is not None and state["scalers"] is not None:
                for k, s in self.scalers.items():
                    s.load_state_dict(state["scalers"][k])
            for k, g in self.rng.items():
                g.set_state(state["rng"][self.rank][k].to(g.get_state().device))
            if self.reference is not None:
                ref, saved = self.reference, state["reference"]
                for k in ("generator", "critic", "opt_g", "opt_d"):
                    ref[k].load_state_dict(saved[k])
                ref["penalty"].calls = saved["calls"]
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
            raise UsageError(f"{path} does not match this run's models ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]})") from None
        self.step = state["step"]
        self.train_seconds = state["train_seconds"]


def read_checkpoint(path):
    """The checkpoint dict, or UsageError with one line saying why it cannot be used."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                   # truncated, not a torch file, unpickling refused, ...
        raise UsageError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"{path} is not a gpkernels trainer checkpoint")
    if state.get("version") != VERSION:
        raise UsageError(f"{path} has checkpoint version {state.get('version')}; this gpkernels reads "
                         f"version {VERSION}")
    return state


def check_compatible(state, config, world):
    saved = state["config"]
    for key, value in config.items():
        if key in RESUMABLE:
            continue
        if saved.get(key) != value:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"the checkpoint was trained with {flag} {saved.get(key)!r}, this run asks for "
                             f"{value!r}; resume with the same settings (only {', '.join(RESUMABLE)} may change)")
    if state["world_size"] != world:
        raise UsageError(f"the checkpoint was written by {state['world_size']} process(es); resume it with the "
                         f"same number (got {world})")
    if config["steps"] < state["step"]:
        raise UsageError(f"--steps {config['steps']} is below the checkpoint's step {state['step']}")


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


# ----------------------------------------------------------------------------------------- evaluation

class Evaluator:
    """The dataset metric, with its fixed real reference built once per process."""

    TOY_SAMPLES = 1000
    DIGIT_SAMPLES = 1000
    TEXT_SAMPLES = 1024

    _frechet = None                          # the digit classifier, shared by every trainer of a process

    def __init__(self, dataset, sampler):
        self.group = dataset_group(dataset)
        self.sampler = sampler
        if self.group == "toy":
            # Two real samples of the same size are not at W1 = 0: this is what a perfect generator scores.
            g = torch.Generator().manual_seed(12345)
            self.floor = metrics.w1(sampler.sample(self.TOY_SAMPLES, g).float().cpu(),
                                    sampler.sample(self.TOY_SAMPLES, g).float().cpu())
        elif self.group == "digits":
            if Evaluator._frechet is None:
                s = sampler
                Evaluator._frechet = metrics.DigitsFrechet(s.train, s.train_labels, s.heldout, s.heldout_labels)
            self.frechet = Evaluator._frechet
        elif self.group == "text":
            g = torch.Generator().manual_seed(12345)
            self.reference = sampler.strings(sampler.windows(sampler.heldout_codes, self.TEXT_SAMPLES, g))
            train = sampler.strings(sampler.windows(sampler.train_codes, self.TEXT_SAMPLES, g))
            self.floor = metrics.ngram_js(train, self.reference)

    def __call__(self, trainer, generator):
        if self.group == "toy":
            fake = trainer.generate(self.TOY_SAMPLES, generator)
            real = self.sampler.sample(self.TOY_SAMPLES, generator).float().cpu()
            return dict(w1=metrics.w1(fake, real))
        if self.group == "digits":
            return dict(frechet=self.frechet(trainer.generate(self.DIGIT_SAMPLES, generator)))
        strings = self.sampler.decode(trainer.generate(self.TEXT_SAMPLES, generator))
        return dict(metrics.ngram_js(strings, self.reference), samples=strings[:8])
