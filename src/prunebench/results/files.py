"""The files of a run folder ``results/<sweep>/<run_id>/`` and the run's state: ``run.json`` (the
RunSpec), ``config.py``, ``status.json``, ``metrics.json``, ``train.log``, ``work_dir/``
(MMEngine's logs and checkpoints); JSON written atomically, ``status.json`` replaced in place,
the one rule of "finished", and a failure recorded for a process that could not say why.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .lock import lock_holder

RUN_FILE = "run.json"
CONFIG_FILE = "config.py"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "train.log"
WORK_DIR = "work_dir"

STATES = ("pending", "running", "done", "failed", "skipped")
REQUIRED_METRICS = ("box_ap", "latency_ms")  # a metrics.json without one of these is incomplete


def finite(data: Any, where: str = "") -> tuple[Any, list[str]]:
    """``data`` with every non-finite float (NaN, inf) replaced by None, and the dotted keys of
    those replaced: strict JSON has no NaN."""
    if isinstance(data, float) and not math.isfinite(data):
        return None, [where or "(value)"]
    if isinstance(data, dict):
        pairs = [(k, finite(v, f"{where}.{k}" if where else str(k))) for k, v in data.items()]
        return {k: v for k, (v, _) in pairs}, [p for _, (_, bad) in pairs for p in bad]
    if isinstance(data, (list, tuple)):
        items = [finite(v, f"{where}[{i}]") for i, v in enumerate(data)]
        return [v for v, _ in items], [p for _, bad in items for p in bad]
    return data, []


def atomic_write_json(path: Path, data: Any) -> None:
    """Write strict JSON (non-finite numbers as null: :func:`finite`) so that readers never see a
    half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(finite(data)[0], f, indent=2, sort_keys=False, default=str, allow_nan=False)
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


def record_exception(run_dir: Path, error: BaseException, log: str) -> dict:
    """status.json after ``error`` ended the work on a run in this process: ``pending`` on Ctrl-C
    (the run resumes; no error recorded, a reason says so), else ``failed``; with the error, its
    traceback's last lines and the log."""
    if isinstance(error, KeyboardInterrupt):
        return write_status(
            run_dir, "pending", reason="interrupted (Ctrl-C); re-run the sweep to resume", log=log
        )
    tail = "".join(traceback.format_exception(error)[-6:])[-2000:]
    return write_status(run_dir, "failed", error=f"{type(error).__name__}: {error}", traceback=tail, log=log)


def exit_reason(code: int) -> str:
    """How a job process ended, for status.json: its exit code, or the signal that killed it."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name} (signal {-code}); a re-run of the sweep resumes it from its last checkpoint"


def skip_reason(parent_dir: Path, state: str) -> str:
    """Why a run is skipped when its dependency ``parent_dir`` ended in ``state``: that, with the
    first line of the parent's recorded error."""
    error = str((read_json(Path(parent_dir) / STATUS_FILE) or {}).get("error") or "").strip()
    first = error.splitlines()[0][:200] if error else ""
    return f"dependency {Path(parent_dir).name} {state}" + (f" ({first})" if first else "")


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
