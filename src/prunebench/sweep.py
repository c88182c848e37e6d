"""A sweep: validate the grid, write every run folder (run.json + config.py), hand them to an executor."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from .grid import Grid, GridError, RunSpec, expand, load_grid
from .results import CONFIG_FILE, RUN_FILE, STATUS_FILE, atomic_write_json, read_json, write_status

HEADERS = {"pruned_tokens": "tokens", "reactivation": "react", "model.backbone.arch": "arch"}
SYNTH_KEYS = ("num_train", "num_val", "image_size", "num_classes", "max_objects", "min_size",
              "max_size", "colour_by_class", "seed")


@dataclass
class Sweep:
    grid: Grid
    runs: list[RunSpec]
    sweep_dir: Path


def resolve_data(grid: Grid) -> tuple[Path, list[str]]:
    """Dataset root and class names; builds the synthetic set into its cache on first use."""
    from .data import check_coco, ensure_synthetic

    data = grid.data
    if data["type"] == "coco":
        return Path(data["root"]), data["val_classes"]
    params = {k: data[k] for k in SYNTH_KEYS if k in data}
    cache = Path(data.get("cache_dir") or os.environ.get("PRUNEBENCH_CACHE", "~/.cache/prunebench"))
    root = ensure_synthetic(params, cache.expanduser())
    return root, check_coco(root, "annotations/instances_val.json", "val/")


def prepare(grid_path: str | Path, results_root: str | Path = "results") -> Sweep:
    """Validate the grid and write every run folder; nothing runs. Raises GridError on bad input."""
    from .mmdet_config import build_config, dump_config, load_base

    grid = load_grid(grid_path)
    runs = expand(grid)
    sweep_dir = Path(results_root).resolve() / grid.name
    data_root, classes = resolve_data(grid)
    base = load_base(grid)
    configs = {}
    for spec in runs:  # build all configs first: a bad dotted key fails before anything is written
        try:
            configs[spec.run_id] = build_config(grid, spec, base, sweep_dir / spec.run_id, data_root, classes)
        except KeyError as e:
            raise GridError(f"{grid.path}: {e.args[0]}. Fix: correct the dotted key under `axes` or "
                            "`overrides`") from None
    sweep_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(grid.path, sweep_dir / "grid.yaml")
    for spec in runs:
        run_dir = sweep_dir / spec.run_id
        run_dir.mkdir(exist_ok=True)
        if read_json(run_dir / RUN_FILE) != spec.to_json():
            atomic_write_json(run_dir / RUN_FILE, spec.to_json())
        header = (f"MMDetection config of run {spec.run_id} (sweep {grid.name}, stage {spec.stage}), "
                  f"written by prunebench from {grid.path.name}.\n"
                  f"Train: python tools/train.py {run_dir / CONFIG_FILE}")
        dump_config(configs[spec.run_id], run_dir / CONFIG_FILE, header)
        if not (run_dir / STATUS_FILE).exists():
            write_status(run_dir, "pending")
    return Sweep(grid, runs, sweep_dir)


def plan_table(sweep: Sweep) -> Table:
    """The expanded runs as a Rich table."""
    axes = list(sweep.grid.axes)
    table = Table(title=f"sweep {sweep.grid.name}: {len(sweep.runs)} runs -> {sweep.sweep_dir}",
                  box=box.SIMPLE_HEAD)
    table.add_column("run id", no_wrap=True)
    for col in ["stage", *(HEADERS.get(a, a) for a in axes), "seed", "depends on", "state"]:
        table.add_column(col, overflow="fold")
    for spec in sweep.runs:
        state = (read_json(sweep.sweep_dir / spec.run_id / STATUS_FILE) or {}).get("state", "?")
        values = ["-" if spec.axes.get(a) is None else str(spec.axes[a]) for a in axes]
        table.add_row(spec.run_id, spec.stage, *values, str(spec.seed), ", ".join(spec.depends_on) or "-", state)
    return table


def run_sweep(grid_path: str | Path, results_root: str | Path = "results", executor: str = "local",
              executor_options: dict | None = None, dry_run: bool = False,
              console: Console | None = None) -> dict[str, str]:
    """Prepare the sweep, print the plan, then run it (unless ``dry_run``); returns run id -> state."""
    from .executors import get_executor

    console = console or Console(width=None if Console().is_terminal else 160)
    sweep = prepare(grid_path, results_root)
    console.print(plan_table(sweep))
    reasons: dict[str, list[dict]] = {}
    for cell, reason in sweep.grid.excluded:
        reasons.setdefault(reason, []).append(cell)
    for reason, cells in reasons.items():
        console.print(f"[yellow]left out {len(cells)} cell(s)[/]: {reason}", highlight=False)
    if dry_run:
        console.print(f"dry run: configs written under {sweep.sweep_dir}, nothing run")
        return {}
    options = dict(executor_options or {})
    if executor == "slurm":
        options = {**sweep.grid.slurm, **{k: v for k, v in options.items() if v is not None}}
    return get_executor(executor, **options).run(sweep.sweep_dir, sweep.runs)
