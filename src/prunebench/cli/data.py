"""Dataset commands: data synth, data subset."""

from __future__ import annotations

from pathlib import Path

import typer

from .main import data_app, fail


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
    from ..data import make_synthetic_coco, parse_size

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
        raise fail(e) from None
    typer.echo(
        f"wrote {info['train']['images']} train + {info['val']['images']} val images "
        f"({', '.join(info['classes'])}) to {out}"
    )


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
    from ..data import coco_subset

    try:
        root = coco_subset(coco_root, split, n, seed, out=out, overwrite=overwrite)
    except (OSError, ValueError) as e:
        raise fail(e) from None
    typer.echo(f"wrote {n} images of {split} to {root}; use it as data.root")
