"""The executor interface: one small class per backend (local, Slurm)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

from ..grid import RunSpec
from ..results import METRICS_FILE, read_json


class Executor(ABC):
    """Runs the prepared run folders of one sweep, dependencies first.

    Each run folder already holds ``run.json`` and ``config.py``; the work of one run is
    ``prunebench.job.run_job(run_dir)``. A run whose ``metrics.json`` is complete is skipped.
    """

    name: str = "base"

    @abstractmethod
    def run(self, sweep_dir: Path, runs: Sequence[RunSpec]) -> dict[str, str]:
        """Execute ``runs``; return run id -> final state (done, failed, skipped, submitted...)."""


def is_finished(run_dir: Path) -> bool:
    """True when the run left a complete ``metrics.json``."""
    m = read_json(Path(run_dir) / METRICS_FILE)
    return bool(m) and m.get("box_ap") is not None and "latency_ms" in m
