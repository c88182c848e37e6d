"""Reading run folders for status and reports: a :class:`Run` record per folder that never
raises for missing, partial or corrupt files (its ``state`` is what the files show, its
``problem`` names the file at fault), the scan of a run, sweep or results folder, and the
one-line description of a run in its state.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..axes import PRUNING_AXES
from .files import CONFIG_FILE, METRICS_FILE, RUN_FILE, STATES, STATUS_FILE, missing_metrics

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


def metric_warnings(runs: list[Run]) -> list[str]:
    """What a report shows as "—" although the run is done: a box or mask AP that is not a finite
    number, and the warnings the job recorded in metrics.json (non-finite values written as null)."""
    out = []
    for run in runs:
        m = run.metrics or {}
        name = f"{run.sweep}/{run.run_id}"
        for key in ("box_ap", "mask_ap"):
            if m.get(key) is not None and _num(m[key]) is None:
                out.append(f"{name}: {METRICS_FILE} {key} is {m[key]!r}, not a number (shown as —)")
        notes = m.get("warnings")
        out += [f"{name}: {w}" for w in notes if isinstance(w, str)] if isinstance(notes, list) else []
    return out


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
    return lines[-1][-400:] if lines else ""


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
        if tail.startswith(("exit code", "killed by")) and _last_line(s.get("traceback")):
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
