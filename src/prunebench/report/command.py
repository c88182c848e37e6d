"""``prunebench report``: build the report and print or write it, the plot too."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .build import build_report
from .plot import PLOT_SUFFIXES, X_AXES, plot_pareto
from .render import FORMATS, render
from .terminal import print_table


def run_report(
    root: Path,
    fmt: str = "table",
    out: Path | None = None,
    plot: Path | None = None,
    where: Iterable[str] = (),
    sort: str | None = None,
    paper: bool = False,
    margin: float = 0.5,
    console=None,
    x: str = "speedup",
    to: str | None = None,
    tracking: dict | None = None,
) -> int:
    """Print or write the report (``paper``: with the verdicts on the paper's findings, ``margin``
    AP for the equivalence finding; ``x``: the plot's x-axis); with ``to`` (a tracker, its
    ``tracking`` settings as in a grid) push the finished runs there instead. Returns the exit
    code (2 on bad input)."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 1000)  # piped output: never squeeze the table
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if fmt not in FORMATS:
        err.print(f"[red]error:[/] --format {fmt!r}: choose one of {', '.join(FORMATS)}")
        return 2
    if plot is not None and Path(plot).suffix.lower() not in PLOT_SUFFIXES:
        err.print(
            f"[red]error:[/] --plot {escape(str(plot))}: the file name must end in {', '.join(PLOT_SUFFIXES)}"
        )
        return 2
    if to is not None:
        return _push(root, to, tracking, console, err)
    if x not in X_AXES:
        err.print(f"[red]error:[/] --x {x!r}: choose one of {', '.join(X_AXES)}")
        return 2
    try:
        report = build_report(Path(root), where, sort, paper=paper, margin=margin)
    except (FileNotFoundError, ValueError) as e:
        err.print(f"[red]error:[/] {escape(str(e))}")
        return 2
    if not report.rows and not report.not_done:
        err.print(
            f"[red]error:[/] no run folders under {escape(str(root))} (expected "
            "<sweep>/<run_id>/status.json); run `prunebench sweep GRID` first, or pass its --results folder"
        )
        return 2
    for warning in report.metric_warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            if fmt == "table":
                print_table(report, Console(file=f, width=1000, color_system=None))
            else:
                f.write(render(report, fmt))
        console.print(
            f"wrote {escape(str(out))}: {len(report.rows)} {'settings' if report.aggregated else 'runs'}, "
            f"{len(report.not_done)} not done",
            highlight=False,
        )
    elif fmt == "table":
        print_table(report, console)
    else:
        console.file.write(render(report, fmt))
    from ..sequential import report_lines

    for line in report_lines(Path(root)):  # seeds per verdict of an --until-decided sweep
        console.print(escape(line), highlight=False, soft_wrap=True)
    if plot is not None:
        n = plot_pareto(report, Path(plot), x)
        console.print(f"wrote {escape(str(plot))}: {n} points", highlight=False)
    return 0


def _push(root: Path, to: str, tracking: dict | None, console, err) -> int:
    from rich.markup import escape

    from ..tracking import TrackingError, push_results

    try:
        counts = push_results(Path(root), to, tracking)
    except (FileNotFoundError, TrackingError) as e:
        err.print(f"[red]error:[/] {escape(str(e))}")
        return 2
    console.print(
        f"{to}: {counts['sent']} finished runs sent, {counts['already']} already there", highlight=False
    )
    return 0
