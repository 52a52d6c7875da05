"""The reference trainer's run directory and options under attack: corrupted and hand-edited checkpoints, two
trainers on one --out, a killed run, an --out that cannot be written, a full disk before and during a run,
leftover temporaries, options out of range, and a --text-file that is not UTF-8. Each ends with one line and
the documented exit status (2 before training, 1 mid-run), and leaves the previous checkpoint and metrics whole.

Full disks are made two ways: a monkeypatched writer raising ENOSPC, and a real one, RLIMIT_FSIZE, under
which the kernel refuses to grow any file of this process past a size (EFBIG), root or not.
"""

import contextlib
import errno
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile

import pytest
import torch

pytest.importorskip("ot", reason="the toy metric needs POT (pip install pot)")

from gpkernels.trainer import checkpoint as ckpt  # noqa: E402
from gpkernels.trainer import cli, rundir  # noqa: E402
from gpkernels.trainer.checkpoint import CHECKPOINT, METRICS, read_checkpoint  # noqa: E402
from gpkernels.trainer.loop import Trainer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROG = "python -m gpkernels train: "
TINY = ["--width", "16", "--depth", "1", "--critic-depth", "1", "--batch-size", "8", "--n-critic", "1",
        "--no-progress", "--threads", "1"]
TOY = ["--dataset", "8gaussians", "--regularizer", "gp", *TINY]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A finished 2-step run (a line per step, a checkpoint at step 2); tests copy it before spoiling it."""
    out = tmp_path_factory.mktemp("files") / "run"
    threads = torch.get_num_threads()
    try:
        assert cli.main([*TOY, "--steps", "2", "--log-every", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def copy(run2, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run2, out)
    return out


def main(capsys, argv):
    """(exit status, stdout, stderr lines) of cli.main."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def error(capsys, argv, status=2):
    """Run the CLI expecting one error line on stderr and `status`; returns the line."""
    code, out, err = main(capsys, argv)
    assert code == status, (code, out, err)
    assert len(err) == 1, err
    assert err[0].startswith(PROG) and "Traceback" not in err[0], err
    return err[0]


def files(out):
    return {p.name: p.read_bytes() for p in pathlib.Path(out).iterdir()}


def steps(out):
    return [json.loads(line)["step"] for line in (pathlib.Path(out) / METRICS).read_text().splitlines()]


@contextlib.contextmanager
def file_size_limit(limit):
    """No file of this process may grow past `limit` bytes: writes beyond it fail with EFBIG, as on a full disk
    (Python ignores SIGXFSZ, so the write returns the error rather than killing the process)."""
    resource = pytest.importorskip("resource")
    if signal.getsignal(signal.SIGXFSZ) != signal.SIG_IGN:
        pytest.skip("SIGXFSZ is not ignored in this process")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


# ---------------------------------------------------------------------------------- corrupt checkpoints

