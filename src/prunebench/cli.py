"""prunebench command line: thin Typer commands that parse arguments and call one function.

Heavy libraries (torch, MMDetection) are imported inside the functions that need them, so
``--help``, ``plan``, ``status`` and ``report`` start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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
app.add_typer(data_app, name="data")


@app.command()
def doctor() -> None:
    """Check the installed stack: versions, MMCV's compiled ops, CUDA, prunebench's models."""
    from .doctor import run_doctor

    raise typer.Exit(run_doctor())


@app.command()
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
        help="Also draw box/mask AP vs latency (marker: "
        "pruned tokens/reactivation, colour: rate/selector, dense line, Pareto "
        "front) to this .png, .pdf or .svg file.",
    ),
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
    """Results -> tables: AP, change and speed-up vs dense, latency, keep ratio, GFLOPs, per-axis
    effects with 95 % t-intervals; --paper adds the verdicts on the paper's findings."""
    from .report import run_report

    raise typer.Exit(
        run_report(results, fmt=fmt, out=out, plot=plot, where=where, sort=sort, paper=paper, margin=margin)
    )


@app.command()
def weights(
    path: Path = typer.Argument(
        ..., help="ImageNet DeiT checkpoint: official DeiT .pth, timm .pth/.bin or .safetensors."
    ),
    arch: str = typer.Option("deit-small", "--arch", help="deit-tiny | deit-small | deit-base."),
    backbone: str = typer.Option("plain", "--backbone", help="Backbone family: plain | adapter."),
) -> None:
    """Check a pretrained checkpoint before a long job: load it the way a run would and list what it
    covers (loaded / fresh / ignored tensors). Exit 1 when it would not load."""
    from rich.console import Console

    from .models.weights_report import check_weights

    raise typer.Exit(check_weights(path, arch, Console(), backbone))


@app.command()
def status(
    results: Path = typer.Argument(..., help="A sweep folder (results/<sweep>) or a parent of several."),
) -> None:
    """One line per run: state (plus live Slurm state), metrics, error tail and log, or progress."""
    from rich.console import Console

    from .status import print_status

    raise typer.Exit(print_status(results, Console(highlight=False)))


@app.command()
def viz(
    run: Path = typer.Argument(
        ..., help="A run folder (its config.py and newest checkpoint) or a config file."
    ),
    image: Path = typer.Argument(..., help="The image to draw the kept tokens over."),
    out: Path = typer.Option(..., "--out", help="Output PNG: one panel per pruning layer."),
) -> None:
    """Token keep maps: the image with each pruning layer's kept tokens (pruned ones dimmed)."""
    from .viz import run_viz

    raise typer.Exit(run_viz(run, image, out))


@app.command()
def zoo() -> None:
    """The paper's released checkpoints: arch, cell, schedule, paper AP and FPS, file names, links, and
    the exact convert / eval commands."""
    from rich.console import Console

    from .zoo import print_zoo

    print_zoo(Console())


@app.command()
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
    """Convert an official ViT-Adapter / SViT-Adapter Mask R-CNN checkpoint for prunebench: renamed, loaded
    strictly into the detector it needs, written with the backbone settings it needs (printed)."""
    from rich.console import Console

    from .convert import convert_checkpoint
    from .models.official import ConversionError

    try:
        convert_checkpoint(src, dst, arch, Console(highlight=False))
    except ConversionError as e:
        Console(stderr=True, highlight=False).print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None


@app.command("eval")
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
    dtype: str = typer.Option("fp32", "--dtype", help="Timing precision: fp32 | fp16 | bf16 (autocast)."),
    bench_images: int = typer.Option(20, "--bench-images", min=1, help="Val images timed (batch 1)."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed calls before timing."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed rounds over the images."),
) -> None:
    """Evaluate a checkpoint: COCO box/mask AP on the val images, achieved keep ratio, latency and FLOPs,
    into a run folder that `prunebench report` lists beside sweep runs."""
    from rich.console import Console

    from .axes import PRECISIONS
    from .evaluate import EvalError, run_eval
    from .models.official import ConversionError
    from .results import RunLocked

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
        Console(stderr=True, highlight=False).print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None


def _grid_errors(fn, *args, **kwargs):
    """Call ``fn``; print a GridError, missing file or not-a-folder error as one clear line and exit 2."""
    from rich.console import Console

    from .grid import GridError

    try:
        return fn(*args, **kwargs)
    except (GridError, FileNotFoundError, NotADirectoryError) as e:
        Console(stderr=True).print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def plan(
    grid: Path = typer.Argument(..., help="Grid YAML, e.g. ablations/smoke.yaml."),
    results: Path = typer.Option(Path("results"), help="Results root; runs go to RESULTS/<name>/."),
) -> None:
    """Expand a grid and write every run's config.py without running anything (= sweep --dry-run)."""
    from .sweep import run_sweep

    _grid_errors(run_sweep, grid, results, dry_run=True)


@app.command()
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
) -> None:
    """Run a whole ablation study: grid -> MMDetection configs -> train -> COCO eval -> latency.

    Finished runs are skipped and interrupted ones resume from their last checkpoint, so the
    same command continues a sweep that died. Results: RESULTS/<name>/<run_id>/metrics.json.
    """
    from .sweep import run_sweep

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
    states = _grid_errors(
        run_sweep, grid, results, executor=executor, executor_options=options, dry_run=dry_run
    )
    if any(s == "failed" for s in (states or {}).values()):
        raise typer.Exit(1)


