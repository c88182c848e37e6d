"""Model commands: bench, weights, viz, doctor."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .main import MODELS, app, fail


@app.command(rich_help_panel=MODELS)
def bench(
    arch: str = typer.Option(
        "deit-small", help="ViT: deit-tiny|small|base, vit-base|large, dinov2-small|base|large."
    ),
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
    from ..axes import FAMILIES
    from ..bench import DTYPES, run_bench
    from ..models.blocks import SPARSE_MODES

    for value, allowed, hint in (
        (backbone, FAMILIES, "--backbone"),
        (dtype, DTYPES, "--dtype"),
        (sparse_mode, SPARSE_MODES, "--sparse-mode"),
    ):
        if value not in allowed:
            raise typer.BadParameter(f"{value!r}: use one of {', '.join(allowed)}", param_hint=hint)
    pruned, schedule = {}, {}
    if method is not None:
        from ..presets import backbone_args

        try:
            pruned = backbone_args(method, {"arch": arch})
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--method") from None
        schedule = {k: pruned.pop(k) for k in ("prune_layers", "keep_ratios") if k in pruned}
        rate = pruned.pop("rate")
        pruned.pop("arch", None)  # the preset's schedule is scaled to it; both models are built with it
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
        raise fail(e) from None


@app.command(rich_help_panel=MODELS)
def weights(
    path: Path = typer.Argument(
        ...,
        help="ImageNet ViT checkpoint: official DeiT / DeiT-III / MAE / DINOv2 .pth, timm .pth/.bin "
        "or .safetensors.",
    ),
    arch: str = typer.Option(
        "deit-small", "--arch", help="deit-tiny|small|base, vit-base|large, dinov2-small|base|large."
    ),
    backbone: str = typer.Option("plain", "--backbone", help="Backbone family: plain | adapter."),
    layer_scale: Optional[float] = typer.Option(
        None, "--layer-scale", help="LayerScale for a vit-* arch (DeiT-III files: 1e-6); dinov2-* have it."
    ),
) -> None:
    """Check a pretrained checkpoint before a long job: load it the way a run would.

    Lists what it covers (loaded / fresh / ignored tensors). Exit 1 when it would not load.
    """
    from rich.console import Console

    from ..models.weights_report import check_weights

    raise typer.Exit(check_weights(path, arch, Console(), backbone, layer_scale))


@app.command(rich_help_panel=MODELS)
def viz(
    run: Path = typer.Argument(
        ..., help="A run folder (its config.py and newest checkpoint) or a config file."
    ),
    image: Path = typer.Argument(..., help="The image to draw the kept tokens over."),
    out: Path = typer.Option(..., "--out", help="Output PNG: one panel per pruning layer."),
) -> None:
    """Token keep maps: the image with each pruning layer's kept tokens (pruned ones dimmed)."""
    from ..viz import run_viz

    raise typer.Exit(run_viz(run, image, out))


@app.command(rich_help_panel=MODELS)
def doctor() -> None:
    """Check the installed stack: versions, MMCV's compiled ops, CUDA, prunebench's models."""
    from ..doctor import run_doctor

    raise typer.Exit(run_doctor())
