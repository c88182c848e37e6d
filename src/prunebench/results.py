"""Run folders on disk: the files a job writes and everything downstream reads.

Layout of one run folder ``results/<sweep>/<run_id>/``:
``run.json`` (the RunSpec), ``config.py``, ``status.json``, ``metrics.json``, ``train.log``,
``work_dir/`` (MMEngine's logs and checkpoints).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .axes import PRUNING_AXES

RUN_FILE = "run.json"
CONFIG_FILE = "config.py"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "train.log"
WORK_DIR = "work_dir"
LOCK_FILE = "run.lock"

STATES = ("pending", "running", "done", "failed", "skipped")
REQUIRED_METRICS = ("box_ap", "latency_ms")  # a metrics.json without one of these is incomplete
EXIT_LOCKED = 75  # exit code of a job process that found its run locked by a live process elsewhere
log = logging.getLogger(__name__)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict | None:
    """Parsed JSON object, or None when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_status(run_dir: Path, state: str, **extra: Any) -> dict:
    """Replace ``status.json`` with ``state`` plus ``extra``; keeps fields such as the Slurm job id."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; expected one of {STATES}")
    old = read_json(Path(run_dir) / STATUS_FILE) or {}
    keep = {k: old[k] for k in ("slurm_job_id", "started", "attempts") if k in old}
    status = {**keep, "state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    atomic_write_json(Path(run_dir) / STATUS_FILE, status)
    return status


def missing_metrics(metrics: dict) -> list[str]:
    """The keys of ``REQUIRED_METRICS`` that ``metrics`` lacks or holds as null."""
    return [k for k in REQUIRED_METRICS if metrics.get(k) is None]


def is_finished(run_dir: Path) -> bool:
    """The one rule of "finished": the run left a metrics.json with every required key non-null."""
    metrics = read_json(Path(run_dir) / METRICS_FILE)
    return metrics is not None and not missing_metrics(metrics)


def record_failure(run_dir: Path, error: str, keep: tuple[str, ...] = ("failed",), **extra: Any) -> dict:
    """Mark a run ``failed`` with ``error`` when the process that ran it could not say why (killed,
    lost node, died before its handler ran). Leaves status.json alone when the run is finished,
    when it already holds a state in ``keep`` (the process recorded its own outcome), or when a
    live process elsewhere holds the run's lock (the run is not ours to mark). Returns status.json."""
    run_dir = Path(run_dir)
    status = read_json(run_dir / STATUS_FILE) or {}
    if status.get("state") in keep or is_finished(run_dir) or lock_holder(run_dir):
        return status
    return write_status(run_dir, "failed", error=error, **extra)


# --- one writer per run: an exclusive lock held by the job process -------------------------------


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


# --- reading side: run folders -> Run records -------------------------------------------------

MISSING = "missing"  # no result yet where one is expected (no status.json, or "done" without metrics)
CORRUPT = "corrupt"  # a file exists but cannot be used (invalid JSON, metrics without box_ap...)
_RUN_MARKERS = (RUN_FILE, STATUS_FILE, METRICS_FILE, CONFIG_FILE)


