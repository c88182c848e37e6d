"""``sweep --redo RUN_ID``: a finished (or damaged) run and every run that depends on it go back to
``pending`` so the sweep trains them again: their metrics.json and work_dir (checkpoints) are
deleted, each under the run's lock."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from .files import METRICS_FILE, RUN_FILE, WORK_DIR, read_json, write_status
from .lock import run_lock


def dependants(sweep_dir: Path, run_ids: Iterable[str]) -> list[str]:
    """``run_ids`` and every run of the sweep folder that depends on one of them, transitively."""
    needs = {
        d.name: set((read_json(d / RUN_FILE) or {}).get("depends_on") or ())
        for d in Path(sweep_dir).iterdir()
        if d.is_dir()
    }
    out = list(dict.fromkeys(run_ids))
    for run_id in out:  # grows while it runs: breadth first over the dependants
        out += [r for r, deps in sorted(needs.items()) if run_id in deps and r not in out]
    return out


def reset_runs(
    sweep_dir: Path, run_ids: Iterable[str], known: Iterable[str], dry_run: bool = False
) -> list[str]:
    """Reset ``run_ids`` (runs of this sweep: ``known``) and their dependants to pending; returns
    the run ids reset (``dry_run``: that would be, touching nothing). Raises ValueError for an
    unknown id and RunLocked (nothing of that run deleted) when a live process runs one."""
    known = set(known)
    unknown = [r for r in run_ids if r not in known]
    if unknown:
        raise ValueError(
            f"--redo {unknown[0]}: not a run of this sweep; its runs: {', '.join(sorted(known))}"
        )
    reset = dependants(sweep_dir, run_ids)
    for run_id in [] if dry_run else reset:
        run_dir = Path(sweep_dir) / run_id
        with run_lock(run_dir):
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
            shutil.rmtree(run_dir / WORK_DIR, ignore_errors=True)
            write_status(run_dir, "pending", reason=f"reset by --redo {' '.join(run_ids)}")
    return reset
