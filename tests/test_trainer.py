"""The reference WGAN trainer (gpkernels/trainer/, `python -m gpkernels train`): every dataset x regulariser
runs, a stopped-and-resumed run equals an uninterrupted one bit for bit (Ctrl-C included), --compare-reference
agrees with plain autograd, bad options and checkpoints give one line and exit status 2, and under torchrun
the DDP critic's gradients equal one process on the whole batch.

Everything runs on tiny nets with one thread: the machine this suite targets has two cores.
"""

import importlib.util
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

pytest.importorskip("ot", reason="the toy metric needs POT (pip install pot)")
pytest.importorskip("sklearn", reason="the digits set needs scikit-learn")

from gpkernels import backends  # noqa: E402
from gpkernels.trainer import cli  # noqa: E402
from gpkernels.trainer.config import resolve  # noqa: E402
from gpkernels.trainer.data import DATASETS, TOY  # noqa: E402
from gpkernels.trainer.checkpoint import CHECKPOINT, METRICS, read_checkpoint  # noqa: E402
from gpkernels.trainer.evaluation import Evaluator  # noqa: E402
from gpkernels.trainer.loop import Trainer  # noqa: E402
from gpkernels.trainer.models import unwrap  # noqa: E402

import _ddp_worker  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
REGULARIZERS = ("clip", "gp", "lp", "r1", "dragan", "fd", "none")
TINY = ["--width", "16", "--depth", "1", "--critic-depth", "1", "--batch-size", "8", "--n-critic", "2",
        "--no-progress", "--threads", "1"]
METRIC_KEYS = {"digits": ("frechet",), "text": ("js1", "js2", "js3", "js4", "samples")}
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None         # else no samples.png is drawn
TRAINING_KEYS = ("d_loss", "g_loss", "wasserstein", "penalty", "grad_norm")


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def digit_cache(tmp_path_factory):
    """GPKERNELS_CACHE -> a fresh directory for the session: the digits metric trains its classifier there
    once (a few seconds on one thread) instead of reading or writing ~/.cache."""
    path = tmp_path_factory.mktemp("gpkernels-cache")
    old_env, old_model = os.environ.get("GPKERNELS_CACHE"), Evaluator._frechet
    os.environ["GPKERNELS_CACHE"] = str(path)
    Evaluator._frechet = None
    yield path
    Evaluator._frechet = old_model
    if old_env is None:
        os.environ.pop("GPKERNELS_CACHE", None)
    else:
        os.environ["GPKERNELS_CACHE"] = old_env


@pytest.fixture(autouse=True)
def _one_thread(digit_cache):
    """--threads 1 (and the tests here) pin torch to one thread; give the rest of the suite its setting back.
    Two threads on a two-core machine that is busy elsewhere can be many times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(dataset):
    """TINY without the depth options that the dataset's nets do not take (a usage error there)."""
    skip = {"digits": ("--depth", "--critic-depth"), "text": ("--critic-depth",)}.get(dataset, ())
    argv, i = [], 0
    while i < len(TINY):
        if TINY[i] in skip:
            i += 2                           # the option and its value
            continue
        argv.append(TINY[i])
        i += 1
    return argv


def train(out, *args):
    """cli.main on a tiny net; asserts exit status 0. The dataset comes from --dataset, or on a resume from
    the run's checkpoint."""
    args = [str(a) for a in args]
    if "--dataset" in args:
        dataset = args[args.index("--dataset") + 1]
    elif (pathlib.Path(out) / CHECKPOINT).exists():
        dataset = read_checkpoint(pathlib.Path(out) / CHECKPOINT)["config"]["dataset"]
    else:
        dataset = None
    argv = ["--out", str(out), *tiny(dataset), *args]
    assert cli.main(argv) == 0, argv
    return out


def records(out):
    return [json.loads(line) for line in (pathlib.Path(out) / METRICS).read_text().splitlines()]


def checkpoint(out):
    return read_checkpoint(pathlib.Path(out) / CHECKPOINT)


