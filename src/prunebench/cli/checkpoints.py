"""Commands for the paper's released checkpoints: zoo, convert, eval."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..axes import BENCH_DEFAULTS
from .main import RELEASED, app, fail


@app.command(rich_help_panel=RELEASED)
def zoo() -> None:
    """The paper's released checkpoints, with the exact convert / eval commands.

    One row per model: arch, cell, schedule, paper box / mask AP and FPS, file name and link.
    """
    from rich.console import Console

    from ..zoo import print_zoo

    print_zoo(Console())


@app.command(rich_help_panel=RELEASED)
def convert(
    src: Path = typer.Argument(
        ..., help="Official checkpoint (mmcv 1.x runner file), e.g. pretrained/svit-adapter-s-0.33x.pth."
    ),
    dst: Path = typer.Argument(
        ..., help="MMEngine checkpoint to write, e.g. checkpoints/svit-adapter-s-0.33x.prunebench.pth."
    ),
    arch: Optional[str] = typer.Option(
        None,
        "--arch",
        help="The arch you expect (deit-tiny | deit-small | deit-base); an error names the file's.",
    ),
) -> None:
    """Convert an official ViT-Adapter / SViT-Adapter Mask R-CNN checkpoint for prunebench.

    Keys are renamed, loaded strictly into the detector the checkpoint needs and written with
    the backbone settings it needs (printed).
    """
    from rich.console import Console

    from ..convert import convert_checkpoint
    from ..models.official import ConversionError

    try:
        convert_checkpoint(src, dst, arch, Console(highlight=False))
    except ConversionError as e:
        raise fail(e) from None


@app.command("eval", rich_help_panel=RELEASED)
def evaluate(
    checkpoint: Path = typer.Argument(
        ..., help="Checkpoint of prunebench's Mask R-CNN (`prunebench convert` writes one)."
    ),
    data: str = typer.Option(
        "synthetic",
        "--data",
        help="synthetic (the built-in set), a grid file (its data: section) or a COCO root.",
    ),
    results: Path = typer.Option(
        Path("results"), "--results", help="Results root; the run goes to RESULTS/NAME/."
    ),
    name: str = typer.Option("eval", "--name", help="Folder under RESULTS for evaluation runs."),
    selector_inference: str = typer.Option(
        "argmax",
        "--selector-inference",
        help="argmax (deterministic) | gumbel (sampled, as the official test).",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Random seed (the Gumbel samples of --selector-inference gumbel)."
    ),
    keep_ratios: Optional[str] = typer.Option(
        None,
        "--keep-ratios",
        help="Other budgets: one keep ratio per stage (0.6,0.36,0.22) or per pruning layer.",
    ),
    rate: Optional[str] = typer.Option(
        None,
        "--rate",
        help="Inference rule instead of the checkpoint's: fixed (top-k at the keep ratios) | dynamic.",
    ),
    cell: Optional[str] = typer.Option(
        None,
        "--cell",
        help="For a checkpoint that records no model: its cell, e.g. preserve-react-dyn-mlp or dense.",
    ),
    arch: Optional[str] = typer.Option(
        None, "--arch", help="For a checkpoint that records no model: its arch."
    ),
    dtype: str = typer.Option(
        "fp32",
        "--dtype",
        help="Precision of the COCO test and the timing: fp32 | fp16 | bf16 (autocast of the whole "
        "detector; fp16 as the official test).",
    ),
    bench_images: int = typer.Option(
        BENCH_DEFAULTS["images"], "--bench-images", min=1, help="Val images timed (batch 1)."
    ),
    warmup: int = typer.Option(
        BENCH_DEFAULTS["warmup"], "--warmup", min=0, help="Untimed calls before timing."
    ),
    repeats: int = typer.Option(
        BENCH_DEFAULTS["repeats"], "--repeats", min=1, help="Timed rounds over the images."
    ),
) -> None:
    """Evaluate a checkpoint: COCO box/mask AP, achieved keep ratio, latency and FLOPs.

    Writes a run folder that `prunebench report` lists beside sweep runs.
    """
    from rich.console import Console

    from ..axes import PRECISIONS
    from ..evaluate import EvalError, run_eval
    from ..models.official import ConversionError
    from ..results import RunLocked

    if dtype not in PRECISIONS:
        raise typer.BadParameter(f"{dtype!r}: use one of {', '.join(PRECISIONS)}", param_hint="--dtype")
    try:
        ratios = [float(r) for r in keep_ratios.split(",")] if keep_ratios else None
    except ValueError:
        raise typer.BadParameter(
            f"expected numbers such as 0.6,0.36,0.22, got {keep_ratios!r}", param_hint="--keep-ratios"
        ) from None
    bench = dict(images=bench_images, warmup=warmup, repeats=repeats, dtype=dtype)
    try:
        run_eval(
            checkpoint,
            data,
            results,
            name,
            cell=cell,
            arch=arch,
            keep_ratios=ratios,
            rate=rate,
            selector_inference=selector_inference,
            seed=seed,
            bench=bench,
            console=Console(highlight=False),
        )
    except (EvalError, ConversionError, RunLocked) as e:
        raise fail(e) from None
