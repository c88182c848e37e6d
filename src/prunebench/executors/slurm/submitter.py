"""Putting jobs into the Slurm queue: submitted held, released or cancelled later."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .options import SlurmOptions
from .queue import CMD_TIMEOUT_S


class Submitter(Protocol):
    """Puts jobs into the queue: held at submission, released or cancelled later."""

    def submit(
        self, run_dir: Path, run_id: str, job: Callable[[str], Any], dependency_job_ids: Sequence[str]
    ) -> tuple[str, Path]:
        """Submit ``job(str(run_dir))`` held; return its job id and the log of its task 0."""

    def release(self, job_id: str) -> None: ...

    def cancel(self, job_id: str) -> None: ...


class SubmititSubmitter:
    """The real queue: sbatch through submitit, ``scontrol release``, ``scancel``."""

    def __init__(self, options: SlurmOptions, sweep_dir: Path):
        self.options, self.sweep_dir = options, Path(sweep_dir)

    def submit(self, run_dir, run_id, job, dependency_job_ids):
        import submitit

        folder = self.options.log_folder(self.sweep_dir, run_id)
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.options.max_num_timeout)
        ex.update_parameters(**self.options.sbatch_parameters(run_id, dependency_job_ids))
        try:
            submitted = ex.submit(job, str(run_dir))
        except Exception as e:
            raise RuntimeError(
                f"sbatch refused run {run_id}: {e}\n(submission script: "
                f"{folder}/*_submission.sh; check partition/gpus/time/account)"
            ) from e
        return str(submitted.job_id), Path(str(submitted.paths.stdout).replace("%t", "0"))

    def release(self, job_id):
        try:
            subprocess.run(
                ["scontrol", "release", job_id],
                check=True,
                capture_output=True,
                text=True,
                timeout=CMD_TIMEOUT_S,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise RuntimeError(
                f"could not release Slurm job {job_id}: {getattr(e, 'stderr', '') or e}"
            ) from e

    def cancel(self, job_id):
        subprocess.run(["scancel", job_id], capture_output=True, timeout=CMD_TIMEOUT_S)