def assert_equal_state(a, b, where="state"):
    """Nested dicts/lists/tuples of tensors and plain values, equal exactly (tensors: torch.equal, same
    dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs by {float((a.double() - b.double()).abs().max()):.3g}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_equal_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


STATE_KEYS = ("step", "generator", "critic", "opt_g", "opt_d", "penalty", "scalers", "rng", "world_size")


def assert_same_run(ckpt_a, ckpt_b):
    for key in STATE_KEYS:
        assert_equal_state(ckpt_a[key], ckpt_b[key], key)


def env():
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


# ---------------------------------------------------------------------------------------------- smoke

@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_and_regularizer_trains(tmp_path, dataset, regularizer, digit_cache):
    out = train(tmp_path / "run", "--dataset", dataset, "--regularizer", regularizer, "--steps", 2,
                "--log-every", 1)
    recs = records(out)
    assert [r["step"] for r in recs] == [1, 2]
    last = recs[-1]
    for key in ("d_loss", "g_loss", "wasserstein", "penalty"):
        assert isinstance(last[key], float) and math.isfinite(last[key]), (key, last)
    # d_loss = -wasserstein + penalty of the last critic step
    assert last["d_loss"] == pytest.approx(-last["wasserstein"] + last["penalty"], rel=1e-6, abs=1e-9)
    if regularizer in ("clip", "none"):
        assert last["penalty"] == 0 and last["grad_norm"] is None
    elif regularizer != "lp":            # lp is one-sided: an untrained critic may be 1-Lipschitz already
        assert last["penalty"] > 0 and last["grad_norm"] > 0
    if dataset in TOY:
        assert 0 < last["w1"] < 10
    elif dataset == "digits":
        assert last["frechet"] > 0
        assert (digit_cache / "digit_classifier_v1.pt").exists()
    else:
        assert all(0 <= last[f"js{n}"] <= 1 for n in range(1, 5))
        assert len(last["samples"]) == 8 and all(len(s) == 32 for s in last["samples"])
    for key in METRIC_KEYS.get(dataset, ("w1",)):
        assert key in last
    assert "w1" not in recs[0] and "frechet" not in recs[0]        # evaluated at the last step only

    ck = checkpoint(out)
    assert ck["step"] == 2 and ck["world_size"] == 1
    assert ck["config"]["dataset"] == dataset and ck["config"]["regularizer"] == regularizer
    assert (ck["penalty"] is None) == (regularizer in ("clip", "none"))
    if ck["penalty"] is not None:
        assert ck["penalty"]["_extra_state"] == {"calls": 2 * 2}
    if regularizer == "clip":                # RMSprop, and every critic weight clamped to [-0.01, 0.01]
        assert all("square_avg" in s for s in ck["opt_d"]["state"].values())
        assert all(t.abs().max() <= 0.01 for t in ck["critic"].values())
    else:
        assert all("exp_avg" in s for s in ck["opt_d"]["state"].values())
    if dataset == "text":
        assert len((out / "samples.txt").read_text().splitlines()) == 64
    elif HAS_MATPLOTLIB:
        assert (out / "samples.png").stat().st_size > 0


def test_lazy_and_amp_runs(tmp_path):
    out = train(tmp_path / "lazy", "--dataset", "8gaussians", "--regularizer", "gp", "--lazy", 3, "--steps", 3,
                "--log-every", 1, "--n-critic", 1)
    # One critic step per generator step: of calls 0, 1, 2 only call 0 computes the penalty (weighted x3).
    pens = [r["penalty"] for r in records(out)]
    assert pens[0] > 0 and pens[1] == 0 and pens[2] == 0
    assert checkpoint(out)["penalty"]["_extra_state"] == {"calls": 3}

    out = train(tmp_path / "amp", "--dataset", "8gaussians", "--regularizer", "gp", "--amp", "--steps", 3,
                "--log-every", 1)
    ck = checkpoint(out)
    assert ck["config"]["amp"] is True
    assert all(t.dtype == torch.float32 for t in ck["critic"].values())      # bf16 autocast, fp32 weights
    for r in records(out):
        assert all(math.isfinite(r[k]) for k in ("d_loss", "g_loss", "penalty")) and r["penalty"] > 0


def test_a_run_prints_no_warnings(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # (Without the compiled extension, the backend choice warns once that it falls back: not the trainer's.)
        warnings.filterwarnings("ignore", message="gpkernels: .* tensors use the", category=RuntimeWarning)
        train(tmp_path / "run", "--dataset", "8gaussians", "--regularizer", "gp", "--steps", 2)
    out = capsys.readouterr().out
    assert "W1 (exact" in out and "steps           2" in out


# --------------------------------------------------------------------------------------------- resume

RESUME_CASES = [
    pytest.param("8gaussians", "gp", ["--lazy", 2], 6, id="toy-gp-lazy2"),
    # n_critic 3, split at 5: the lazy schedule is mid-cycle at the checkpoint (15 calls, 15 % 2 == 1)
    pytest.param("8gaussians", "gp", ["--lazy", 2, "--n-critic", 3], 5, id="toy-gp-lazy2-midcycle"),
    pytest.param("8gaussians", "fd", [], 6, id="toy-fd"),
    pytest.param("text", "gp", [], 6, id="text-gp"),
]


@pytest.mark.parametrize("dataset,regularizer,extra,split", RESUME_CASES)
def test_resume_equals_an_uninterrupted_run(tmp_path, dataset, regularizer, extra, split):
    common = ["--dataset", dataset, "--regularizer", regularizer, "--log-every", 2, "--eval-every", 4, *extra]
    a = train(tmp_path / "a", *common, "--steps", 12)
    b = train(tmp_path / "b", *common, "--steps", split)
    halfway = checkpoint(b)
    assert halfway["step"] == split
    # As if the process had died after logging a step it never checkpointed, mid-way through a line.
    with open(b / METRICS, "a") as f:
        f.write(json.dumps(dict(step=split + 1, d_loss=0.0)) + "\n" + '{"step": ')
    assert cli.main(["--out", str(b), "--resume", "--steps", "12", "--no-progress", "--threads", "1"]) == 0

    ck_a, ck_b = checkpoint(a), checkpoint(b)
    assert ck_a["step"] == ck_b["step"] == 12
    assert_same_run(ck_a, ck_b)
    n_critic = ck_a["config"]["n_critic"]
    assert ck_b["penalty"]["_extra_state"] == {"calls": 12 * n_critic}
    # The resumed leg did train: parameters and random streams moved on from the checkpoint it started from.
    assert not all(torch.equal(halfway["critic"][k], ck_b["critic"][k]) for k in ck_b["critic"])
    assert not torch.equal(halfway["rng"][0]["penalty"], ck_b["rng"][0]["penalty"])

    rec_a, rec_b = records(a), records(b)
    steps_b = [r["step"] for r in rec_b]
    assert len(steps_b) == len(set(steps_b)), steps_b
    assert steps_b == sorted(steps_b) and steps_b[-1] == 12
    by_step = {r["step"]: r for r in rec_a}
    for r in rec_b:
        if r["step"] == split and split not in by_step:
            continue                          # the first leg's last step: logged by B only
        for key in TRAINING_KEYS:
            assert r[key] == by_step[r["step"]][key], (r["step"], key)
    assert set(steps_b) - {split} == {r["step"] for r in rec_a} - {split}     # the orphan record is gone


def test_resume_keeps_the_reference_copy(tmp_path, capsys):
    common = ["--dataset", "8gaussians", "--regularizer", "gp", "--dtype", "float64", "--compare-reference",
              "--log-every", 1]
    a = train(tmp_path / "a", *common, "--steps", 6)
    b = train(tmp_path / "b", *common, "--steps", 3)
    assert cli.main(["--out", str(b), "--resume", "--steps", "6", "--no-progress", "--threads", "1"]) == 0
    assert "largest |parameter - plain-autograd parameter|" in capsys.readouterr().out
    ck_a, ck_b = checkpoint(a), checkpoint(b)
    assert_same_run(ck_a, ck_b)
    assert_equal_state(ck_a["reference"], ck_b["reference"], "reference")
    assert ck_b["reference"]["calls"] == 6 * 2
    assert all(r["ref_max_param_diff"] < 1e-10 for r in records(b))


def test_ctrl_c_stops_with_a_checkpoint_and_resumes_exactly(tmp_path):
    common = ["--dataset", "8gaussians", "--regularizer", "gp", "--log-every", "1", "--eval-every", "100000",
              "--checkpoint-every", "100000", *TINY]
    stopped = tmp_path / "stopped"
    log = tmp_path / "stdout.txt"
    with open(log, "w") as stdout, open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "gpkernels", "train", *common, "--steps", "100000",
                                 "--out", str(stopped)], stdout=stdout, stderr=stderr, env=env(), cwd=tmp_path)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                path = stopped / METRICS
                if path.exists() and path.read_text().count("\n") >= 5:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before it was interrupted"
            assert not (stopped / CHECKPOINT).exists()     # --checkpoint-every is far away
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert rc == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    match = re.search(r"stopped after step (\d+)", text)
    assert match, text
    n = int(match.group(1))
    assert 5 <= n < 100000
    ck = checkpoint(stopped)
    assert ck["step"] == n
    assert records(stopped)[-1]["step"] == n and "w1" in records(stopped)[-1]

    total = n + 5
    assert cli.main([*common, "--out", str(stopped), "--resume", "--steps", str(total)]) == 0
    straight = tmp_path / "straight"
    assert cli.main([*common, "--out", str(straight), "--steps", str(total)]) == 0
    assert_same_run(checkpoint(stopped), checkpoint(straight))
    steps = [r["step"] for r in records(stopped)]
    assert steps == list(range(1, total + 1))


# ---------------------------------------------------------------------------------- compare-reference

def _reference_trainer(regularizer, dtype="float64", **extra):
    given = dict(dataset="8gaussians", regularizer=regularizer, dtype=dtype, width=16, depth=1, critic_depth=2,
                 batch_size=16, steps=20, log_every=1, compare_reference=True)
    given.update(extra)
    return Trainer(resolve(given), out=None, progress=False)


def _parameters(trainer):
    return [p.detach().clone() for net in (trainer.generator, trainer.critic) for p in unwrap(net).parameters()]


@pytest.mark.parametrize("regularizer,extra", [
    pytest.param("gp", {}, id="gp"),
    pytest.param("gp", {"lazy": 2}, id="gp-lazy2"),
    # One-sided: only active once the critic is steeper than 1, which a larger step reaches within 20 steps.
    pytest.param("lp", {"weight": 10.0, "lr": 1e-2}, id="lp"),
    pytest.param("r1", {}, id="r1"),
    pytest.param("dragan", {}, id="dragan"),
    pytest.param("fd", {}, id="fd"),
])
def test_compare_reference_matches_plain_autograd(regularizer, extra):
    trainer = _reference_trainer(regularizer, **extra)
    start = _parameters(trainer)
    assert trainer.reference["critic"] is not trainer.critic
    trainer.run(quiet=True)
    assert trainer.step == 20
    diff = trainer.max_reference_difference()
    assert diff < 1e-10
    assert all(r["ref_max_param_diff"] < 1e-10 for r in trainer.history)
    assert any(r["penalty"] > 0 for r in trainer.history), "the penalty never acted: nothing was compared"
    if extra.get("lazy") == 2:
        assert any(r["penalty"] == 0 for r in trainer.history)
    moved = max(float((p - q).abs().max()) for p, q in zip(_parameters(trainer), start))
    assert moved > 1e-4 and moved > 1e6 * diff

    # The comparison sees the penalty: the same run with the reference's penalty switched off parts ways.
    other = _reference_trainer(regularizer, **extra)
    other.reference["penalty"].weight = 0.0
    other.run(quiet=True)
    assert other.max_reference_difference() > 1e-8


def test_compare_reference_in_float32():
    trainer = _reference_trainer("gp", dtype="float32")
    start = _parameters(trainer)
    trainer.run(quiet=True)
    diff = trainer.max_reference_difference()
    assert diff < 1e-4
    assert any(r["penalty"] > 0 for r in trainer.history)
    assert max(float((p - q).abs().max()) for p, q in zip(_parameters(trainer), start)) > 100 * diff


def test_max_reference_difference_notices_a_difference():
    trainer = _reference_trainer("gp", steps=1)
    assert trainer.max_reference_difference() == 0.0
    with torch.no_grad():
        next(trainer.reference["critic"].parameters()).view(-1)[0] += 1e-3
    assert trainer.max_reference_difference() == pytest.approx(1e-3, rel=1e-6)


# --------------------------------------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def gp_run(tmp_path_factory):
    """A finished 3-step gp run (RUN_DIR) for the resume errors; tests copy it before spoiling it."""
    out = tmp_path_factory.mktemp("gp-run") / "run"
    threads = torch.get_num_threads()
    try:
        train(out, "--dataset", "8gaussians", "--regularizer", "gp", "--steps", 3)
    finally:
        torch.set_num_threads(threads)
    return out


def _error(capsys, argv):
    """Run the CLI expecting a usage error: exit 2, nothing on stdout, one line on stderr. Returns it."""
    capsys.readouterr()
    assert cli.main([*map(str, argv), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("python -m gpkernels train: error: ") and "Traceback" not in captured.err
    return lines[0]


TOYGP = ["--dataset", "8gaussians", "--regularizer", "gp", "--steps", "2"]
OPTION_ERRORS = [
    pytest.param(TOYGP + ["--clip", "0.1"], ["--clip"], id="clip-with-gp"),
    pytest.param(["--dataset", "8gaussians", "--regularizer", "clip", "--lazy", "2"], ["--lazy"], id="lazy-with-clip"),
    pytest.param(["--dataset", "8gaussians", "--regularizer", "clip", "--betas", "0.5", "0.9"], ["--betas"],
                 id="betas-with-clip"),
    pytest.param(["--dataset", "8gaussians", "--regularizer", "clip", "--weight", "1"], ["--weight"],
                 id="weight-with-clip"),
    pytest.param(["--dataset", "8gaussians", "--steps", "0"], ["--steps"], id="steps-0"),
    pytest.param(["--dataset", "8gaussians", "--batch-size", "1"], ["--batch-size"], id="batch-1"),
    pytest.param(["--dataset", "8gaussians", "--lr", "0"], ["--lr"], id="lr-0"),
    pytest.param(["--dataset", "8gaussians", "--weight", "-1"], ["--weight"], id="weight-negative"),
    pytest.param(TOYGP + ["--betas", "0.5", "1.0"], ["--betas"], id="betas-1"),
    pytest.param(["--dataset", "8gaussians", "--regularizer", "clip", "--compare-reference"],
                 ["--compare-reference"], id="compare-reference-with-clip"),
    pytest.param(["--dataset", "8gaussians", "--regularizer", "none", "--compare-reference"],
                 ["--compare-reference"], id="compare-reference-with-none"),
    pytest.param(TOYGP + ["--amp", "--dtype", "float64"], ["--amp", "--dtype float64"], id="amp-float64"),
    pytest.param(TOYGP + ["--amp", "--compare-reference"], ["--compare-reference", "--amp"],
                 id="amp-compare-reference"),
    pytest.param(TOYGP + ["--layernorm"], ["--layernorm"], id="layernorm-toy"),
    pytest.param(["--dataset", "digits", "--depth", "3"], ["--depth"], id="depth-digits"),
    pytest.param(["--dataset", "text", "--critic-depth", "3"], ["--critic-depth"], id="critic-depth-text"),
    pytest.param(TOYGP + ["--text-file", "x.txt"], ["--text-file"], id="text-file-toy"),
    pytest.param(TOYGP + ["--time-budget", "0"], ["--time-budget"], id="time-budget-0"),
    pytest.param(TOYGP + ["--threads", "0"], ["--threads"], id="threads-0"),
    pytest.param(["--regularizer", "gp"], ["--dataset"], id="no-dataset"),
    pytest.param(TOYGP + ["--device", "cuda"], ["--device cuda"], id="device-cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
    pytest.param(TOYGP + ["--device", "tpu"], ["--device"], id="device-unknown"),
    pytest.param(TOYGP + ["--backend", "triton"], ["--backend triton"], id="backend-triton-cpu",
                 marks=pytest.mark.skipif(backends.triton.interpreted() or torch.cuda.is_available(),
                                          reason="Triton is interpreted in this session (conftest sets "
                                                 "TRITON_INTERPRET=1 without a GPU): see the subprocess test")),
    pytest.param(TOYGP + ["--resume", "--overwrite"], ["--resume", "--overwrite"], id="resume-and-overwrite"),
]


@pytest.mark.parametrize("argv,mentions", OPTION_ERRORS)
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, argv, mentions):
    out = tmp_path / "run"
    line = _error(capsys, [*argv, "--out", out])
    for word in mentions:
        assert word in line, line
    assert not out.exists()                 # nothing was created


def test_triton_on_cpu_without_the_interpreter_is_a_usage_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: triton serves it")
    e = env()
    e.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "gpkernels", "train", *TOYGP, "--backend", "triton",
                           "--out", str(tmp_path / "run"), "--no-progress"],
                          capture_output=True, text=True, env=e, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m gpkernels train: error: --backend triton"), proc.stderr
    assert "TRITON_INTERPRET" in lines[0] or "not installed" in lines[0]


def test_resume_without_out(capsys):
    line = _error(capsys, ["--resume"])
    assert "--resume" in line and "--out" in line


def test_resume_of_a_missing_run(tmp_path, capsys):
    line = _error(capsys, ["--resume", "--out", tmp_path / "nothing"])
    assert "--resume" in line and "does not exist" in line


def _spoiled(gp_run, tmp_path, how):
    out = tmp_path / "run"
    shutil.copytree(gp_run, out)
    path = out / CHECKPOINT
    good = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"this is not a checkpoint\x00\x01" * 100)
    elif how == "truncated":
        path.write_bytes(good[:len(good) // 2])
    elif how == "foreign":
        torch.save({"model": torch.zeros(3)}, path)
    return out


@pytest.mark.parametrize("how,says", [("garbage", "not a readable checkpoint"),
                                      ("truncated", "not a readable checkpoint"),
                                      ("foreign", "not a gpkernels trainer checkpoint")])
def test_resume_of_a_bad_checkpoint(gp_run, tmp_path, capsys, how, says):
    out = _spoiled(gp_run, tmp_path, how)
    before = (out / METRICS).read_bytes()
    line = _error(capsys, ["--resume", "--out", out, "--steps", 5])
    assert says in line and str(out / CHECKPOINT) in line, line
    assert (out / METRICS).read_bytes() == before


@pytest.mark.parametrize("argv,mentions", [
    (["--regularizer", "clip"], "--regularizer"),
    (["--lr", "0.001"], "--lr"),
    (["--width", "32"], "--width"),
    (["--dataset", "25gaussians"], "--dataset"),
    (["--steps", "2"], "--steps"),                         # below the checkpoint's step 3
])
def test_resume_with_different_settings(gp_run, tmp_path, capsys, argv, mentions):
    out = tmp_path / "run"
    shutil.copytree(gp_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = _error(capsys, ["--resume", "--out", out, *argv])
    assert mentions in line, line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_existing_run_needs_resume_or_overwrite(gp_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(gp_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = _error(capsys, [*TOYGP, "--out", out, *TINY])
    assert "--resume" in line and "--overwrite" in line and str(out) in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # --overwrite starts afresh: a new 2-step run replaces the 3-step one.
    train(out, *TOYGP, "--overwrite")
    assert checkpoint(out)["step"] == 2 and [r["step"] for r in records(out)] == [2]


def test_text_file_errors(tmp_path, capsys):
    text = ["--dataset", "text", "--steps", "1", "--out", tmp_path / "run"]
    line = _error(capsys, [*text, "--text-file", tmp_path / "missing.txt"])
    assert "--text-file" in line and "missing.txt" in line
    short = tmp_path / "short.txt"
    short.write_text("Too little text to cut thirty-two character windows from.\n")
    line = _error(capsys, [*text, "--text-file", short])
    assert "--text-file" in line and "usable characters" in line
    assert not (tmp_path / "run").exists()


def test_text_file_trains(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = train(tmp_path / "run", "--dataset", "text", "--text-file", corpus, "--steps", 1)
    assert all(set(s) <= set("the quickbrownfxjmpsvlazydg.") for s in records(out)[-1]["samples"])


# ------------------------------------------------------------------------------------------------ DDP

def _torchrun(args, tmp_path, timeout=120):
    """torchrun with two processes; asserts exit status 0. On a timeout the whole process group (launcher and
    workers, which a hung collective would otherwise keep alive) is killed."""
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=tmp_path, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (a hung collective?)\n{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout


WORKER = pathlib.Path(_ddp_worker.__file__)


def test_ddp_critic_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    path = tmp_path / "grads.pt"
    _torchrun([WORKER, "gradients", path], tmp_path)
    results = torch.load(path, weights_only=True)
    assert set(results) == {f"{d}/{r}" for d, r in _ddp_worker.CASES}
    n = 2 * _ddp_worker.HALF
    for dataset, reg in _ddp_worker.CASES:
        got = results[f"{dataset}/{reg}"]
        assert got["rank"] == 0 and got["penalty"] > 0
        trainer = Trainer(_ddp_worker.config(dataset, reg), out=None, progress=False)
        assert trainer.world == 1
        real, fake, alpha = _ddp_worker.inputs(trainer, reg, n)
        _, pen, _ = trainer.critic_backward(real, fake, alpha=alpha)
        assert pen > 0
        full = _ddp_worker.grads(trainer)
        assert set(full) == set(got["grads"])
        for name, g in full.items():
            assert g.dtype == torch.float64
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"{dataset}/{reg} {name}: {m}")
        # Not vacuous: rank 0's half alone gives other gradients (so DDP did average across ranks).
        trainer.critic_backward(_ddp_worker.take(real, 0, _ddp_worker.HALF),
                                _ddp_worker.take(fake, 0, _ddp_worker.HALF),
                                alpha=_ddp_worker.take(alpha, 0, _ddp_worker.HALF))
        half = _ddp_worker.grads(trainer)
        assert max(float((half[k] - full[k]).abs().max()) for k in full) > 1e-6


def test_torchrun_cli(tmp_path, capsys):
    out = tmp_path / "run"
    _torchrun(["-m", "gpkernels", "train", "--dataset", "8gaussians", "--steps", 3, "--width", 16, "--depth", 1,
               "--critic-depth", 1, "--batch-size", 8, "--n-critic", 2, "--no-progress", "--threads", 1,
               "--log-every", 1, "--out", out], tmp_path)
    assert [r["step"] for r in records(out)] == [1, 2, 3]
    assert math.isfinite(records(out)[-1]["w1"])
    ck = checkpoint(out)
    assert ck["world_size"] == 2 and ck["step"] == 3 and len(ck["rng"]) == 2
    # Each process drew its own batches: the saved data streams differ.
    assert not torch.equal(ck["rng"][0]["data"], ck["rng"][1]["data"])
    # A two-process checkpoint cannot continue in one process.
    line = _error(capsys, ["--resume", "--out", out, "--steps", 5])
    assert "2 process" in line


def test_ddp_ranks_stop_together_on_the_time_budget(tmp_path):
    # Rank 0 is over --time-budget after one step, rank 1 (its clock set back an hour) is not: both must stop.
    path = tmp_path / "stopped"
    _torchrun([WORKER, "budget", path], tmp_path, timeout=90)
    steps = [torch.load(f"{path}.{r}", weights_only=True) for r in (0, 1)]
    assert [s["rank"] for s in steps] == [0, 1]
    assert [s["step"] for s in steps] == [1, 1]


# -------------------------------------------------------------------------------------------- divergence

def test_a_diverged_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """Non-finite losses stop the run at that step with exit status 1 and one line naming the step; the
    checkpoint stays the last finite one, so --resume (e.g. with another --lr... not allowed: with the same
    settings) is never handed NaN parameters."""
    real_step = Trainer.train_step

    def step_that_diverges_at_5(self):
        record = real_step(self)
        if self.step == 5:
            record["d_loss"] = math.nan
        return record

    monkeypatch.setattr(Trainer, "train_step", step_that_diverges_at_5)
    out = tmp_path / "run"
    argv = ["--out", str(out), *TINY, "--dataset", "8gaussians", "--steps", "20", "--checkpoint-every", "2",
            "--log-every", "1"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged at step 5" in err[0] and "from step 4" in err[0]
    assert checkpoint(out)["step"] == 4
    logged = records(out)
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]
    assert logged[-1]["d_loss"] is None                    # written as null, not as a number
