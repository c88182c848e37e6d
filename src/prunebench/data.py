"""Datasets: a built-in synthetic COCO-format set (coloured shapes with instance masks) for CPU
smoke runs, a real-COCO subset builder, and the COCO folder check run before any job starts."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "ellipse", "diamond")
_NOT_GENERATION = ("type", "cache_dir", "batch_size", "num_workers", "img_scale")  # grid `data` keys
_VERSION = 1  # bump when the generator's output changes, so caches are rebuilt
_NOISE = 8  # +- uniform pixel noise over the whole image
_MARGIN = 2  # minimum gap in pixels between two objects' masks
_TRIES = 30  # placement attempts per object before it is dropped


_PALETTE = np.array(
    [(230, 40, 40), (40, 210, 60), (60, 100, 250), (240, 220, 40), (220, 50, 220), (40, 220, 220)]
)  # per-class colours (colour_by_class), one per SHAPES entry


def _unit_polygon(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices (K, 2) of a shape inside the box [-1, 1]^2; class identity never depends on rng."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    if kind == "circle":
        return np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "ellipse":
        aspect = rng.uniform(0.4, 0.6)
        xy = np.stack([np.cos(t), aspect * np.sin(t)], 1)
        return xy[:, ::-1] if rng.random() < 0.5 else xy
    if kind == "star":
        a = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    return np.array(
        {
            "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
            "triangle": [(0, -1), (1, 1), (-1, 1)],
            "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
        }[kind],
        dtype=float,
    )


def _colour_far_from(bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    while True:
        c = rng.integers(0, 256, 3)
        if np.abs(c - bg).sum() >= 200:
            return c


def _render(rng: np.random.Generator, h: int, w: int, p: dict) -> tuple[np.ndarray, list[dict]]:
    """One image (H, W, 3) uint8 and its objects: category_id, polygon, RLE (as pycocotools sees
    the polygon, which is exactly the painted pixels)."""
    import cv2
    from pycocotools import mask as mask_utils

    bg = rng.integers(0, 80, 3) if p["colour_by_class"] else rng.integers(0, 256, 3)
    img = np.broadcast_to(bg, (h, w, 3)).astype(np.int16)
    blocked = np.zeros((h, w), np.uint8)  # pixels of placed objects, grown by _MARGIN
    kernel = np.ones((2 * _MARGIN + 1, 2 * _MARGIN + 1), np.uint8)
    objects = []
    for _ in range(int(rng.integers(1, p["max_objects"] + 1))):
        cat = int(rng.integers(p["num_classes"]))
        for _ in range(_TRIES):
            r = rng.uniform(p["min_size"], p["max_size"]) * min(h, w) / 2
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            poly = np.round(_unit_polygon(SHAPES[cat], rng) * r + (cx, cy), 2).ravel().tolist()
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
            m = mask_utils.decode(rle)
            if m.any() and not (m & blocked).any():
                break
        else:
            continue
        blocked |= cv2.dilate(np.ascontiguousarray(m), kernel)
        colour = (
            _PALETTE[cat] + rng.integers(-20, 21, 3) if p["colour_by_class"] else _colour_far_from(bg, rng)
        )
        img[m.astype(bool)] = colour
        objects.append(dict(category_id=cat + 1, polygon=poly, rle=rle))
    img += rng.integers(-_NOISE, _NOISE + 1, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8), objects


def synthetic_params(params: dict | None = None) -> dict:
    """Full generator keyword arguments from a (partial) grid `data` section; rejects unknown keys."""
    params = {k: v for k, v in (params or {}).items() if k not in _NOT_GENERATION}
    unknown = sorted(set(params) - set(SYNTH_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown synthetic data keys {unknown}; known: {sorted(SYNTH_DEFAULTS)}")
    p = {**SYNTH_DEFAULTS, **params}
    size = p["image_size"]
    p["image_size"] = tuple(int(s) for s in ((size, size) if isinstance(size, (int, float)) else size))
    if len(p["image_size"]) != 2 or min(p["image_size"]) < 16:
        raise ValueError(f"image_size must be (H, W) with sides >= 16, got {size!r}")
    if not 1 <= p["num_classes"] <= len(SHAPES):
        raise ValueError(
            f"num_classes must be 1..{len(SHAPES)} ({', '.join(SHAPES)}), got {p['num_classes']}"
        )
    if not 0 < p["min_size"] <= p["max_size"] <= 1:
        raise ValueError(
            f"need 0 < min_size <= max_size <= 1 (fractions of the shorter image side), "
            f"got {p['min_size']}, {p['max_size']}"
        )
    if p["max_objects"] < 1 or p["num_train"] < 0 or p["num_val"] < 0:
        raise ValueError("max_objects must be >= 1 and num_train/num_val >= 0")
    return p


def make_synthetic_coco(
    out_dir: Path | str,
    *,
    num_train: int = 200,
    num_val: int = 50,
    image_size: Sequence[int] = (128, 128),
    num_classes: int = 3,
    max_objects: int = 3,
    min_size: float = 0.25,
    max_size: float = 0.5,
    colour_by_class: bool = False,
    seed: int = 0,
) -> dict:
    """Write a deterministic COCO-format set of coloured shapes (class = shape kind, colours random,
    or one colour per class with `colour_by_class` for the easiest set; sizes are fractions of the
    shorter side, masks never overlap) into an empty or new `out_dir`:
    `train/*.png`, `val/*.png`, `annotations/instances_{train,val}.json`, `synthetic.json`.
    Returns the summary also written to `synthetic.json`: classes, params, and per split the
    numbers of images and annotations."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    p = synthetic_params(
        dict(
            num_train=num_train,
            num_val=num_val,
            image_size=image_size,
            num_classes=num_classes,
            max_objects=max_objects,
            min_size=min_size,
            max_size=max_size,
            colour_by_class=colour_by_class,
            seed=seed,
        )
    )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder for the synthetic set")
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    h, w = p["image_size"]
    classes = list(SHAPES[: p["num_classes"]])
    categories = [dict(id=i + 1, name=n, supercategory="shape") for i, n in enumerate(classes)]
    summary = dict(classes=classes, params={**p, "image_size": [h, w]})
    for split_id, split in enumerate(("train", "val")):
        (out / split).mkdir()
        images, anns = [], []
        for i in range(p[f"num_{split}"]):
            img, objects = _render(np.random.default_rng([p["seed"], split_id, i]), h, w, p)
            name = f"{i + 1:06d}.png"
            Image.fromarray(img).save(out / split / name, compress_level=1)
            images.append(dict(id=i + 1, file_name=name, height=h, width=w))
            for o in objects:
                anns.append(
                    dict(
                        id=len(anns) + 1,
                        image_id=i + 1,
                        category_id=o["category_id"],
                        bbox=[float(v) for v in mask_utils.toBbox(o["rle"])],
                        area=float(mask_utils.area(o["rle"])),
                        iscrowd=0,
                        segmentation=[o["polygon"]],
                    )
                )
        coco = dict(
            info=dict(description="prunebench synthetic shapes", version=str(_VERSION)),
            licenses=[],
            images=images,
            annotations=anns,
            categories=categories,
        )
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        summary[split] = dict(images=len(images), annotations=len(anns))
    (out / "synthetic.json").write_text(json.dumps(summary, indent=2))
    return summary