def _largest_record(path):
    """(offset, size) of the largest tensor data record inside a torch zip checkpoint (stored uncompressed)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _flip(path, offset, n=64):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + n] = bytes(b ^ 0xFF for b in raw[offset:offset + n])
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("where", ["tensor-data", "middle-of-file"])
def test_a_checkpoint_with_flipped_bytes_is_refused(run2, tmp_path, capsys, where):
    out = copy(run2, tmp_path)
    path = out / CHECKPOINT
    if where == "tensor-data":
        # Bytes inside a tensor: torch.load reads them without complaint, so only the digest can tell.
        offset, size = _largest_record(path)
        assert size >= 64
        _flip(path, offset + size // 2 - 32)
    else:                                    # the attack as run: 64 bytes in the middle of the file
        _flip(path, path.stat().st_size // 2 - 32)
    before = files(out)
    line = error(capsys, ["--out", out, "--resume", "--steps", 4, "--no-progress", "--threads", 1])
    assert str(path) in line
    assert "corrupt" in line or "not a readable checkpoint" in line, line
    if where == "tensor-data":
        assert "corrupt" in line and "--overwrite" in line and "--lr" not in line, line
    assert files(out) == before


@pytest.mark.parametrize("rehash", [False, True], ids=["edited", "edited-and-rehashed"])
@pytest.mark.parametrize("field,value", [("config", None), ("step", "abc"), ("train_seconds", float("nan")),
                                         ("rng", [])])
def test_hand_edited_checkpoint_fields_are_refused(run2, tmp_path, capsys, field, value, rehash):
    out = copy(run2, tmp_path)
    path = out / CHECKPOINT
    saved = torch.load(path, weights_only=True)
    saved[field] = value
    if rehash:                               # edited by someone who also recomputed the digest: types still checked
        saved["digest"] = ckpt.digest(saved)
    torch.save(saved, path)
    line = error(capsys, ["--out", out, "--resume", "--steps", 4, "--no-progress"])
    assert str(path) in line
    if rehash:
        assert "damaged" in line and field in line, line
    else:
        assert "corrupt" in line, line


def test_digest_survives_a_save_and_load(run2):
    saved = read_checkpoint(run2 / CHECKPOINT)
    assert saved["version"] == 2 and saved["digest"] == ckpt.digest(saved)
    saved["critic"][next(iter(saved["critic"]))].view(-1)[0] += 1e-7
    assert ckpt.digest(saved) != saved["digest"]


# ------------------------------------------------------------------------------------- two trainers

def test_a_second_trainer_on_a_directory_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    first, _ = cli.build([*TOY, "--steps", "4", "--log-every", "1", "--checkpoint-every", "2", "--out", str(out)])
    try:
        assert (out / rundir.LOCK).read_text().strip() == str(os.getpid())
        # Before the first checkpoint, and after it: --resume, a plain rerun and --overwrite are all refused.
        for moment in ("before", "after"):
            if moment == "after":
                first.run(steps=2, quiet=True)
            before = files(out)
            for extra in (["--resume"], TOY, [*TOY, "--overwrite"]):
                line = error(capsys, ["--out", out, "--steps", 4, *extra])
                assert "in use" in line and f"process {os.getpid()}" in line, line
            assert files(out) == before
        first.run(quiet=True)
    finally:
        first.close()
    assert (out / rundir.LOCK).read_text() == ""                     # no PID left of a finished run
    assert main(capsys, ["--out", out, "--resume", "--steps", 5, "--no-progress", "--threads", 1])[0] == 0
    assert steps(out) == [1, 2, 3, 4, 5]


def _env():
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def test_a_killed_run_frees_its_directory_and_the_advice_works(tmp_path, capsys):
    """A run killed (SIGKILL) before its first checkpoint: while it runs its directory is refused naming its PID;
    once dead, --resume and a plain rerun both say the one thing that works (--overwrite), and it works, also
    removing the partial checkpoint a kill mid-save would leave."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gpkernels", "train", *TOY, "--steps", "100000", "--log-every",
                             "1", "--eval-every", "100000", "--checkpoint-every", "100000", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / METRICS).exists() and (out / METRICS).read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        line = error(capsys, ["--out", out, "--resume", "--steps", 4])
        assert "in use" in line and f"process {proc.pid}" in line, line
        line = error(capsys, [*TOY, "--out", out, "--steps", 4])
        assert "in use" in line and f"process {proc.pid}" in line, line
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert not (out / CHECKPOINT).exists()
    (out / f"{CHECKPOINT}.tmp{proc.pid}").write_bytes(b"PK\x03\x04 half a checkpoint")    # as a kill mid-save
    line = error(capsys, ["--out", out, "--resume", "--steps", 4])
    assert "no checkpoint was written before the run" in line and "--overwrite" in line, line
    assert "in use" not in line
    line = error(capsys, [*TOY, "--out", out, "--steps", 4])
    assert "--overwrite" in line and "pass --resume" not in line, line
    assert main(capsys, [*TOY, "--out", out, "--steps", 2, "--overwrite"])[0] == 0
    assert {p.name for p in out.iterdir()} - {"samples.png"} == {rundir.LOCK, CHECKPOINT, METRICS}


# ----------------------------------------------------------------------------- unwritable directories