@data_app.command("subset")
def data_subset(
    coco_root: Path = typer.Option(..., "--coco-root", help="COCO folder with annotations/ and <split>/."),
    out: Path = typer.Option(..., help="Folder for the subset (annotations/ + <split>/ of symlinks)."),
    split: str = typer.Option("val2017", help="COCO split, e.g. val2017 or train2017."),
    n: int = typer.Option(500, "--n", help="Number of images, chosen at random (seeded)."),
    seed: int = typer.Option(0, help="Random seed of the choice."),
    overwrite: bool = typer.Option(False, help="Replace this split if --out already holds it."),
) -> None:
    """Write a seeded random subset of a real COCO split: its annotations and image symlinks."""
    from .data import coco_subset

    try:
        root = coco_subset(coco_root, split, n, seed, out=out, overwrite=overwrite)
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {n} images of {split} to {root}; use it as data.root")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., help="New or empty folder for the dataset."),
    num_train: int = typer.Option(200, help="Training images."),
    num_val: int = typer.Option(50, help="Validation images."),
    size: str = typer.Option("128x128", help="Image size HxW (or one number for square images)."),
    classes: int = typer.Option(
        3, help="Number of shape classes (1-6: circle, square, triangle, star, ellipse, diamond)."
    ),
    max_objects: int = typer.Option(3, help="Most objects per image."),
    seed: int = typer.Option(0, help="Random seed; the same options give identical files."),
) -> None:
    """Write the built-in synthetic COCO-format set of coloured shapes with instance masks."""
    from .data import make_synthetic_coco, parse_size

    try:
        info = make_synthetic_coco(
            out,
            num_train=num_train,
            num_val=num_val,
            image_size=parse_size(size),
            num_classes=classes,
            max_objects=max_objects,
            seed=seed,
        )
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"wrote {info['train']['images']} train + {info['val']['images']} val images "
        f"({', '.join(info['classes'])}) to {out}"
    )


@app.command()
def bench(
    arch: str = typer.Option("deit-small", help="DeiT size: deit-tiny | deit-small | deit-base."),
    backbone: str = typer.Option(
        "plain",
        "--backbone",
        help="Backbone family: plain (DeiT + simple pyramid) | adapter (the paper's SViT-Adapter).",
    ),
    input_size: str = typer.Option(
        "800x1344", "--input-size", help="Size HxW of the random input (without --images)."
    ),
    images: Optional[Path] = typer.Option(
        None,
        "--images",
        help="Time real images instead: a folder "
        "of images or a COCO annotation file (its first --num-images "
        "images, through the config's test pipeline).",
    ),
    num_images: int = typer.Option(20, "--num-images", min=1, help="Images taken from --images."),
    batch: int = typer.Option(1, help="Images per forward."),
    warmup: int = typer.Option(2, help="Untimed calls per model and part before timing."),
    repeats: int = typer.Option(
        5, help="Timed rounds over the inputs (median, mean of the middle 50 % and p90 reported)."
    ),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N."),
    dtype: str = typer.Option("fp32", help="fp32 | fp16 | bf16 (autocast)."),
    rate: str = typer.Option("fixed", help="Pruned model's rate: fixed | dynamic."),
    method: Optional[str] = typer.Option(
        None,
        help="Time a method preset (svit, dynamicvit, evit, evo-vit, ats, ...) with its schedule and axes.",
    ),
    sparse_mode: str = typer.Option(
        "auto",
        "--sparse-mode",
        help="Pruned blocks at batch > 1 with "
        "per-image counts: auto (padded on CUDA, loop on CPU) | loop | padded.",
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
    backbone_only: bool = typer.Option(False, "--backbone-only", help="Skip the whole-detector timing."),
) -> None:
    """Latency and FLOPs: dense vs pruned (reference schedule) detector, side by side."""
    try:
        h, w = (int(v) for v in input_size.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(
            f"expected HxW, e.g. 800x1344, got {input_size!r}", param_hint="--input-size"
        ) from None
    from .axes import FAMILIES
    from .bench import DTYPES, run_bench
    from .models.blocks import SPARSE_MODES

    if backbone not in FAMILIES:
        raise typer.BadParameter(f"{backbone!r}: use one of {', '.join(FAMILIES)}", param_hint="--backbone")
    if dtype not in DTYPES:
        raise typer.BadParameter(f"{dtype!r}: use one of {', '.join(DTYPES)}", param_hint="--dtype")
    if sparse_mode not in SPARSE_MODES:
        raise typer.BadParameter(
            f"{sparse_mode!r}: use one of {', '.join(SPARSE_MODES)}", param_hint="--sparse-mode"
        )
    pruned, schedule = {}, {}
    if method is not None:
        from .presets import backbone_args

        try:
            pruned = backbone_args(method, {})
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--method") from None
        schedule = {k: pruned.pop(k) for k in ("prune_layers", "keep_ratios") if k in pruned}
        rate = pruned.pop("rate")
    try:
        run_bench(
            arch=arch,
            family=backbone,
            input_size=(h, w),
            batch=batch,
            warmup=warmup,
            repeats=repeats,
            device=device,
            rate=rate,
            json_out=str(json_out) if json_out else None,
            backbone_only=backbone_only,
            images=str(images) if images else None,
            num_images=num_images,
            dtype=dtype,
            sparse_mode=sparse_mode,
            pruned_args=pruned,
            **schedule,
        )
    except (FileNotFoundError, ValueError) as e:  # --images that hold no usable images
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