SYNTH_DEFAULTS: dict[str, Any] = {  # the generator's keyword defaults
    k: v.default
    for k, v in inspect.signature(make_synthetic_coco).parameters.items()
    if v.kind == v.KEYWORD_ONLY
}


def default_cache_root() -> Path:
    """`$PRUNEBENCH_CACHE`, else `~/.cache/prunebench`."""
    return Path(os.environ.get("PRUNEBENCH_CACHE") or "~/.cache/prunebench").expanduser()


def ensure_synthetic(params: dict | None = None, cache_root: Path | str | None = None) -> Path:
    """Root of the synthetic set for `params` (a grid `data` section; missing keys take defaults),
    generated once into `<cache_root>/synthetic-<hash>/` and reused. `cache_root` defaults to
    `params["cache_dir"]`, then `default_cache_root()`. Safe with concurrent callers: each
    generates into its own temp folder, which is renamed into place; the first rename wins."""
    p = synthetic_params(params)
    key = hashlib.sha1(json.dumps({**p, "version": _VERSION}, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_root or (params or {}).get("cache_dir") or default_cache_root()).expanduser()
    dest = root / f"synthetic-{key}"
    if dest.is_dir():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-synthetic-{key}-", dir=root))
    try:
        make_synthetic_coco(tmp, **p)
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def parse_size(text: str) -> tuple[int, int]:
    """`"128x96"` -> (128, 96) as (H, W); `"128"` -> (128, 128)."""
    try:
        parts = [int(s) for s in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise ValueError(f"size must look like 128x128 (HxW) or 128, got {text!r}")
    return (parts[0], parts[-1])


def _load_coco_json(path: Path) -> dict:
    try:
        coco = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-download or rebuild it") from None
    missing = [
        k
        for k in ("images", "annotations", "categories")
        if not isinstance(coco, dict) or not isinstance(coco.get(k), list)
    ]
    if missing:
        raise ValueError(
            f"{path} is not a COCO instances file: no {'/'.join(missing)} list; "
            "point it at annotations/instances_<split>.json"
        )
    return coco


def check_coco(root: Path | str, ann_file: Path | str, img_dir: Path | str) -> list[str]:
    """Check a COCO-format dataset before jobs start (`ann_file`, `img_dir` relative to `root`
    unless absolute). Returns the class names in category-id order. Raises FileNotFoundError or
    ValueError with a message naming the path and the fix."""
    coco = _checked_coco(root, ann_file, img_dir)
    return [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]


def _checked_coco(root: Path | str, ann_file: Path | str, img_dir: Path | str) -> dict:
    root = Path(root).expanduser()
    hint = "set data.root to your COCO folder or build a subset with `prunebench data subset --coco-root ...`"
    if not root.is_dir():
        raise FileNotFoundError(f"COCO root {root} not found; {hint}")
    ann, imgs = root / ann_file, root / img_dir
    if not ann.is_file():
        raise FileNotFoundError(f"annotation file {ann} not found; {hint}")
    if not imgs.is_dir():
        raise FileNotFoundError(f"image folder {imgs} not found; {hint}")
    coco = _load_coco_json(ann)
    if not coco["categories"]:
        raise ValueError(f"{ann} has no categories")
    _check_images(coco["images"], ann, imgs)
    _check_annotations(coco["annotations"], ann)
    return coco


def _check_images(images: list, ann: Path, imgs: Path) -> None:
    """Every image the annotation file lists is in the image folder (one listing of the folder)."""
    if not images:
        raise ValueError(f"{ann} lists no images; point data.*_ann at a non-empty split")
    if not all(isinstance(im, dict) and isinstance(im.get("file_name"), str) for im in images):
        raise ValueError(f"{ann}: an entry of `images` has no file_name; rebuild the annotation file")
    present = set(os.listdir(imgs))
    missing = [
        im["file_name"]
        for im in images
        if im["file_name"] not in present and not (imgs / im["file_name"]).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(images)} images of {ann} are not in {imgs} (first: "
            f"{missing[0]}); check that the image folder matches the annotation file"
        )


def _check_annotations(annotations: list, ann: Path) -> None:
    """Each annotation has what MMDetection's CocoDataset reads: image_id, category_id and a bbox
    of four numbers."""
    for i, a in enumerate(annotations):
        box = a.get("bbox") if isinstance(a, dict) else None
        lacking = [k for k in ("image_id", "category_id") if not isinstance(a, dict) or k not in a]
        if box is None or not isinstance(box, list) or len(box) != 4:
            lacking.append("bbox [x, y, w, h]")
        if lacking:
            raise ValueError(
                f"{ann}: annotation {i} (id {a.get('id') if isinstance(a, dict) else '?'}) lacks "
                f"{', '.join(lacking)}; COCO instances need them on every annotation (fix or drop it)"
            )


def coco_subset(
    coco_root: Path | str,
    split: str = "val2017",
    n: int = 500,
    seed: int = 0,
    *,
    out: Path | str,
    overwrite: bool = False,
) -> Path:
    """Write `out/annotations/instances_<split>.json` with `n` seeded random images of a COCO split
    and only their annotations (other top-level keys kept), and `out/<split>/` with symlinks to
    the original images. Other splits already in `out` are left alone. Returns `out`."""
    root, out = Path(coco_root).expanduser().resolve(), Path(out).expanduser()
    ann_rel, img_rel = f"annotations/instances_{split}.json", split
    coco = _checked_coco(root, ann_rel, img_rel)
    images = coco["images"]
    if not 0 < n <= len(images):
        raise ValueError(f"n={n} but {root / ann_rel} has {len(images)} images; use 1 <= n <= {len(images)}")
    picked = [images[i] for i in sorted(np.random.default_rng(seed).choice(len(images), n, replace=False))]
    missing = [im["file_name"] for im in picked if not (root / img_rel / im["file_name"]).exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} chosen images missing from {root / img_rel}, "
            f"e.g. {missing[0]}; check the COCO download"
        )
    out_ann, out_img = out / ann_rel, out / img_rel
    if out_ann.exists() or (out_img.exists() and any(out_img.iterdir())):
        if not overwrite:
            raise FileExistsError(
                f"{out_ann} or {out_img}/ already exists; pass --overwrite or another --out"
            )
        if out_img.exists() and not all(f.is_symlink() for f in out_img.iterdir()):
            raise FileExistsError(f"{out_img} holds real files, not a subset's symlinks; not overwriting it")
        shutil.rmtree(out_img, ignore_errors=True)
    ids = {im["id"] for im in picked}
    anns = [a for a in coco["annotations"] if a["image_id"] in ids]
    subset = {**coco, "images": picked, "annotations": anns}
    out_img.mkdir(parents=True, exist_ok=True)
    for im in picked:
        (out_img / im["file_name"]).symlink_to(root / img_rel / im["file_name"])
    out_ann.parent.mkdir(parents=True, exist_ok=True)
    out_ann.write_text(json.dumps(subset))
    return out
