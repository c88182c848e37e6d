"""What one Slurm task runs: a checkpointable callable around the job function."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from ...results import (
    STATUS_FILE,
    is_finished,
    is_writer,
    read_json,
    record_failure,
    write_status,
    writer_lock,
)
from ..base import DEFAULT_JOB_FN, load_job_fn


class SlurmRunJob(Checkpointable):
    """Calls ``fn(run_dir, launcher=...)`` (default ``prunebench.job:run_job``) in a Slurm task.

    The writer task (rank 0) holds the run's lock for the whole call (a run locked by a live
    process elsewhere raises ``RunLocked`` and the job fails, leaving the run's files alone),
    records the Slurm job and its attempt in status.json, and records a failure the job function
    did not. On preemption or time-out submitit calls :meth:`checkpoint` and requeues the job,
    which then calls ``fn`` again: ``run_job`` resumes from the run's last checkpoint.
    """

    def __init__(self, fn: str = DEFAULT_JOB_FN, launcher: str = "none"):
        self.fn, self.launcher = fn, launcher
        self._requeued = False

    def __call__(self, run_dir: str) -> Any:
        writer, job_id = is_writer(), os.environ.get("SLURM_JOB_ID", "")
        if self.launcher == "slurm" and job_id.isdigit():
            # A port per job: two multi-GPU jobs sharing a node must not both use 29500.
            os.environ.setdefault("MASTER_PORT", str(20000 + int(job_id) % 20000))
        self._requeued = False
        with writer_lock(run_dir):
            if writer and job_id:  # attempts survive requeues: write_status keeps the field
                old = read_json(Path(run_dir) / STATUS_FILE) or {}
                write_status(
                    run_dir,
                    "running",
                    slurm_job_id=job_id,
                    attempts=int(old.get("attempts", 0)) + 1,
                    phase="start",
                    node=os.uname().nodename,
                )
            try:
                result = load_job_fn(self.fn)(run_dir, launcher=self.launcher)
            except BaseException as e:
                if writer and self._requeued:  # submitit requeued the job and exits (SystemExit), or
                    # Slurm's requeue kill hit its `scontrol requeue` first (CalledProcessError)
                    write_status(
                        run_dir,
                        "pending",
                        reason=f"preempted or timed out: Slurm job {job_id} "
                        "requeued; it resumes from the last checkpoint",
                    )
                elif writer:
                    record_failure(run_dir, f"{type(e).__name__}: {e}", keep=("failed", "pending"))
                raise
            if (
                writer
                and is_finished(Path(run_dir))
                and (read_json(Path(run_dir) / STATUS_FILE) or {}).get("state") == "running"
            ):
                write_status(run_dir, "done")  # e.g. run_job found the run already finished
            return result

    def checkpoint(self, run_dir: str) -> DelayedSubmission:
        """Called by submitit on preemption/time-out, just before it requeues the job: resubmit the
        same call (the training state lives in the run folder's checkpoints)."""
        self._requeued = True
        return super().checkpoint(run_dir)

    def __repr__(self) -> str:
        return f"SlurmRunJob({self.fn!r}, launcher={self.launcher!r})"
