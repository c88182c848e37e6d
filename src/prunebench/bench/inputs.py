"""The detector to time and the batches to time it on: the Mask R-CNN of a config with a pruned
backbone of either family, and ``test_step`` batches of random images, of an MMEngine dataset (its
own pipeline) or of image files (a folder or a COCO annotation file, through the config's test
pipeline). MMEngine and MMDetection are imported only when called.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..configs import load_config

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def build_detector(
    arch: str = "deit-small", config: Optional[str] = None, family: str = "plain", **backbone_kwargs
) -> nn.Module:
    """The Mask R-CNN of ``config`` (default: prunebench's ``configs/mask_rcnn_vit.py``) with the
    backbone of ``family`` (``plain``: PrunedViT, ``adapter``: PrunedViTAdapter) built as
    ``(arch, **backbone_kwargs)``, as a sweep's config would build it."""
    from mmdet.registry import MODELS

    from .. import models  # noqa: F401  (registers the backbones and PrunedMaskRCNN)
    from ..mmdet_config import set_backbone

    cfg = load_config(config)
    set_backbone(cfg, {"family": family, "arch": arch, **backbone_kwargs})
    return MODELS.build(cfg.model)


def synthetic_data(input_hw: tuple[int, int], batch: int = 1, seed: int = 0) -> dict:
    """A ``test_step`` batch of random uint8 images (drawn from ``seed``) with their metainfo."""
    from mmdet.structures import DetDataSample

    H, W = input_hw
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=gen) for _ in range(batch)]
    samples = [
        DetDataSample(
            metainfo=dict(img_id=i, img_path="", ori_shape=(H, W), img_shape=(H, W), scale_factor=(1.0, 1.0))
        )
        for i in range(batch)
    ]
    return dict(inputs=inputs, data_samples=samples)


def _collate(items: Sequence[dict], batch: int) -> list[dict]:
    """Pipeline outputs -> ``test_step`` batches of up to ``batch`` images."""
    return [
        {
            "inputs": [it["inputs"] for it in items[i : i + batch]],
            "data_samples": [it["data_samples"] for it in items[i : i + batch]],
        }
        for i in range(0, len(items), batch)
    ]


def dataset_batches(dataset, count: int) -> list[dict]:
    """The first ``count`` samples of an MMEngine dataset (its own pipeline), one per batch."""
    n = min(count, len(dataset))
    if n < 1:
        raise ValueError("the validation set is empty: there are no images to time")
    return _collate([dataset[i] for i in range(n)], 1)


def _image_files(path: Path, count: int) -> tuple[list[Path], dict]:
    """The first ``count`` images of a folder (sorted by name) or of a COCO annotation file."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
        if not files:
            raise ValueError(
                f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}); pass a folder "
                "of images or a COCO annotation file"
            )
        return files, {"folder": str(path)}
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such folder or annotation file")
    try:
        names = [im["file_name"] for im in json.loads(path.read_text())["images"]][:count]
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f"{path}: not a COCO annotation file (a JSON object with an `images` list "
            "of {file_name, ...}); pass a folder of images or such a file"
        ) from None
    if not names:
        raise ValueError(f"{path}: its `images` list is empty")
    split = path.stem.split("_", 1)[-1]  # instances_val2017.json -> val2017
    roots = [path.parent, path.parent.parent / split, path.parent.parent]
    root = next((r for r in roots if (r / names[0]).is_file()), None)
    if root is None:
        raise FileNotFoundError(
            f"{path}: image {names[0]!r} not found in {', '.join(map(str, roots))}; "
            "use the COCO layout ROOT/annotations/instances_SPLIT.json + ROOT/SPLIT/"
        )
    return [root / n for n in names], {"ann_file": str(path)}


def file_batches(path: str | Path, cfg, count: int, batch: int = 1) -> tuple[list[dict], dict]:
    """Images of a folder or COCO annotation file through ``cfg``'s test pipeline (annotations not
    loaded): ``test_step`` batches and the ``source`` record."""
    from mmengine.dataset import Compose

    files, where = _image_files(Path(path), count)
    steps = [s for s in cfg.test_dataloader.dataset.pipeline if s["type"] != "LoadAnnotations"]
    pipeline = Compose(steps)
    items = [pipeline(dict(img_path=str(f), img_id=i)) for i, f in enumerate(files)]
    return _collate(items, batch), {"kind": "images", "count": len(files), **where}
