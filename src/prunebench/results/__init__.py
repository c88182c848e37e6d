"""Run folders on disk: the files a job writes and everything downstream reads, and the one owner
of a run's state ("finished", "failed", ...). Imports no other layer of prunebench.

- ``files``: the run folder's files, ``status.json``, the rule of "finished", recorded failures;
- ``lock``: one writer per run, the lock held by the job process;
- ``runs``: run folders read back as ``Run`` records, the scan of a results folder, and the
  one-line description of a run (status and report).
"""

from __future__ import annotations

from .files import (
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    REQUIRED_METRICS,
    RUN_FILE,
    STATES,
    STATUS_FILE,
    WORK_DIR,
    atomic_write_json,
    exit_reason,
    finite,
    is_finished,
    missing_metrics,
    read_json,
    record_exception,
    record_failure,
    skip_reason,
    write_status,
)
from .lock import EXIT_LOCKED, LOCK_FILE, LockHolder, RunLocked, is_writer, lock_holder, run_lock, writer_lock
from .runs import (
    CORRUPT,
    MISSING,
    STYLES,
    Run,
    detail,
    fmt_duration,
    load_run,
    metric_warnings,
    scan_results,
)

__all__ = [
    "CONFIG_FILE",
    "CORRUPT",
    "EXIT_LOCKED",
    "LOCK_FILE",
    "LOG_FILE",
    "METRICS_FILE",
    "MISSING",
    "REQUIRED_METRICS",
    "RUN_FILE",
    "STATES",
    "STATUS_FILE",
    "STYLES",
    "WORK_DIR",
    "LockHolder",
    "Run",
    "RunLocked",
    "atomic_write_json",
    "detail",
    "exit_reason",
    "finite",
    "fmt_duration",
    "is_finished",
    "is_writer",
    "load_run",
    "lock_holder",
    "metric_warnings",
    "missing_metrics",
    "read_json",
    "record_exception",
    "record_failure",
    "run_lock",
    "scan_results",
    "skip_reason",
    "write_status",
    "writer_lock",
]