def _num(value: Any) -> float | None:
    """A finite number, else None (NaN is what a missing COCO metric becomes)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


@dataclass
class Run:
    """One run folder as read from disk. ``state`` is the status.json state, overridden by what
    the files show: ``done`` needs a complete metrics.json; ``missing``/``corrupt`` carry a
    ``problem`` naming the file at fault."""

    path: Path
    state: str
    spec: dict = field(default_factory=dict)  # run.json
    status: dict = field(default_factory=dict)  # status.json
    metrics: dict | None = None  # metrics.json, only when complete
    problem: str | None = None

    def _get(self, key: str, default: Any = None) -> Any:
        for source in (self.metrics or {}, self.spec):
            if source.get(key) is not None:
                return source[key]
        return default

    @property
    def run_id(self) -> str:
        return str(self._get("run_id", self.path.name))

    @property
    def sweep(self) -> str:
        return str(self._get("sweep", self.path.parent.name))

    @property
    def stage(self) -> str | None:
        return self._get("stage")

    @property
    def backbone(self) -> str | None:
        return self._get("backbone")

    @property
    def seed(self) -> Any:
        return self._get("seed")

    @property
    def axes(self) -> dict:
        axes = self._get("axes", {})
        return axes if isinstance(axes, dict) else {}

    @property
    def is_dense(self) -> bool:
        if self.stage is not None:
            return self.stage == "dense"
        return bool(self.axes) and all(self.axes.get(a) is None for a in PRUNING_AXES)

    def metric(self, name: str) -> float | None:
        """A number from metrics.json: ``box_ap``, ``mask_ap``, ``latency_backbone``,
        ``latency_full``, ``keep_ratio``, ``flops_backbone``, ``flops_full``, ``train_time_s``."""
        m = self.metrics or {}
        group, _, sub = name.partition("_")
        if group in ("latency", "flops"):
            block = m.get("latency_ms" if group == "latency" else "flops_g")
            return _num(block.get(sub)) if isinstance(block, dict) else None
        if name == "keep_ratio":
            block = m.get("keep_ratio")
            return _num(block.get("mean")) if isinstance(block, dict) else _num(block)
        return _num(m.get(name))


def _load(path: Path, names: set[str], name: str) -> tuple[dict | None, str | None]:
    """(object, problem): (None, None) when absent, (None, reason) when unusable."""
    if name not in names:
        return None, None
    try:
        data = json.loads((path / name).read_bytes())
    except OSError as e:
        return None, f"{name} unreadable: {e.strerror or e}"
    except ValueError:
        return None, f"{name} is not valid JSON (half-written or damaged); re-run the run or delete the file"
    if not isinstance(data, dict):
        return None, f"{name} holds a {type(data).__name__}, not a JSON object"
    return data, None


def load_run(path: Path, names: set[str] | None = None) -> Run:
    """Read one run folder; never raises for missing, partial or corrupt files."""
    path = Path(path)
    if names is None:
        try:
            names = set(os.listdir(path))
        except OSError as e:
            return Run(path, CORRUPT, problem=f"cannot list folder: {e.strerror or e}")
    spec, spec_problem = _load(path, names, RUN_FILE)
    status, status_problem = _load(path, names, STATUS_FILE)
    metrics, metrics_problem = _load(path, names, METRICS_FILE)
    run = Run(path, "", spec or {}, status or {})
    file_state = run.status.get("state")
    if metrics is not None:
        lacking = missing_metrics(metrics)
        if lacking:
            metrics_problem = f"{METRICS_FILE} lacks {', '.join(lacking)} (partial write?); re-run the run"
        else:
            run.metrics, run.state = metrics, "done"
    if metrics_problem:
        run.state, run.problem = CORRUPT, metrics_problem
    elif run.metrics is None:
        if status_problem:
            run.state, run.problem = CORRUPT, status_problem
        elif file_state == "done":
            run.state, run.problem = MISSING, f"{STATUS_FILE} says done but {METRICS_FILE} is missing"
        elif file_state in STATES:
            run.state = file_state
        elif status is None:
            run.state, run.problem = MISSING, f"no {STATUS_FILE} or {METRICS_FILE} yet (never started?)"
        else:
            run.state, run.problem = CORRUPT, f"{STATUS_FILE} has unknown state {file_state!r}"
    if spec_problem and not run.problem:
        run.problem = spec_problem
    return run


def _subdirs(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def _run_names(path: str) -> set[str] | None:
    """File names in ``path`` when it looks like a run folder, else None."""
    try:
        names = set(os.listdir(path))
    except OSError:
        return None
    return names if any(m in names for m in _RUN_MARKERS) else None


def scan_results(root: Path) -> list[Run]:
    """All runs under ``root``: a run folder, a sweep folder, or a parent of sweep folders.
    Sorted by sweep then run id. Raises FileNotFoundError when ``root`` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such results folder; pass a sweep folder (results/<sweep>) "
            "or a parent of several (results/)"
        )
    names = _run_names(str(root))
    if names is not None:
        return [load_run(root, names)]
    runs, sweeps = [], []
    for entry in _subdirs(root):
        names = _run_names(entry.path)
        if names is not None:
            runs.append(load_run(Path(entry.path), names))
        else:
            sweeps.append(entry)
    if not runs:  # a parent of sweep folders
        for sweep in sweeps:
            for entry in _subdirs(sweep.path):
                names = _run_names(entry.path)
                if names is not None:
                    runs.append(load_run(Path(entry.path), names))
    return sorted(runs, key=lambda r: (r.sweep, r.run_id))


# --- one-line description of a run (status and report) ---------------------------------------

STYLES = {
    "done": "green",
    "running": "blue",
    "pending": "dim",
    "skipped": "dim",
    "failed": "red",
    "corrupt": "red",
    "missing": "yellow",
}


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _fmt(value, fmt: str) -> str:
    return fmt.format(value) if value is not None else "—"


def _last_line(text) -> str:
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return lines[-1][-120:] if lines else ""


def detail(run: Run, states: dict[str, str] | None = None) -> str:
    """What matters about a run in its state: metrics, problem, error tail and log, progress,
    skip reason, or unfinished dependencies (``states``: run id -> state)."""
    s = run.status
    if run.state == "done":
        return (
            f"box {_fmt(run.metric('box_ap'), '{:.1f}')}  mask {_fmt(run.metric('mask_ap'), '{:.1f}')}  "
            f"full {_fmt(run.metric('latency_full'), '{:.1f}')} ms  "
            f"backbone {_fmt(run.metric('latency_backbone'), '{:.1f}')} ms"
        )
    if run.problem:
        return run.problem
    if run.state == "failed":
        tail = _last_line(s.get("error")) or "no error recorded"
        if tail.startswith("exit code") and _last_line(s.get("traceback")):
            tail += f": {_last_line(s.get('traceback'))}"
        return f"{tail}  (log: {s.get('log') or run.path / 'train.log'})"
    if run.state == "running":
        parts = [str(s["phase"])] if s.get("phase") else []
        if s.get("iter") is not None:
            total = s.get("max_iters")
            pct = f" ({100 * s['iter'] / total:.0f}%)" if isinstance(total, (int, float)) and total else ""
            parts.append(f"iter {s['iter']}/{total if total is not None else '?'}{pct}")
        if isinstance(s.get("eta_s"), (int, float)):
            parts.append(f"ETA {fmt_duration(s['eta_s'])}")
        return "  ".join(parts) or f"since {s.get('updated', '?')}"
    waits = [d for d in run.spec.get("depends_on") or () if (states or {}).get(d) != "done"]
    reason = str(s.get("reason") or "")
    return "  ".join(filter(None, [reason, f"waits for {', '.join(waits)}" if waits and states else ""]))
