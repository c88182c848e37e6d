"""Results folder -> report data: one row per run (or per setting, mean ± std over seeds) with
its change and speed-up vs the dense run, and per-axis effects with t-intervals over pairs."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import axes as facts
from ..axes import PRUNING_AXES
from ..results import Run, scan_results
from .stats import POWER, mean_sd, pairs_needed, t_interval

if TYPE_CHECKING:
    from .paper import PaperCheck

# (key, header, format, higher is better): metric columns in display order.
COLUMNS = (
    ("box_ap", "box AP", "{:.1f}", True),
    ("mask_ap", "mask AP", "{:.1f}", True),
    ("d_box_ap", "Δ box", "{:+.1f}", True),
    ("d_mask_ap", "Δ mask", "{:+.1f}", True),
    ("latency_backbone", "backbone ms", "{:.1f}", False),
    ("latency_full", "full ms", "{:.1f}", False),
    ("speedup_backbone", "speed-up bb", "{:.2f}×", True),
    ("speedup_full", "speed-up full", "{:.2f}×", True),
    ("keep_ratio", "keep", "{:.3f}", False),
    ("flops_backbone", "GFLOPs bb", "{:.3g}", False),
    ("flops_full", "GFLOPs full", "{:.3g}", False),
)
METRICS = tuple(c[0] for c in COLUMNS)
_RAW = ("box_ap", "mask_ap", "latency_backbone", "latency_full", "keep_ratio", "flops_backbone", "flops_full")
IDENTITY = ("sweep", "run_id", "label", "backbone", "stage", "seed")
# (key, name, format of a difference, higher is better): what each per-axis effect is measured on.
EFFECT_METRICS = (
    ("box_ap", "box AP", "{:+.2f}", True),
    ("mask_ap", "mask AP", "{:+.2f}", True),
    ("latency_full", "full ms", "{:+.1f}", False),
    ("latency_backbone", "backbone ms", "{:+.1f}", False),
    ("speedup_full", "speed-up full ×", "{:+.3f}", True),
    ("speedup_backbone", "speed-up bb ×", "{:+.3f}", True),
)


@dataclass
class Effect:
    """Change of one metric when only ``axis`` changes: the mean of (first − second) over the
    pairs of finished runs that agree in everything else, with its 95 % t-interval."""

    axis: str
    first: Any
    second: Any
    metric: str
    pairs: int
    seeds: int  # distinct seeds among the pairs
    mean: float
    sd: float | None
    low: float | None
    high: float | None
    first_better: int
    second_better: int
    pairs_needed: int | None  # for 80 % power at alpha 0.05, at the observed size and spread

    @property
    def comparison(self) -> str:
        return f"{axis_label(self.axis, self.first)} vs {axis_label(self.axis, self.second)}"

    @property
    def within_noise(self) -> bool:
        """The interval includes 0 (also when there is no interval: one pair)."""
        return self.low is None or self.low <= 0 <= self.high

    @property
    def seeds_needed(self) -> int | None:
        """Seeds of this grid that give ``pairs_needed`` pairs."""
        if self.pairs_needed is None:
            return None
        return max(2, math.ceil(self.pairs_needed / (self.pairs / self.seeds)))

    @property
    def reading(self) -> str:
        """How to read the effect: "1 pair" (no interval), "1 seed" (not separable from seed
        noise), "within noise" (interval includes 0) or "" (interval excludes 0)."""
        if self.low is None:
            return "1 pair"
        if self.seeds < 2:
            return "1 seed"
        return "within noise" if self.within_noise else ""


@dataclass
class Report:
    root: Path
    axes: list[str]  # axis names, pruning axes first
    rows: list[dict]  # one per run, or per setting when ``aggregated``
    aggregated: bool
    effects: list[Effect]
    not_done: list[Run]
    multi_sweep: bool
    multi_backbone: bool
    timing: Counter = field(default_factory=Counter)  # latency setup ("cpu, float32, 2 threads") -> runs
    paired: tuple[int, int] = (0, 0)  # finetunes with a same-process speed-up, finished finetunes
    paper: PaperCheck | None = None  # with ``--paper``

    def notes(self) -> list[str]:
        """Warnings every format prints below the effects: one seed, mixed timing setups, where
        the speed-ups come from."""
        out = []
        one_seed = [e for e in self.effects if e.seeds < 2]
        if one_seed:
            sized = [
                f"{e.comparison} {e.pairs_needed} pairs (≈ {e.seeds_needed} seeds of this grid)"
                for e in one_seed
                if e.metric == "box_ap" and e.pairs_needed is not None
            ]
            need = (
                "needs about, for box AP: " + "; ".join(sized)
                if sized
                else "cannot be sized yet: no comparison has two pairs"
            )
            out.append(
                "One seed: these effects cannot be told from noise — a single-seed spread between "
                "pairs confounds seed noise with the effect. Resolving an effect of the observed size "
                f"at the observed pair spread (α = 0.05, power {POWER:.0%}) {need}."
            )
        if len(self.timing) > 1:
            setups = ", ".join(f"{k} ({n} run{'s' * (n != 1)})" for k, n in self.timing.most_common())
            out.append(f"Latencies come from different setups: {setups}; compare them only within one.")
        paired, finetunes = self.paired
        if paired:
            out.append(
                f"Speed-ups: {paired} of {finetunes} finetunes timed beside their dense parent in the "
                "same process (paired); the rest are ratios to the dense run's median latency."
            )
        return out


# --- labels ---------------------------------------------------------------------------------


def short_axis(axis: str) -> str:
    return axis.rsplit(".", 1)[-1]


def cell(value: Any) -> str:
    """An axis value in a table cell."""
    if value is None:
        return "—"
    return (
        str(value).lower()
        if isinstance(value, bool)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def axis_label(axis: str, value: Any) -> str:
    """How one axis value reads in sentences and legends."""
    return facts.value_label(axis, value) if axis in PRUNING_AXES else f"{short_axis(axis)}={cell(value)}"


def _setting_label(run: Run, axes: list[str], multi_sweep: bool, multi_backbone: bool) -> str:
    parts = [run.sweep] if multi_sweep else []
    parts += [run.backbone or "?"] if multi_backbone else []
    if run.is_dense:
        parts.append("dense")
    parts += [
        ("react" if v else "no-react") if a == "reactivation" else axis_label(a, v)
        for a in axes
        if (v := run.axes.get(a)) is not None
    ]
    return "/".join(parts)


# --- rows -----------------------------------------------------------------------------------


class _DenseIndex:
    """Finds a run's dense reference: the dense run of the same backbone and seed (same sweep
    preferred) whose swept non-pruning settings (e.g. a learning rate) agree with the run's."""

    def __init__(self, runs: list[Run]):
        self.by_seed: dict[tuple, list[tuple[Run, dict]]] = {}
        for r in runs:
            if r.is_dense:
                settings = {k: v for k, v in r.axes.items() if k not in PRUNING_AXES and v is not None}
                self.by_seed.setdefault((r.backbone, repr(r.seed)), []).append((r, settings))
        self.memo: dict[tuple, Run | None] = {}

    def find(self, run: Run) -> Run | None:
        axes = {k: v for k, v in run.axes.items() if k not in PRUNING_AXES}
        key = (run.backbone, repr(run.seed), run.sweep, repr(sorted(axes.items())))
        if key not in self.memo:  # runs of one setting share the answer: a scan per setting only
            fits = [
                d
                for d, settings in self.by_seed.get(key[:2], ())
                if all(axes.get(k) == v for k, v in settings.items())
            ]
            fits.sort(key=lambda d: d.sweep != run.sweep)
            self.memo[key] = fits[0] if fits else None
        return self.memo[key]


