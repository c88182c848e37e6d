"""Run folders on disk: the files a job writes and everything downstream reads.

Layout of one run folder ``results/<sweep>/<run_id>/``:
``run.json`` (the RunSpec), ``config.py``, ``status.json``, ``metrics.json``, ``train.log``,
``work_dir/`` (MMEngine's logs and checkpoints).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .grid import PRUNING_AXES as _GRID_AXES

RUN_FILE = "run.json"
CONFIG_FILE = "config.py"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "train.log"
WORK_DIR = "work_dir"

STATES = ("pending", "running", "done", "failed", "skipped")


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
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


# --- reading side: run folders -> Run records -------------------------------------------------

MISSING = "missing"  # no result yet where one is expected (no status.json, or "done" without metrics)
CORRUPT = "corrupt"  # a file exists but cannot be used (invalid JSON, metrics without box_ap...)
_RUN_MARKERS = (RUN_FILE, STATUS_FILE, METRICS_FILE, CONFIG_FILE)
PRUNING_AXES = tuple(_GRID_AXES)  # axis names, in the grid's order


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
        lacking = [k for k in ("box_ap", "latency_ms") if metrics.get(k) is None]
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
            "or a parent of several (results/)")
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
