"""The run directory as a place on disk: who may write it, how files are replaced, what a failed write leaves.

    RunLock             an exclusive lock on RUN_DIR/.lock, held for the run's life (the holder's PID is in the
                        file); the kernel frees it when the holder exits or is killed
    holder(out)         the PID text of a live holder of out's lock, or None
    write_atomic        a file replaced in one step (temporary file, fsync, os.replace); a failure removes the
                        temporary and leaves the old file as it was
    remove_temporaries  temporaries a killed or failed writer left (only under the lock: nobody else writes)
    check_writable      a probe file created and removed: a read-only or vanished directory is found up front
    check_free_space    the filesystem holds at least a checkpoint's worth of bytes
    nothing_to_resume   the one piece of advice that works when --resume finds no checkpoint
    agree               every DDP process raises the same error when rank 0 (which alone writes) hit one

Failures before training are UsageError (exit status 2); a directory that cannot be written mid-run is
RunDirError (exit status 1): the CLI prints either as one line.
"""

import errno
import os
import pathlib
import shutil

import torch.distributed as dist

from .config import UsageError

try:
    import fcntl
except ImportError:                          # pragma: no cover - not POSIX: runs are not locked
    fcntl = None

LOCK = ".lock"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
# Files written as NAME.tmpPID and renamed over NAME.
REPLACED = (CHECKPOINT, METRICS)
PROBE = ".write-probe"


class RunDirError(Exception):
    """The run directory could not be written during the run: one line, exit status 1."""


def reason(error):
    """'No space left on device' (errno's text) or the exception's own words, on one line."""
    if isinstance(error, OSError) and error.errno is not None:
        return f"{os.strerror(error.errno)} [{errno.errorcode.get(error.errno, error.errno)}]"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


# ----------------------------------------------------------------------------------------------- lock

class RunLock:
    """An exclusive flock on out/.lock, taken without waiting. UsageError naming the holding process when another
    trainer holds it. `release()` (or the process ending, however it ends) frees it; the file stays, emptied."""

    def __init__(self, out):
        self.path = pathlib.Path(out) / LOCK
        self.fd = None
        if fcntl is None:                    # pragma: no cover
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"--out {out} is not writable: cannot create {self.path} ({reason(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = _read_pid(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UsageError(f"--out {out}: cannot lock {self.path} ({reason(e)})") from None
            raise UsageError(in_use(out, pid)) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise UsageError(f"--out {out} is not writable: cannot write {self.path} ({reason(e)})") from None
        self.fd = fd

    def release(self):
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)              # no PID left behind that names a finished process
        except OSError:
            pass
        os.close(fd)

    def __del__(self):
        self.release()


def _read_pid(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None


def in_use(out, pid):
    who = f"process {pid}" if pid else "another process"
    return (f"{out} is in use by another trainer ({who} holds {pathlib.Path(out) / LOCK}); wait for it to "
            f"finish or stop it, or choose another --out")


def holder(out):
    """The PID (text, or "" if unknown) of the process holding out's lock, or None when nobody holds it."""
    path = pathlib.Path(out) / LOCK
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_pid(fd) or ""
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- writing

def temporary(path):
    path = pathlib.Path(path)
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def write_bytes(path, data):
    """Write `data` to a new file at `path` and fsync it (the one place the trainer writes a whole file)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path, data):
    """Replace `path` by a file holding `data` (bytes) in one step: a temporary next to it, fsync, os.replace.
    Any failure (a full disk, Ctrl-C) removes the temporary and leaves the old file untouched; OSError
    propagates."""
    path = pathlib.Path(path)
    tmp = temporary(path)
    try:
        write_bytes(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    _sync_directory(path.parent)


def _sync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:                          # pragma: no cover - not every platform opens directories
        return
    try:
        os.fsync(fd)
    except OSError:                          # pragma: no cover
        pass
    finally:
        os.close(fd)


def remove_temporaries(out):
    """Remove what killed or failed writers left in `out` (NAME.tmpPID of the replaced files, write probes).
    Call it holding the lock: then no live trainer is writing them."""
    out = pathlib.Path(out)
    removed = []
    for pattern in [f"{name}.tmp*" for name in REPLACED] + [f"{PROBE}*"]:
        for path in out.glob(pattern):
            try:
                path.unlink()
                removed.append(path.name)
            except OSError:
                pass
    return removed


def check_writable(out):
    """UsageError unless a file can be created in `out` (read-only directory or filesystem, no permission)."""
    probe = pathlib.Path(out) / f"{PROBE}{os.getpid()}"
    try:
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--out {out} is not writable ({reason(e)})") from None


def check_free_space(out, needed):
    """UsageError when out's filesystem has fewer than `needed` bytes free (a checkpoint could not be written)."""
    try:
        free = shutil.disk_usage(out).free
    except OSError:                          # pragma: no cover - unknown: let the writes tell
        return
    if free < needed:
        raise UsageError(f"--out {out}: its filesystem has {size(free)} free, and a checkpoint of this run takes "
                         f"about {size(needed)}; free some space or choose another --out")


def size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


# -------------------------------------------------------------------------------------------- advice

def nothing_to_resume(out, locked=False):
    """The line for --resume when out/checkpoint.pt is missing: what is there, and the one thing that works
    (`locked`: this process holds out's lock, so no other trainer is running there)."""
    out = pathlib.Path(out)
    path = out / CHECKPOINT
    if out.exists() and not out.is_dir():
        return f"--resume: {path} does not exist: --out {out} is a file, not a run directory"
    pid = holder(out) if out.is_dir() and not locked else None
    if pid is not None:
        return in_use(out, pid)
    if (out / METRICS).exists():
        return (f"--resume: {path} does not exist: no checkpoint was written before the run in {out} stopped, so "
                f"there is nothing to resume; start it again with --overwrite")
    return f"--resume: {path} does not exist: {out} holds no run to resume; leave out --resume to start one there"


# ---------------------------------------------------------------------------------------------- DDP

def agree(trainer, problem, error=UsageError):
    """Raise `error(problem)` on every process when any process (in practice rank 0, the one that writes) has
    a problem (a message; None: none). Under DDP every process must call it at the same point."""
    if trainer.world > 1:
        gathered = [None] * trainer.world
        dist.all_gather_object(gathered, problem)
        problem = next((p for p in gathered if p), None)
    if problem:
        raise error(problem)