def _positive(value: Any) -> float | None:
    ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
    return float(value) if ok else None


def paired_speedup(run: Run, part: str) -> float | None:
    """``metrics.json: paired.speedup.<part>``: the finetune and its dense parent timed in the
    same process; None for runs written before it existed."""
    paired = (run.metrics or {}).get("paired")
    speedup = paired.get("speedup") if isinstance(paired, dict) else None
    return _positive(speedup.get(part)) if isinstance(speedup, dict) else None


def timing_setup(run: Run) -> str | None:
    """Where a run's latency was measured ("cpu, float32, 2 threads"), from ``latency_ms``."""
    lat = (run.metrics or {}).get("latency_ms")
    if not isinstance(lat, dict):
        return None
    parts = [str(lat[k]) for k in ("device", "dtype") if lat.get(k)]
    parts += [f"{lat['threads']} threads"] if lat.get("threads") else []
    return ", ".join(parts) or None


def _run_row(run: Run, dense: Run | None, label: str) -> dict:
    row: dict[str, Any] = {
        "sweep": run.sweep,
        "run_id": run.run_id,
        "label": label,
        "backbone": run.backbone,
        "stage": run.stage,
        "seed": run.seed,
        "n": 1,
        "axes": run.axes,
        "dense": run.is_dense,
    }
    for key in _RAW:
        row[key] = run.metric(key)
    ref = dict.fromkeys(_RAW) if dense is None else {k: dense.metric(k) for k in _RAW}
    for key in ("box_ap", "mask_ap"):
        row[f"d_{key}"] = None if None in (row[key], ref[key]) else row[key] - ref[key]
    row["speedup_paired"] = False
    for part in ("backbone", "full"):
        paired = None if run.is_dense else paired_speedup(run, part)
        lat, base = row[f"latency_{part}"], ref[f"latency_{part}"]
        row[f"speedup_{part}"] = (
            paired if paired is not None else base / lat if lat and base is not None else None
        )
        row["speedup_paired"] |= paired is not None
    return row


