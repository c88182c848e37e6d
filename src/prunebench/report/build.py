"""``build_report``: a results folder -> :class:`Report`. Scans the runs, keeps those that match
``--where``, builds their rows and per-axis effects, sorts by ``--sort`` and, with ``--paper``,
adds the verdicts on the paper's findings."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..axes import METHOD_AXIS, PRUNING_AXES
from ..results import Run, metric_warnings, scan_results
from .effects import compute_effects
from .methods import compare_methods
from .paper import check_paper, load_paper
from .rows import _aggregate, _DenseIndex, _run_row, _setting_label, timing_setup
from .schema import COLUMNS, IDENTITY, METRICS, Report, cell, short_axis

# --- filters and sorting --------------------------------------------------------------------


def _matches(value: Any, text: str) -> bool:
    t = text.strip().lower()
    if value is None:
        return t in ("none", "null", "", "-", "—")
    if isinstance(value, bool):
        return t in (("true", "1", "yes", "on") if value else ("false", "0", "no", "off"))
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(t), value, rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return str(value).lower() == t


def parse_where(where: Iterable[str], known: Iterable[str]) -> list[tuple[str, str]]:
    """``axis=value`` strings -> pairs; raises ValueError naming the known keys."""
    known = list(known)
    out = []
    for item in where:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--where {item!r}: expected AXIS=VALUE, e.g. pruned_tokens=preserve")
        matches = [k for k in known if k == key] or [k for k in known if short_axis(k) == key]
        if len(matches) != 1:
            raise ValueError(f"--where {item!r}: unknown key {key!r}; known: {', '.join(known)}")
        out.append((matches[0], value))
    return out


def _field(run: Run, key: str) -> Any:
    return getattr(run, key) if key in ("sweep", "run_id", "backbone", "stage", "seed") else run.axes.get(key)


def _row_value(row: dict, key: str) -> Any:
    return row[key] if key in row else row["axes"].get(key)


def _orderable(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def sortable(axes: list[str]) -> list[str]:
    return [*METRICS, *IDENTITY, *axes]


def sort_rows(rows: list[dict], sort: str, axes: list[str]) -> list[dict]:
    """Rows by column ``sort``, best first for metrics (highest AP, lowest latency), A-Z
    otherwise; a leading ``-`` reverses; empty values last."""
    key = sort.lstrip("-")
    if key not in sortable(axes):
        raise ValueError(f"--sort {sort!r}: unknown column; choose one of {', '.join(sortable(axes))}")
    higher = {c[0]: c[3] for c in COLUMNS}.get(key, False)
    present = [r for r in rows if _row_value(r, key) is not None]
    present.sort(key=lambda r: _orderable(_row_value(r, key)), reverse=higher != sort.startswith("-"))
    return present + [r for r in rows if _row_value(r, key) is None]


# --- the report -----------------------------------------------------------------------------


def build_report(
    root: Path, where: Iterable[str] = (), sort: str | None = None, paper: bool = False, margin: float = 0.5
) -> Report:
    """Scan ``root`` and build every table. ``sort``: a column key, best first (highest AP,
    lowest latency); prefix ``-`` to reverse. ``paper``: add the verdicts on the paper's
    findings (``margin``: the equivalence margin in AP). Raises FileNotFoundError / ValueError."""
    runs = scan_results(root)
    axes_seen = {a for r in runs for a in r.axes}
    leading = [METHOD_AXIS, *PRUNING_AXES]
    axes = [a for a in leading if a in axes_seen] + sorted(axes_seen - set(leading))
    filters = parse_where(where, [*axes, "sweep", "run_id", "backbone", "stage", "seed"])
    dense = _DenseIndex([r for r in runs if r.state == "done"])
    kept = [r for r in runs if all(_matches(_field(r, k), v) for k, v in filters)]
    done = [r for r in kept if r.state == "done"]
    multi_sweep = len({r.sweep for r in runs}) > 1
    multi_backbone = len({r.backbone for r in runs if r.backbone}) > 1
    run_rows = [
        _run_row(r, dense.find(r), _setting_label(r, axes, multi_sweep, multi_backbone)) for r in done
    ]
    aggregated = len({r.seed for r in done if r.seed is not None}) > 1  # None: a parent of every seed
    rows = _aggregate(run_rows, axes) if aggregated else run_rows
    rows.sort(
        key=lambda row: (
            row["sweep"],
            str(row["backbone"]),
            not row["dense"],
            *(cell(row["axes"].get(a)) for a in axes),
            str(row["seed"]),
        )
    )
    if sort:
        rows = sort_rows(rows, sort, axes)
    finetunes = [r for r in run_rows if not r["dense"]]
    report = Report(
        Path(root),
        axes,
        rows,
        aggregated,
        compute_effects(run_rows, axes),
        [r for r in kept if r.state != "done"],
        multi_sweep,
        multi_backbone,
        Counter(s for r in done if (s := timing_setup(r))),
        (sum(r["speedup_paired"] for r in finetunes), len(finetunes)),
    )
    report.metric_warnings = metric_warnings(done)
    if paper:
        report.paper = check_paper(report, runs, margin)
        report.paper.methods, report.paper.method_verdicts = compare_methods(run_rows, load_paper())
    return report
