"""``sweep --until-decided``: add seeds only where a verdict needs them.

After the grid's seeds finish, each comparison of the report (the paper's findings on the pruning
axes the grid sweeps, or with a ``method`` axis the headline: prior methods' mean drop vs the
paper's method's) is judged on its per-seed mean differences (one observation per seed: the seeds
are independent, the cells of one seed are not). While one is inconclusive, one seed is added to
exactly the runs it needs (its cells and their dense parents; the same parent file when the parent
is a checkpoint), they run, and the verdicts are recomputed. The sweep stops when every comparison
is decided, at ``max_seeds`` seeds, or when the next round's forecast (the mean wall time of the
finished runs of each stage) would pass the budget.

The overall error: every look at a comparison uses a t-interval at level ``1 - ALPHA / looks``
where ``looks = max_seeds - grid seeds + 1`` is the most looks the sweep can take (alpha spending,
Bonferroni over looks), so the chance that a comparison's verdict is ever wrong in its claimed
direction, over all rounds, stays below ``ALPHA`` (5 %) per comparison. The log
``sequential.json`` in the sweep folder records every round; a re-run continues from the runs on
disk (finished runs are not redone).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .axes import METHOD_AXIS, PAPER_DIRECTION
from .cost import wall_s
from .presets import OURS, PRESETS
from .report.stats import ALPHA, t_interval
from .results import RUN_FILE, atomic_write_json, is_finished, read_json, scan_results
from .spec import RunSpec

LOG_FILE = "sequential.json"
DECIDED = ("reproduced", "contradicted", "equivalent")


@dataclasses.dataclass
class Comparison:
    """One verdict the sweep decides: per-seed values of a difference whose sign (or smallness)
    the verdict is about, and the cells it needs (``needs(axes)``)."""

    name: str
    kind: str  # "better" (paper's first value better) or "equivalent"
    values: dict[Any, float]  # seed -> mean paired difference
    needs: Callable[[dict], bool]


def _rows(sweep_dir: Path) -> list[dict]:
    from .report.rows import _DenseIndex, _run_row

    done = [r for r in scan_results(sweep_dir) if r.state == "done"]
    index = _DenseIndex(done)
    return [_run_row(r, index.find(r), "") for r in done]


def _per_seed(diffs: list[tuple[Any, float]]) -> dict[Any, float]:
    by: dict[Any, list[float]] = {}
    for seed, d in diffs:
        by.setdefault(seed, []).append(d)
    return {s: math.fsum(v) / len(v) for s, v in by.items()}


def comparisons(rows: list[dict], metrics=("box_ap", "mask_ap")) -> list[Comparison]:
    """The report's comparisons from its per-run rows: each paper finding whose axis has both
    values among the finetunes (pairs that differ only in it), else the method headline."""
    pruned = [r for r in rows if not r["dense"] and r["stage"] == "finetune"]
    out = []
    for axis, (first, second) in PAPER_DIRECTION.items():
        if {repr(r["axes"].get(axis)) for r in pruned} != {repr(first), repr(second)}:
            continue
        groups: dict[tuple, dict] = {}
        for r in pruned:
            key = (r["seed"], repr(sorted((k, repr(v)) for k, v in r["axes"].items() if k != axis)))
            groups.setdefault(key, {})[repr(r["axes"][axis])] = r
        kind = "equivalent" if axis == "selector" else "better"
        for metric in metrics:
            diffs = [
                (g[repr(first)]["seed"], g[repr(first)][metric] - g[repr(second)][metric])
                for g in groups.values()
                if len(g) == 2 and None not in (g[repr(first)][metric], g[repr(second)][metric])
            ]
            out.append(
                Comparison(
                    f"{axis}: {first} vs {second} ({metric})",
                    kind,
                    _per_seed(diffs),
                    lambda axes, a=axis, v=(first, second): axes.get(a) in v,
                )
            )
    methods = {r["axes"].get(METHOD_AXIS) for r in pruned}
    prior = sorted(m for m in methods if m in PRESETS and PRESETS[m].prior)
    if not out and OURS in methods and prior:
        for metric in ("d_box_ap", "d_mask_ap"):
            by_seed: dict[Any, dict[str, list[float]]] = {}
            for r in pruned:
                if r[metric] is not None and r["axes"].get(METHOD_AXIS) in (OURS, *prior):
                    by_seed.setdefault(r["seed"], {}).setdefault(r["axes"][METHOD_AXIS], []).append(r[metric])
            values = {
                s: math.fsum(v[OURS]) / len(v[OURS])
                - math.fsum(math.fsum(v[m]) / len(v[m]) for m in prior if m in v) / sum(m in v for m in prior)
                for s, v in by_seed.items()
                if OURS in v and any(m in v for m in prior)
            }
            out.append(
                Comparison(
                    f"headline: {OURS} vs {', '.join(prior)} ({metric})",
                    "better",
                    values,
                    lambda axes, ms=(OURS, *prior): axes.get(METHOD_AXIS) in ms,
                )
            )
    return out


def judge(comparison: Comparison, alpha: float, margin: float) -> dict:
    """Verdict of one comparison at level ``1 - alpha`` over its per-seed values."""
    values = list(comparison.values.values())
    base = {"name": comparison.name, "seeds": len(values)}
    if len(values) < 2:
        return {**base, "verdict": "inconclusive", "low": None, "high": None, "reason": "fewer than 2 seeds"}
    ci = t_interval(values, alpha)
    if comparison.kind == "better" and ci.low > 0:
        verdict, reason = "reproduced", "interval above 0"
    elif comparison.kind == "better" and ci.high < 0:
        verdict, reason = "contradicted", "interval below 0"
    elif -margin <= ci.low and ci.high <= margin:
        verdict = "reproduced" if comparison.kind == "equivalent" else "equivalent"
        reason = f"interval within ±{margin:g}"
    elif comparison.kind == "equivalent" and (ci.low > margin or ci.high < -margin):
        verdict, reason = "contradicted", f"interval outside ±{margin:g}"
    else:
        verdict, reason = (
            "inconclusive",
            "interval includes 0" if comparison.kind == "better" else (f"interval crosses ±{margin:g}"),
        )
    return {**base, "verdict": verdict, "mean": ci.mean, "low": ci.low, "high": ci.high, "reason": reason}


def _with_parents(needed: set[str], specs: list[RunSpec]) -> list[RunSpec]:
    """The ``needed`` runs of ``specs`` and their dense parents."""
    deps = {d for s in specs if s.run_id in needed for d in s.depends_on}
    return [s for s in specs if s.run_id in needed or s.run_id in deps]


def _spent_and_forecast(runs: list, todo: list[RunSpec]) -> tuple[float, float]:
    """Seconds the finished runs took, and the forecast of ``todo``: the mean wall time of the
    finished runs of each stage."""
    walls: dict[str, list[float]] = {}
    for r in runs:
        if r.state == "done" and (w := wall_s(r.status)) is not None:
            walls.setdefault(r.stage or "?", []).append(w)
    mean = {stage: math.fsum(ws) / len(ws) for stage, ws in walls.items()}
    return math.fsum(w for ws in walls.values() for w in ws), math.fsum(mean.get(s.stage, 0.0) for s in todo)


def _seed_grid(grid, seed: int):
    """The grid with one seed; a parent checkpoint shared by every seed serves the new one too."""
    schedule = grid.schedule
    parent = schedule["dense"].get("checkpoint")
    if parent is not None:
        if not schedule["dense"]["shared"]:
            return None  # one checkpoint per seed: there is none for a new seed
        first = next(iter(parent.values()))
        schedule = {**schedule, "dense": {**schedule["dense"], "checkpoint": {seed: first}}}
    return dataclasses.replace(grid, seeds=[seed], schedule=schedule)


def run_until_decided(
    grid_path,
    results_root="results",
    executor: str = "local",
    executor_options: dict | None = None,
    max_seeds: int = 10,
    budget_hours: float | None = None,
    margin: float = 0.5,
    console=None,
) -> dict:
    """Run the grid, then add seeds round by round until every comparison is decided (see the
    module); returns the log written to ``sequential.json``."""
    from rich.console import Console

    from .grid import GridError, load_grid
    from .spec import expand
    from .sweep import make_executor, prepare, run_sweep

    console = console or Console()
    grid = load_grid(grid_path)
    if max_seeds < len(grid.seeds):
        raise GridError(f"--max-seeds {max_seeds}: the grid already runs {len(grid.seeds)} seeds")
    run_sweep(grid_path, results_root, executor, executor_options, console=console)
    sweep_dir = Path(results_root).resolve() / grid.name
    runner = make_executor(executor, grid, executor_options)
    looks = max_seeds - len(grid.seeds) + 1
    alpha = ALPHA / looks
    log = read_json(sweep_dir / LOG_FILE) or {}
    log.update(alpha=ALPHA, looks=looks, level=1 - alpha, max_seeds=max_seeds, budget_hours=budget_hours)
    log.setdefault("rounds", [])
    log.pop("stopped", None)  # a re-run goes on from where the last one stopped
    # runs of earlier rounds that a killed sweep left unfinished
    added = [i for entry in log["rounds"] for i in entry.get("added", {}).get("runs", [])]
    specs = [RunSpec.from_json(read_json(sweep_dir / i / RUN_FILE)) for i in added]
    unfinished = [s for s in specs if not is_finished(sweep_dir / s.run_id)]
    if unfinished:
        console.print(f"resuming {len(unfinished)} unfinished run(s) of earlier rounds", highlight=False)
        runner.run(sweep_dir, sorted(unfinished, key=lambda s: s.stage != "dense"))
    while True:
        runs = scan_results(sweep_dir)
        seeds = sorted({r.seed for r in runs if r.seed is not None})
        verdicts = [(c, judge(c, alpha, margin)) for c in comparisons(_rows(sweep_dir))]
        open_ = [c for c, v in verdicts if v["verdict"] not in DECIDED]
        entry = {"round": len(log["rounds"]) + 1, "seeds": seeds, "verdicts": [v for _, v in verdicts]}
        stop = None
        if not verdicts:
            stop = "nothing to decide: no comparison of the paper's findings or methods in this grid"
        elif not open_:
            stop = "every comparison decided"
        elif len(seeds) >= max_seeds:
            stop = f"--max-seeds {max_seeds} reached"
        seed = max(seeds, default=-1) + 1
        new_grid = None if stop else _seed_grid(grid, seed)
        if not stop and new_grid is None:
            stop = "the parent is one checkpoint per seed: no parent for another seed"
        if not stop:
            specs = expand(new_grid)[0]
            needed = {s.run_id for s in specs if s.stage != "dense" and any(c.needs(s.axes) for c in open_)}
            keep = functools.partial(_with_parents, needed)
            todo = [s for s in keep(specs) if not is_finished(sweep_dir / s.run_id)]
            spent, forecast = _spent_and_forecast(runs, todo)
            entry["forecast_next_h"], entry["spent_h"] = round(forecast / 3600, 5), round(spent / 3600, 5)
            if budget_hours is not None and (spent + forecast) / 3600 > budget_hours:
                stop = (
                    f"budget: {spent / 3600:.3f} h spent + {forecast / 3600:.3f} h forecast for the next "
                    f"round > --budget {budget_hours:g} h"
                )
        if stop:
            entry["stopped"] = stop
            log["rounds"].append(entry)
            log["stopped"] = stop
            atomic_write_json(sweep_dir / LOG_FILE, log)
            for line in summary_lines(log):
                console.print(line, highlight=False)
            return log
        sweep = prepare(new_grid, results_root, gpus=runner.gpus_per_run, keep=keep)
        entry["added"] = {"seed": seed, "runs": [s.run_id for s in todo], "for": [c.name for c in open_]}
        log["rounds"].append(entry)
        atomic_write_json(sweep_dir / LOG_FILE, log)  # before running: a killed round is known
        console.print(
            f"round {entry['round']}: {len(open_)} comparison(s) undecided at {len(seeds)} seed(s); "
            f"adding seed {seed}: {len(todo)} run(s)",
            highlight=False,
        )
        runner.run(sweep_dir, sweep.runs)


def _fmt(v: dict) -> str:
    ci = f"[{v['low']:+.2f}, {v['high']:+.2f}]" if v.get("low") is not None else "no interval"
    return f"{v['name']}: {v['verdict']} on {v['seeds']} seed(s), interval {ci} ({v['reason']})"


def summary_lines(log: dict) -> list[str]:
    """Why the sweep stopped and each comparison's verdict with the seeds it rests on."""
    if not log.get("rounds"):
        return []
    last = log["rounds"][-1]
    stopped = log.get("stopped", "not yet (running, or killed: the same command continues)")
    lines = [
        f"--until-decided: {len(log['rounds'])} round(s), stopped: {stopped}; "
        f"intervals at {100 * log['level']:.2f} % per look ({log['looks']} looks at most: overall error "
        f"<= {100 * log['alpha']:g} % per comparison)"
    ]
    return lines + [f"  {_fmt(v)}" for v in last["verdicts"]]


def report_lines(root: Path) -> list[str]:
    """The summary of every ``--until-decided`` log under ``root`` (a sweep folder or a parent)."""
    root = Path(root)
    logs = [root / LOG_FILE] if (root / LOG_FILE).exists() else sorted(root.glob(f"*/{LOG_FILE}"))
    out = []
    for path in logs:
        out += [
            f"{path.parent.name}: {line}" if i == 0 else line
            for i, line in enumerate(summary_lines(read_json(path) or {}))
        ]
    return out