def test_out_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("not a directory\n")
    for argv in ([*TOY, "--steps", 2], ["--resume", "--steps", 2]):
        line = error(capsys, [*argv, "--out", target])
        assert str(target) in line and "is a file" in line, line
    line = error(capsys, [*TOY, "--steps", 2, "--out", target / "run"])
    assert str(target / "run") in line and "cannot create" in line, line
    assert target.read_text() == "not a directory\n"


def _chmod_stops_writes(tmp_path):
    """Whether a directory made read-only with chmod refuses new files here (not for root, which may write
    anywhere: CAP_DAC_OVERRIDE)."""
    d = tmp_path / "probe-ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "x").write_bytes(b"")
    except PermissionError:
        return True
    else:
        return False
    finally:
        d.chmod(0o755)


def test_out_that_is_read_only(run2, tmp_path, capsys):
    if not _chmod_stops_writes(tmp_path):
        pytest.skip("this process writes into read-only directories (root: CAP_DAC_OVERRIDE), so chmod cannot "
                    "make one; the full-disk tests cover a failing write")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = copy(run2, tmp_path)
    for d in (empty, out):
        d.chmod(0o555)
    try:
        for argv in ([*TOY, "--steps", 2, "--out", empty], ["--resume", "--steps", 4, "--out", out]):
            line = error(capsys, argv)
            assert "not writable" in line, line
    finally:
        for d in (empty, out):
            d.chmod(0o755)
    assert read_checkpoint(out / CHECKPOINT)["step"] == 2