def _mean_std(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    return mean_sd(values) if values else (None, None)


def _aggregate(rows: list[dict], axes: list[str]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["sweep"], row["backbone"], row["stage"], *(repr(row["axes"].get(a)) for a in axes))
        groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        agg = {
            **members[0],
            "run_id": ";".join(m["run_id"] for m in members),
            "n": len(members),
            "seed": ";".join(str(m["seed"]) for m in members),
            "speedup_paired": all(m["speedup_paired"] for m in members),
        }
        for key in METRICS:
            agg[key], agg[f"{key}_std"] = _mean_std([m[key] for m in members])
        out.append(agg)
    return out


# --- effects --------------------------------------------------------------------------------


def _order(axis: str, values: dict[str, Any]) -> tuple[Any, Any]:
    """(first, second) of an axis with two values: the paper's direction for a pruning axis,
    else the larger value first."""
    first, second = facts.PAPER_DIRECTION.get(axis, (None, None))
    if {repr(first), repr(second)} != set(values):
        first, second = sorted(values.values(), key=lambda v: (str(type(v)), v), reverse=True)
    return first, second


def compute_effects(rows: list[dict], axes: list[str]) -> list[Effect]:
    """For each axis with exactly two values among the pruned runs (``rows``: one per run),
    pair the runs that agree in every other axis, the sweep, backbone, stage and seed; one
    Effect per metric of EFFECT_METRICS that the pairs have."""
    pruned = [r for r in rows if not r["dense"]]
    effects = []
    for axis in axes:
        values = {repr(v): v for r in pruned if (v := r["axes"].get(axis)) is not None}
        if len(values) != 2:
            continue
        first, second = _order(axis, values)
        others = [a for a in axes if a != axis]
        groups: dict[tuple, dict[str, list[dict]]] = {}
        for r in pruned:
            key = (
                r["sweep"],
                r["backbone"],
                r["stage"],
                r["seed"],
                *(repr(r["axes"].get(a)) for a in others),
            )
            groups.setdefault(key, {}).setdefault(repr(r["axes"].get(axis)), []).append(r)
        pairs = [
            (a, b)
            for g in groups.values()
            for a, b in product(g.get(repr(first), ()), g.get(repr(second), ()))
        ]
        for key, _, _, higher in EFFECT_METRICS:
            used = [(a, b) for a, b in pairs if a[key] is not None and b[key] is not None]
            if not used:
                continue
            diffs = [a[key] - b[key] for a, b in used]
            ci = t_interval(diffs)
            wins = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
            effects.append(
                Effect(
                    axis,
                    first,
                    second,
                    key,
                    ci.n,
                    len({repr(a["seed"]) for a, _ in used}),
                    ci.mean,
                    ci.sd,
                    ci.low,
                    ci.high,
                    *(wins if higher else wins[::-1]),
                    pairs_needed(ci.mean, ci.sd),
                )
            )
    return effects


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
    axes = [a for a in PRUNING_AXES if a in axes_seen] + sorted(axes_seen - set(PRUNING_AXES))
    filters = parse_where(where, [*axes, "sweep", "run_id", "backbone", "stage", "seed"])
    dense = _DenseIndex([r for r in runs if r.state == "done"])
    kept = [r for r in runs if all(_matches(_field(r, k), v) for k, v in filters)]
    done = [r for r in kept if r.state == "done"]
    multi_sweep = len({r.sweep for r in runs}) > 1
    multi_backbone = len({r.backbone for r in runs if r.backbone}) > 1
    run_rows = [
        _run_row(r, dense.find(r), _setting_label(r, axes, multi_sweep, multi_backbone)) for r in done
    ]
    aggregated = len({r.seed for r in done}) > 1
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
    if paper:
        from .paper import check_paper

        report.paper = check_paper(report, margin)
    return report
