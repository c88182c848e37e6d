"""``prunebench status``: one line per run with its state and what matters for that state."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .cost import forecast_vs_actual
from .results import LOCK_FILE, STYLES, Run, detail, lock_holder, scan_results


def slurm_states(runs: list[Run]) -> tuple[dict[str, Any], str | None]:
    """Live Slurm state (``JobState``) per job id of the pending/running runs, plus a warning if
    unavailable. The Slurm query module is imported only when some run has a Slurm job."""
    ids = sorted(
        {
            str(r.status["slurm_job_id"])
            for r in runs
            if r.status.get("slurm_job_id") and r.state in ("pending", "running")
        }
    )
    if not ids:
        return {}, None
    try:
        from .executors.slurm.queue import query
    except ImportError as e:
        return {}, f"live Slurm state unavailable ({e})"
    try:
        return dict(query(ids)), None
    except Exception as e:  # squeue/sacct missing or failing must not break the listing
        return {}, f"live Slurm state unavailable: {type(e).__name__}: {e}"


def orphaned(run: Run) -> bool:
    """A local run that says running while no live process holds its lock (its job was killed)."""
    return (
        run.state == "running"
        and not run.status.get("slurm_job_id")
        and (run.path / LOCK_FILE).exists()
        and lock_holder(run.path) is None
    )


def print_status(root: Path, console) -> int:
    """Print one line per run under ``root`` and a summary; returns the exit code
    (2 when ``root`` is not a folder)."""
    from rich.markup import escape
    from rich.text import Text

    try:
        runs = scan_results(root)
    except FileNotFoundError as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    if not runs:
        console.print(
            f"{escape(str(root))}: no run folders yet (expected {root}/<run_id>/status.json); "
            "prepare them with `prunebench sweep`",
            highlight=False,
            soft_wrap=True,
        )
        return 0
    live, warning = slurm_states(runs)
    multi = len({r.sweep for r in runs}) > 1
    names = [f"{r.sweep}/{r.run_id}" if multi else r.run_id for r in runs]
    states = {r.run_id: r.state for r in runs}
    width = max(map(len, names))
    out = Text()
    for name, run in zip(names, runs):
        out.append(f"{name:<{width}}  ")
        out.append(f"{run.state:<8}", style=STYLES.get(run.state, ""))
        job = run.status.get("slurm_job_id")
        if job and str(job) in live:
            sl = live[str(job)]
            out.append(f" [slurm {job} {sl.state}]", style="cyan" if sl.alive else "bold red")
        if orphaned(run):
            out.append(" [no live job: killed; re-run the sweep to resume]", style="bold red")
        out.append(f"  {detail(run, states)}\n")
    console.print(out, end="", soft_wrap=True, highlight=False)
    counts = Counter(r.state for r in runs)
    summary = ", ".join(f"{counts[s]} {s}" for s in STYLES if counts[s])
    console.print(f"[bold]{len(runs)} runs[/] in {escape(str(root))}: {summary}", highlight=False)
    for sweep_dir in sorted({r.path.parent for r in runs}):
        line = forecast_vs_actual(sweep_dir, [r for r in runs if r.path.parent == sweep_dir])
        if line:
            console.print(f"{escape(sweep_dir.name)}: {escape(line)}", highlight=False, soft_wrap=True)
    if warning:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    return 0
