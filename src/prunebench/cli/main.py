"""The Typer app the command modules register on, and the one-line error exit they share."""

from __future__ import annotations

import typer
from rich.markup import escape

app = typer.Typer(
    name="prunebench",
    help="Ablation runner for token pruning in ViT detectors: one YAML grid -> MMDetection "
    "configs -> train -> COCO eval -> latency -> tables.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Datasets: the built-in synthetic COCO-format set and real COCO subsets.", no_args_is_help=True
)
app.add_typer(data_app, name="data", rich_help_panel="Data")

STUDY, MODELS, RELEASED = "Studies", "Models and speed", "Released checkpoints"


def fail(error: BaseException) -> typer.Exit:
    """Print ``error`` as one red line on stderr; return the exit (status 2) to raise."""
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
    return typer.Exit(2)