def _no_temporaries(out):
    left = [p.name for p in pathlib.Path(out).iterdir() if ".tmp" in p.name or p.name.startswith(rundir.PROBE)]
    assert not left, left


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(run2, tmp_path, capsys, monkeypatch):
    out = copy(run2, tmp_path)
    good = (out / CHECKPOINT).read_bytes()
    real_write = rundir.write_bytes

    def write_half_then_fail(path, data):
        if pathlib.Path(path).name.startswith(CHECKPOINT):
            real_write(path, bytes(data)[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(rundir, "write_bytes", write_half_then_fail)
    line = error(capsys, ["--out", out, "--resume", "--steps", 4, "--checkpoint-every", 1, "--log-every", 1,
                          "--no-progress", "--threads", 1], status=1)
    assert "No space left on device" in line and str(out / CHECKPOINT) in line and "from step 2" in line, line
    assert (out / CHECKPOINT).read_bytes() == good
    _no_temporaries(out)
    monkeypatch.undo()
    # The step logged past the checkpoint goes; the run continues from step 2 as if nothing had happened.
    assert main(capsys, ["--out", out, "--resume", "--steps", 3, "--no-progress", "--threads", 1])[0] == 0
    assert steps(out) == [1, 2, 3]


def test_a_real_write_failure_mid_run_is_one_line_and_exit_1(run2, tmp_path, capsys):
    out = copy(run2, tmp_path)
    good = (out / CHECKPOINT).read_bytes()
    assert len(good) > 8192
    with file_size_limit(8192):              # metrics.jsonl fits, a checkpoint does not
        line = error(capsys, ["--out", out, "--resume", "--steps", 3, "--no-progress", "--threads", 1], status=1)
    assert "File too large" in line and "from step 2" in line, line
    assert (out / CHECKPOINT).read_bytes() == good
    _no_temporaries(out)


def test_metrics_are_rewritten_atomically(run2, tmp_path, capsys):
    """--resume rewrites metrics.jsonl (dropping what the checkpoint does not cover); a write that fails half-way
    (here: the file may not grow past 100 bytes) leaves the old file whole and no temporary."""
    out = copy(run2, tmp_path)
    with open(out / METRICS, "a") as f:
        f.write('{"step": 3, "d_loss": 0.0}\n{"step": ')          # a step past the checkpoint, a cut line
    before = files(out)
    assert len(before[METRICS]) > 100
    with file_size_limit(100):
        line = error(capsys, ["--out", out, "--resume", "--steps", 4, "--no-progress", "--threads", 1])
    assert "cannot write" in line and str(out / METRICS) in line, line
    assert files(out) == before
    _no_temporaries(out)


def test_stale_temporaries_are_removed_on_the_next_start(run2, tmp_path, capsys):
    out = copy(run2, tmp_path)
    for name in (f"{CHECKPOINT}.tmp4242", f"{METRICS}.tmp4242", f"{rundir.PROBE}4242"):
        (out / name).write_bytes(b"left by a killed process")
    assert main(capsys, ["--out", out, "--resume", "--steps", 3, "--no-progress", "--threads", 1])[0] == 0
    _no_temporaries(out)
    assert steps(out) == [1, 2, 3]


def test_too_little_disk_for_a_checkpoint_is_refused_before_training(tmp_path, capsys, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    out = tmp_path / "run"
    line = error(capsys, [*TOY, "--steps", 2, "--out", out])
    assert "1000 bytes free" in line and str(out) in line, line
    assert not (out / CHECKPOINT).exists() and not (out / METRICS).exists()


# ------------------------------------------------------------------------------------------- options

OPTION_ERRORS = [
    (["--weight", "inf"], "--weight"), (["--weight", "1e39"], "--weight"), (["--weight", "nan"], "--weight"),
    (["--lr", "inf"], "--lr"), (["--lr", "1e308"], "--lr"), (["--lr", "nan"], "--lr"),
    (["--seed", str(2**64)], "--seed"), (["--seed", "-1"], "--seed"),
    (["--depth", "-1"], "--depth"), (["--critic-depth", "0"], "--critic-depth"), (["--width", "10000000"], "--width"),
    (["--lazy", "100000000000000000000"], "--lazy"), (["--time-budget", "inf"], "--time-budget"),
    (["--time-budget", "nan"], "--time-budget"), (["--betas", "nan", "0.9"], "--betas"),
    (["--threads", "100000000000"], "--threads"), (["--batch-size", "1000000000"], "--batch-size"),
    (["--regularizer", "clip", "--clip", "inf"], "--clip"), (["--regularizer", "clip", "--lr=-inf"], "--lr"),
]


@pytest.mark.parametrize("extra,flag", OPTION_ERRORS, ids=[" ".join(e) for e, _ in OPTION_ERRORS])
def test_numeric_options_are_finite_and_in_range(tmp_path, capsys, extra, flag):
    out = tmp_path / "run"
    argv = ["--dataset", "8gaussians", "--steps", "2", "--no-progress", "--out", str(out)]
    argv += ["--width", "16"] if "--width" not in extra else []
    line = error(capsys, [*argv, *extra])
    assert flag in line, line
    if flag == "--batch-size":
        assert "memory" in line and "available" in line, line
    assert not out.exists()


def test_a_64_bit_seed_trains(tmp_path, capsys):
    assert main(capsys, [*TOY, "--steps", 1, "--seed", 2**64 - 1, "--out", tmp_path / "run"])[0] == 0


@pytest.mark.parametrize("weight,says,never", [("1000", "a smaller --weight", "larger --weight"),
                                               ("0.001", "a larger --weight", "smaller --weight")])
def test_divergence_advice_fits_the_weight(tmp_path, capsys, monkeypatch, weight, says, never):
    real_step = Trainer.train_step

    def diverge(self):
        record = real_step(self)
        record["g_loss"] = float("inf")
        return record

    monkeypatch.setattr(Trainer, "train_step", diverge)
    line = error(capsys, [*TOY, "--steps", 3, "--weight", weight, "--out", tmp_path / "run"], status=1)
    assert "diverged at step 1" in line and "no checkpoint was written" in line, line
    assert says in line and never not in line and "--lr" in line, line


# ---------------------------------------------------------------------------------------------- text

def test_a_text_file_that_is_not_utf8_is_refused(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(("the quick brown fox jumps over the lazy dog. " * 30).encode() + "café au lait".encode("latin1"))
    offset = 45 * 30 + 3
    out = tmp_path / "run"
    line = error(capsys, ["--dataset", "text", "--steps", 1, "--text-file", bad, "--out", out, "--no-progress"])
    assert "--text-file" in line and str(bad) in line and f"offset {offset}" in line and "0xe9" in line, line
    assert not out.exists()
