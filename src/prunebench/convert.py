"""``prunebench convert``: an official checkpoint -> an MMEngine checkpoint of prunebench's Mask
R-CNN, written only once it has loaded strictly; and that detector's config, which ``eval``
builds too.

The output is ``{'meta': {'dataset_meta': {'classes': [...]}, 'prunebench': record},
'state_dict': {...}}``; ``record`` says which backbone the weights need (``backbone``: the
``PrunedViTAdapter`` arguments, ``cell``, ``num_classes``, the released model it is, where its
settings came from).
"""

from __future__ import annotations

import os
from pathlib import Path

from .configs import load_config
from .zoo import BY_NAME, eval_command

FIX = (
    "convert an official ViT-Adapter / SViT-Adapter Mask R-CNN checkpoint (`prunebench zoo`); "
    "for another model give the --arch / --cell it was trained with"
)


def detector_config(backbone: dict, num_classes: int):
    """prunebench's Mask R-CNN config (``configs/mask_rcnn_vit.py``) with a checkpoint record's
    backbone (a run's backbone arguments: ``family`` and the backbone's keyword arguments) and
    ``num_classes`` classes, built as a sweep builds its runs' configs."""
    from .mmdet_config import set_backbone

    cfg = load_config()
    set_backbone(cfg, backbone)
    cfg.model.roi_head.bbox_head.num_classes = num_classes
    cfg.model.roi_head.mask_head.num_classes = num_classes
    return cfg


def build_detector(cfg):
    """The detector of an MMDetection config (prunebench's models registered)."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    from . import models  # noqa: F401  (registers PrunedViTAdapter / PrunedMaskRCNN)

    init_default_scope(cfg.get("default_scope", "mmdet"))
    return MODELS.build(cfg.model)


def load_strictly(model, state: dict, path: str | Path) -> None:
    """Load ``state`` into ``model`` after checking that every key is there, none is left over and
    every shape fits (a ConversionError lists the keys otherwise)."""
    from .models.official import check_keys

    check_keys(state, model.state_dict(), path, FIX)
    model.load_state_dict(state, strict=True)


def first_names(names: list[str], n: int = 3) -> str:
    """The first ``n`` names, ``, ...`` when there are more."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def convert_checkpoint(src: Path, dst: Path, arch: str | None = None, console=None) -> dict:
    """Convert ``src``, load it strictly into the detector it needs, write ``dst``; print what it
    is and how to evaluate it. Returns the record. Raises ConversionError on bad input."""
    import torch
    from rich.console import Console
    from rich.markup import escape

    from .models.official import convert_official, mark_trained

    console = console or Console(highlight=False)
    converted = convert_official(src, arch)
    record = converted.record
    model = build_detector(detector_config(record["backbone"], record["num_classes"]))
    state = mark_trained(converted.state_dict, model.state_dict())
    load_strictly(model, state, src)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    torch.save({"meta": converted.meta, "state_dict": state}, tmp)
    os.replace(tmp, dst)

    bb = record["backbone"]
    released = BY_NAME.get(record["zoo"] or "")
    classes = converted.meta["dataset_meta"].get("classes") or []
    selectors = sum(k.endswith(".calibrated") for k in state)
    lines = [
        (
            "released model",
            f"{released.name} (paper: box {released.box_ap} / mask {released.mask_ap} AP, {released.fps} FPS)"
            if released
            else "not one of the released files",
        ),
        ("backbone", f"{bb['family']} (PrunedViTAdapter) {bb['arch']}, cell {record['cell']}"),
        ("prune layers", str(bb.get("prune_layers", []))),
        ("keep ratios", str(bb.get("keep_ratios", []))),
        ("settings from", record["settings_from"]),
        ("tensors", f"{len(state)} loaded strictly ({selectors} selectors marked trained)"),
        ("ignored", ", ".join(converted.ignored + [f"{k} (dropped)" for k in converted.dropped]) or "none"),
        ("classes", f"{record['num_classes']}" + (f" ({first_names(classes, 4)})" if classes else "")),
    ]
    console.print(f"converted {escape(str(src))} -> {escape(str(dst))}")
    for label, text in lines:
        console.print(f"  {label:<15}{escape(text)}", soft_wrap=True)
    console.print(f"next: {escape(eval_command(str(dst), record['cell']))}", soft_wrap=True)
    return record
