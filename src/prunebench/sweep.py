"""A sweep: validate the grid, write every run folder (run.json + config.py), hand them to an executor."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from .cost import stage_of
from .grid import Grid, GridError, load_grid
from .grid.checks import check_backbones, check_data_sizes
from .results import (
    CONFIG_FILE,
    RUN_FILE,
    STATUS_FILE,
    RunLocked,
    atomic_write_json,
    read_json,
    write_status,
)
from .results.reset import reset_runs
from .spec import RunSpec, expand

HEADERS = {"pruned_tokens": "tokens", "reactivation": "react", "model.backbone.arch": "arch"}


@dataclass
class Sweep:
    grid: Grid
    runs: list[RunSpec]
    excluded: list[tuple[dict, str]]
    sweep_dir: Path


def resolve_data(grid: Grid) -> tuple[Path, list[str]]:
    """Dataset root and class names, checked before anything runs (a COCO root relative to the
    grid file, then the working directory); builds the synthetic set into its cache on first use.
    Raises GridError naming the grid's data key."""
    from .data import check_coco, ensure_synthetic

    data = grid.data
    if data["type"] == "coco":
        root = Path(data["root"]).expanduser()
        if not root.is_absolute():
            root = grid.path.parent / root if (grid.path.parent / root).exists() else root.resolve()
        classes = None
        for split in ("train", "val"):
            try:
                classes = check_coco(root, data[f"{split}_ann"], data[f"{split}_img"])
            except (FileNotFoundError, ValueError) as e:
                raise grid.error(
                    f"data.{split}_ann",
                    str(e),
                    "fix data.root / data.*_ann / data.*_img, "
                    "or build a subset with `prunebench data subset`",
                ) from None
        return root.resolve(), classes
    root = ensure_synthetic(data)
    return root, check_coco(root, "annotations/instances_val.json", "val/")


def check_results_root(results_root: str | Path) -> Path:
    """The results folder as an absolute path; raises NotADirectoryError (one clear line) when it,
    or the nearest part of it that exists, is not a folder."""
    root = Path(results_root).expanduser().resolve()
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == root else f" ({existing} is a file)"
        raise NotADirectoryError(
            f"--results {results_root}: not a folder{where}; pass a folder for the "
            "results (it is created if missing)"
        )
    return root


def _check_dotted_keys(grid: Grid, base: dict) -> None:
    """Every dotted key of ``overrides``, ``axes`` and ``per_value`` must be an argument of the
    component it sets (e.g. ``model.backbone.X`` of PrunedViT), before anything is written."""
    from .mmdet_config import unknown_argument

    keys = [(f"overrides.{k}", k) for k in grid.overrides]
    keys += [(f"axes.{k}", k) for k in grid.axes if "." in k]
    keys += [
        (f"per_value.{axis}.{value}.{k}", k)
        for axis, by_value in grid.per_value.items()
        for value, settings in by_value
        for k in settings
        if k.partition(".")[0] not in ("backbone", "schedule")
    ]
    for where, key in keys:
        problem = unknown_argument(base, key)
        if problem:
            raise grid.error(
                where, problem, "correct the key (grid sections such as backbone.* take the same names)"
            )


def _check_parents(grid: Grid, runs: list[RunSpec], configs: dict) -> None:
    """Each dense parent given as a checkpoint must fit its run's detector (arch, family, class
    count); raises GridError naming the file and the mismatch before anything is written."""
    from .parent import check_fits

    checked = set()
    for spec in runs:
        path = spec.schedule.get("checkpoint")
        model = configs[spec.run_id]["model"]
        if not path or (path, repr(model)) in checked:
            continue
        try:
            check_fits(model, path)
        except ValueError as e:
            raise grid.error(
                "schedule.dense.checkpoint",
                str(e),
                "give a checkpoint of the grid's detector, or set backbone:, data: (classes) to the file's",
            ) from None
        checked.add((path, repr(model)))


