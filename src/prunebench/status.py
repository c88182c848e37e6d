"""``prunebench status``: one line per run with its state and what matters for that state."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from .executors.slurm import ACTIVE_STATES
from .results import Run, scan_results

STYLES = {"done": "green", "running": "blue", "pending": "dim", "skipped": "dim",
          "failed": "red", "corrupt": "red", "missing": "yellow"}


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _num(value, fmt: str) -> str:
    return fmt.format(value) if value is not None else "—"


def _last_line(text) -> str:
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return lines[-1][-120:] if lines else ""


def detail(run: Run, states: dict[str, str] | None = None) -> str:
    """What matters about a run in its state: metrics, problem, error tail and log, progress,
    skip reason, or unfinished dependencies (``states``: run id -> state)."""
    s = run.status
    if run.state == "done":
        return (f"box {_num(run.metric('box_ap'), '{:.1f}')}  mask {_num(run.metric('mask_ap'), '{:.1f}')}  "
                f"full {_num(run.metric('latency_full'), '{:.1f}')} ms  "
                f"backbone {_num(run.metric('latency_backbone'), '{:.1f}')} ms")
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


def slurm_states(runs: list[Run]) -> tuple[dict[str, str], str | None]:
    """Live Slurm state per job id of the pending/running runs, plus a warning if unavailable."""
    ids = sorted({str(r.status["slurm_job_id"]) for r in runs
                  if r.status.get("slurm_job_id") and r.state in ("pending", "running")})
    if not ids:
        return {}, None
    try:
        from .executors.slurm import query_states
    except ImportError as e:
        return {}, f"live Slurm state unavailable ({e})"
    try:
        return {str(k): str(v) for k, v in query_states(ids).items()}, None
    except Exception as e:  # squeue/sacct missing or failing must not break the listing
        return {}, f"live Slurm state unavailable: {type(e).__name__}: {e}"


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
        console.print(f"{escape(str(root))}: no run folders yet (expected {root}/<run_id>/status.json); "
                      "prepare them with `prunebench sweep`", highlight=False, soft_wrap=True)
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
            out.append(f" [slurm {job} {sl}]", style="cyan" if sl in ACTIVE_STATES else "bold red")
        out.append(f"  {detail(run, states)}\n")
    console.print(out, end="", soft_wrap=True, highlight=False)
    counts = Counter(r.state for r in runs)
    summary = ", ".join(f"{counts[s]} {s}" for s in STYLES if counts[s])
    console.print(f"[bold]{len(runs)} runs[/] in {escape(str(root))}: {summary}", highlight=False)
    if warning:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    return 0
