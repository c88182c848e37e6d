"""One writer per run: an exclusive ``fcntl`` lock on ``run.lock``, held by the job process that
writes the run's files and naming it (host, pid, Slurm job). A lock left by a dead process is
free (the kernel released it with the process); ``lock_holder`` tells who holds a live one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "run.lock"
EXIT_LOCKED = 75  # exit code of a job process that found its run locked by a live process elsewhere
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockHolder:
    """The live process that holds a run's lock, as it wrote itself into the lock file."""

    host: str = "?"
    pid: int | None = None
    since: str = ""
    slurm_job_id: str | None = None

    def __str__(self) -> str:
        job = f", Slurm job {self.slurm_job_id}" if self.slurm_job_id else ""
        return f"pid {self.pid} on {self.host}{job}" + (f" since {self.since}" if self.since else "")


class RunLocked(RuntimeError):
    """Another live process holds the run's lock: it is running there."""

    def __init__(self, run_dir: Path, holder: LockHolder):
        super().__init__(f"run {Path(run_dir).name} is running elsewhere ({holder}); not started again")
        self.holder = holder


_HELD: dict[str, list[int]] = {}  # lock files this process holds: real path -> [fd, depth]


def _holder(fd: int) -> LockHolder:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return LockHolder(**{k: data[k] for k in ("host", "pid", "since", "slurm_job_id") if k in data})
    except (OSError, ValueError, TypeError):  # being rewritten right now
        return LockHolder()


def lock_holder(run_dir: Path) -> LockHolder | None:
    """The live process, other than this one, that holds the run's lock; None when nobody does
    (a lock file left by a dead process is free: the kernel released it with the process)."""
    path = Path(run_dir) / LOCK_FILE
    if os.path.realpath(path) in _HELD:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe: held for microseconds
    except BlockingIOError:
        return _holder(fd)
    except OSError:  # a file system without locks: nobody can be seen holding it
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_writer() -> bool:
    """True in the process that writes a run's files: rank 0 of a distributed job, or a plain one."""
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def writer_lock(run_dir: str | Path):
    """The run's lock for the writer process (raises ``RunLocked`` when held elsewhere); the other
    ranks of a distributed job hold nothing."""
    return run_lock(Path(run_dir)) if is_writer() else nullcontext()


@contextmanager
def run_lock(run_dir: Path, wait_s: float = 1.0) -> Iterator[None]:
    """Hold the run's exclusive ``fcntl`` lock (``run.lock``, naming host and pid) for the block:
    one writer per run. Raises :class:`RunLocked` when a live process holds it (retried for
    ``wait_s``, so another process's probe does not count). Re-entrant within a process; a lock
    left by a dead process is taken over."""
    key = os.path.realpath(Path(run_dir) / LOCK_FILE)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunLocked(Path(run_dir), _holder(fd)) from None
                time.sleep(0.05)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                log.warning(
                    "%s: this file system has no locks (%s); two sweeps on this folder could "
                    "run this run twice",
                    key,
                    e.strerror,
                )
                break
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the lock