def prepare(
    grid_path: str | Path | Grid, results_root: str | Path = "results", gpus: int = 1, keep=None
) -> Sweep:
    """Validate the grid and write every run folder, each ``config.py`` for ``gpus`` GPUs per run
    (1: one GPU or a CPU process); nothing runs. ``keep``: a filter of the expanded runs (those
    of one ``--until-decided`` round). Raises GridError on bad input (NotADirectoryError when
    ``results_root`` is not a folder)."""
    from .mmdet_config import build_config, config_header, dump_config, load_base

    check_results_root(results_root)
    grid = grid_path if isinstance(grid_path, Grid) else load_grid(grid_path)
    runs, excluded = expand(grid)
    runs = keep(runs) if keep else runs
    sweep_dir = Path(results_root).resolve() / grid.name
    check_data_sizes(grid)
    data_root, classes = resolve_data(grid)
    base = load_base(grid)
    _check_dotted_keys(grid, base)
    configs = {}
    for spec in runs:  # build all configs first: a bad dotted key fails before anything is written
        try:
            configs[spec.run_id] = build_config(
                grid, spec, base, sweep_dir / spec.run_id, data_root, classes, gpus
            )
        except KeyError as e:
            raise GridError(
                f"{grid.path}: {e.args[0]}. Fix: correct the dotted key under `axes` or `overrides`"
            ) from None
    check_backbones(grid, configs, {spec.run_id: spec.axes for spec in runs})
    _check_parents(grid, runs, configs)
    try:  # only what changed is written: a finished sweep re-runs on a read-only folder
        sweep_dir.mkdir(parents=True, exist_ok=True)
        copy = sweep_dir / "grid.yaml"
        if not copy.is_file() or copy.read_bytes() != grid.path.read_bytes():
            shutil.copyfile(grid.path, copy)
        for spec in runs:
            run_dir = sweep_dir / spec.run_id
            run_dir.mkdir(exist_ok=True)
            if read_json(run_dir / RUN_FILE) != spec.to_json():
                atomic_write_json(run_dir / RUN_FILE, spec.to_json())
            cfg, path = configs[spec.run_id], run_dir / CONFIG_FILE
            dump_config(cfg, path, config_header(grid, spec, path, cfg))
            if not (run_dir / STATUS_FILE).exists():
                write_status(run_dir, "pending")
    except OSError as e:
        raise PermissionError(
            f"cannot write the run folders under {sweep_dir} ({e.strerror or e}: {e.filename}). Fix: "
            "make the results folder writable or pass another one with --results"
        ) from None
    return Sweep(grid, runs, excluded, sweep_dir)


def plan_table(sweep: Sweep) -> Table:
    """The expanded runs as a Rich table."""
    axes = list(sweep.grid.axes)
    table = Table(
        title=f"sweep {sweep.grid.name}: {len(sweep.runs)} runs -> {sweep.sweep_dir}", box=box.SIMPLE_HEAD
    )
    table.add_column("run id", no_wrap=True)
    for col in ["stage", *(HEADERS.get(a, a) for a in axes), "seed", "depends on", "state"]:
        table.add_column(col, overflow="fold")
    for spec in sweep.runs:
        state = (read_json(sweep.sweep_dir / spec.run_id / STATUS_FILE) or {}).get("state", "?")
        values = ["-" if spec.axes.get(a) is None else str(spec.axes[a]) for a in axes]
        table.add_row(
            spec.run_id,
            stage_of(spec),
            *values,
            "all" if spec.seed is None else str(spec.seed),
            ", ".join(spec.depends_on) or "-",
            state,
        )
    return table


def show_plan(sweep: Sweep, console: Console) -> None:
    """The plan table and the cells left out, with their reasons."""
    console.print(plan_table(sweep))
    reasons: dict[str, list[dict]] = {}
    for cell, reason in sweep.excluded:
        reasons.setdefault(reason, []).append(cell)
    for reason, cells in reasons.items():
        console.print(f"[yellow]left out {len(cells)} cell(s)[/]: {reason}", highlight=False)


def run_sweep(
    grid_path: str | Path,
    results_root: str | Path = "results",
    executor: str = "local",
    executor_options: dict | None = None,
    dry_run: bool = False,
    console: Console | None = None,
    redo: Sequence[str] = (),
) -> dict[str, str]:
    """Prepare the sweep, print the plan, then run it (unless ``dry_run``); returns run id -> state.
    ``executor_options``: the executor's keyword arguments; for ``slurm``, resources given (not
    None) override the grid's ``slurm:`` section. ``redo``: run ids trained again, with every run
    that depends on them (:func:`~prunebench.results.reset.reset_runs`)."""
    console = console or Console(width=None if Console().is_terminal else 160)
    check_results_root(results_root)
    grid = load_grid(grid_path)
    runner = make_executor(executor, grid, executor_options)  # bad options fail before anything is written
    sweep = prepare(grid, results_root, gpus=runner.gpus_per_run)
    if redo:
        try:
            again = reset_runs(sweep.sweep_dir, redo, [s.run_id for s in sweep.runs], dry_run)
        except (ValueError, RunLocked) as e:
            raise GridError(str(e)) from None
        done = "would reset (dry run)" if dry_run else "reset to pending"
        console.print(f"--redo: {len(again)} run(s) {done}: {', '.join(again)}", highlight=False)
    show_plan(sweep, console)
    if dry_run:
        console.print(f"dry run: configs written under {sweep.sweep_dir}, nothing run")
        return {}
    return runner.run(sweep.sweep_dir, sweep.runs)


def make_executor(name: str, grid: Grid, options: dict | None = None):
    """The executor ``name`` built from ``options``; Slurm resources are the grid's ``slurm:``
    section with the given options on top. Raises GridError naming the bad option."""
    from .executors import get_executor

    options = dict(options or {})
    if name == "slurm":
        from .executors.slurm.options import SlurmOptions

        given = {k: options.pop(k) for k in SlurmOptions.names() if k in options}
        try:
            SlurmOptions.create(**grid.slurm)
        except ValueError as e:
            raise grid.error("slurm", str(e), "correct the `slurm:` section (see README, Slurm)") from None
        try:
            options["options"] = SlurmOptions.merge(grid.slurm, given)
        except ValueError as e:
            raise GridError(f"Slurm option: {e}") from None
    try:
        return get_executor(name, **options)
    except ValueError as e:
        raise GridError(f"executor {name}: {e}") from None
