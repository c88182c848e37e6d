"""The executor interface (one small class per backend) and what every backend's job process does."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..results import writer_lock

if TYPE_CHECKING:
    from ..spec import RunSpec

DEFAULT_JOB_FN = "prunebench.job:run_job"


class Executor(ABC):
    """Runs the prepared run folders of one sweep, dependencies first.

    Each run folder already holds ``run.json`` and ``config.py``; the work of one run is the job
    function (``prunebench.job:run_job``) called as ``fn(run_dir, launcher=...)`` by
    :func:`call_job`. A finished run is skipped; a run locked by a live process elsewhere is not
    started again; a failed run does not stop the others, and its dependents are skipped.
    """

    name: str = "base"
    gpus_per_run: int = 1  # training processes of one run (GPUs; 1 for a CPU run): configs are written for it

    @abstractmethod
    def run(self, sweep_dir: Path, runs: Sequence[RunSpec]) -> dict[str, str]:
        """Execute ``runs``; return run id -> final state (done, failed, skipped, submitted...)."""


def load_job_fn(ref: str) -> Callable[..., Any]:
    """The function named ``module:function``."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"job function must be 'module:function', got {ref!r}")
    return getattr(importlib.import_module(module), attr)


def call_job(ref: str, run_dir: str | Path, launcher: str = "none") -> Any:
    """Call the job function ``ref`` on ``run_dir`` holding the run's lock for the whole call."""
    fn = load_job_fn(ref)
    with writer_lock(run_dir):
        return fn(str(run_dir), launcher=launcher)
