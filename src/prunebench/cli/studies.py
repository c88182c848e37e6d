"""Commands of a study: plan, sweep, status, report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .main import STUDY, app, fail


def _grid_errors(fn, *args, **kwargs):
    """Call ``fn``; a GridError, missing file, not-a-folder or unwritable-folder error becomes one
    clear line and exit 2."""
    from ..grid import GridError

    try:
        return fn(*args, **kwargs)
    except (GridError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        raise fail(e) from None


@app.command(rich_help_panel=STUDY)
def sweep(
    grid: Path = typer.Argument(..., help="Grid YAML, e.g. ablations/grid.yaml or ablations/smoke.yaml."),
    results: Path = typer.Option(Path("results"), help="Results root; runs go to RESULTS/<name>/."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Write configs and show the plan; run nothing."),
    executor: str = typer.Option("local", help="local (this machine) or slurm (submitit)."),
    gpus: Optional[str] = typer.Option(None, help="Local GPU ids to use as device slots, e.g. 0,1,2,3."),
    max_parallel: int = typer.Option(
        1,
        help="Local CPU runs at once (ignored with --gpus); they share "
        "the cores, so their latency figures are not comparable.",
    ),
    gpus_per_job: Optional[int] = typer.Option(
        None, help="GPUs per run (local: slot size; slurm: GPUs per job)."
    ),
    partition: Optional[str] = typer.Option(
        None, help="Slurm partition (overrides the grid's slurm.partition)."
    ),
    time: Optional[str] = typer.Option(None, help="Slurm time limit, e.g. 24:00:00."),
    account: Optional[str] = typer.Option(None, help="Slurm account."),
    qos: Optional[str] = typer.Option(None, help="Slurm QOS."),
    cpus_per_task: Optional[int] = typer.Option(None, help="Slurm CPUs per task."),
    mem: Optional[str] = typer.Option(None, help="Slurm memory per node, e.g. 64G."),
    wait: bool = typer.Option(False, help="Slurm: block until every submitted job has ended."),
    detach: bool = typer.Option(
        False,
        help="Local: jobs go on if this command dies or is interrupted "
        "(without it they end with it); re-running the sweep waits for them.",
    ),
    redo: Optional[list[str]] = typer.Option(
        None,
        "--redo",
        metavar="RUN_ID",
        help="Train this run again (its metrics and checkpoints are deleted), with every run "
        "that depends on it; repeatable.",
    ),
    until_decided: bool = typer.Option(
        False,
        "--until-decided",
        help="After the grid's seeds, add one seed at a time to the runs an undecided comparison "
        "(paper finding or method headline) needs, until each is decided (sequential intervals, "
        "5 % overall error; README 'Reading a report').",
    ),
    max_seeds: int = typer.Option(10, "--max-seeds", help="--until-decided: stop at this many seeds."),
    budget: Optional[float] = typer.Option(
        None, "--budget", help="--until-decided: stop before a round that would pass this many device-hours."
    ),
    margin: float = typer.Option(0.5, "--margin", help="--until-decided: equivalence margin (AP points)."),
) -> None:
    """Run a whole ablation study: grid -> MMDetection configs -> train -> COCO eval -> latency.

    Finished runs are skipped and interrupted ones resume from their last checkpoint, so the
    same command continues a sweep that died. Results: RESULTS/<name>/<run_id>/metrics.json.
    """
    from ..sweep import run_sweep

    if executor == "local":
        options = dict(
            max_parallel=max_parallel,
            gpus=gpus.split(",") if gpus else None,
            gpus_per_job=gpus_per_job or 1,
            detach=detach,
        )
    else:
        options = dict(
            partition=partition,
            time=time,
            account=account,
            qos=qos,
            mem=mem,
            cpus_per_task=cpus_per_task,
            gpus_per_job=gpus_per_job,
            wait=wait,
        )
    if until_decided:
        from ..sequential import run_until_decided

        if executor == "slurm":  # each round's verdicts need its jobs' results
            options["wait"] = True
        _grid_errors(run_until_decided, grid, results, executor, options, max_seeds, budget, margin)
        return
    states = _grid_errors(
        run_sweep,
        grid,
        results,
        executor=executor,
        executor_options=options,
        dry_run=dry_run,
        redo=redo or (),
    )
    if any(s == "failed" for s in (states or {}).values()):
        raise typer.Exit(1)


@app.command(rich_help_panel=STUDY)
def plan(
    grid: Path = typer.Argument(..., help="Grid YAML, e.g. ablations/smoke.yaml."),
    results: Path = typer.Option(Path("results"), help="Results root; runs go to RESULTS/<name>/."),
    estimate: bool = typer.Option(
        False,
        "--estimate",
        help="Time a few training iterations of each distinct model on this machine and forecast "
        "the device-hours per stage (written to RESULTS/<name>/forecast.json).",
    ),
) -> None:
    """Expand a grid, write every run's config.py and print the study's size; nothing is trained."""
    from ..cost import plan_study

    _grid_errors(plan_study, grid, results, estimate)


@app.command(rich_help_panel=STUDY)
def status(
    results: Path = typer.Argument(..., help="A sweep folder (results/<sweep>) or a parent of several."),
) -> None:
    """One line per run: state (plus live Slurm state), metrics, error tail and log, or progress."""
    from rich.console import Console

    from ..status import print_status

    raise typer.Exit(print_status(results, Console(highlight=False)))


@app.command(rich_help_panel=STUDY)
def report(
    results: Path = typer.Argument(..., help="A sweep folder (results/<sweep>) or a parent of several."),
    sort: Optional[str] = typer.Option(
        None,
        "--sort",
        help="Sort by a column, best first (box_ap, "
        "mask_ap, latency_full, speedup_full, ...); prefix '-' to reverse.",
    ),
    where: list[str] = typer.Option(
        [],
        "--where",
        help="Keep runs with AXIS=VALUE; repeatable, e.g. --where pruned_tokens=preserve --where seed=0.",
    ),
    fmt: str = typer.Option("table", "--format", help="table | csv | markdown | json | latex."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the report to this file."),
    plot: Optional[Path] = typer.Option(
        None,
        "--plot",
        help="Also draw box/mask AP vs --x (marker: "
        "pruned tokens/reactivation, colour: rate/selector, dense line, Pareto "
        "front) to this .png, .pdf or .svg file.",
    ),
    x: str = typer.Option(
        "speedup",
        "--x",
        help="The plot's x-axis: speedup (the table's full speed-up, paired; dense at 1.0x), latency "
        "(dense latency / speed-up, ms) or gflops (mean per val image).",
    ),
    to: Optional[str] = typer.Option(
        None,
        "--to",
        help="Instead of a report, send the finished runs' results to a tracker: mlflow | wandb | "
        "tensorboard (runs sent before are skipped).",
    ),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="--to mlflow: the server or store (default: <results>/mlflow.db)."
    ),
    experiment: Optional[str] = typer.Option(
        None,
        "--experiment",
        help="--to mlflow: the experiment; --to wandb: the project (default: the sweep).",
    ),
    online: bool = typer.Option(False, "--online", help="--to wandb: send now (default: offline files)."),
    paper: bool = typer.Option(
        False,
        "--paper",
        help="Add a verdict on each of the paper's four findings "
        "and the best pruned cell beside the paper's headline numbers.",
    ),
    margin: float = typer.Option(
        0.5,
        "--margin",
        help="Equivalence margin (AP points) for the finding "
        "'MLP selector as good as gating': reproduced when the 95 % interval lies "
        "within ±MARGIN.",
    ),
) -> None:
    """Results -> tables: AP, change and speed-up vs dense, latency, keep ratio, GFLOPs.

    Per-axis effects with 95 % t-intervals; --paper adds the verdicts on the paper's findings.
    """
    from ..report import run_report
    from ..tracking.section import push_settings

    raise typer.Exit(
        run_report(
            results,
            fmt=fmt,
            out=out,
            plot=plot,
            where=where,
            sort=sort,
            paper=paper,
            margin=margin,
            x=x,
            to=to,
            tracking=push_settings(to, tracking_uri, experiment, online),
        )
    )
