"""``prunebench eval``'s inputs: the checkpoint and the model it records (or ``--cell`` / ``--arch``
name), this evaluation's budget and selector inference, the validation data, the run id."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from ..axes import PRUNING_AXES, REFERENCE_LAYERS, REFERENCE_RATIOS, SELECTOR_INFERENCE, id_prefix, stages


class EvalError(ValueError):
    """Bad input to ``prunebench eval``; the message names the file or option and the fix."""


# --- the model ------------------------------------------------------------------------------


def parse_cell(name: str) -> dict | None:
    """The pruning axes of a cell name (``preserve-react-dyn-mlp``); None for ``dense``."""
    if name == "dense":
        return None
    cells = [dict(zip(PRUNING_AXES, values)) for values in product(*PRUNING_AXES.values())]
    known = {id_prefix(c): c for c in cells}
    if name not in known:
        raise EvalError(f"--cell {name!r}: unknown cell; use dense or one of {', '.join(sorted(known))}")
    return known[name]


def per_layer(given: list[float], trained: list[float]) -> list[float]:
    """Keep ratios per pruning layer from one per stage (stages of ``trained``) or one per layer."""
    groups = stages(trained)
    if len(given) == len(trained):
        return list(given)
    if len(given) == len(set(groups)):
        return [given[s] for s in groups]
    raise EvalError(
        f"--keep-ratios: {len(given)} values; give one per stage ({len(set(groups))} stages of "
        f"{trained}) or one per pruning layer ({len(trained)})"
    )


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """``(state_dict, meta)`` of an MMEngine checkpoint (``weights_only=True``)."""
    import torch

    from ..checkpoint import allow_mmengine_checkpoints

    if not path.is_file():
        raise EvalError(f"{path}: no such checkpoint. Fix: convert one first (`prunebench zoo` shows how)")
    allow_mmengine_checkpoints()
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise EvalError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise EvalError(
            f"{path}: no state_dict. Fix: pass an MMEngine checkpoint (`prunebench convert` writes one)"
        )
    if any("TransformerEncoderLayer" in k or "selective_modules" in k for k in state):
        raise EvalError(
            f"{path}: an official (MMDetection 2) checkpoint. Fix: convert it first: "
            f"prunebench convert {path} {path.with_suffix('.prunebench.pth')}"
        )
    return state, obj.get("meta") or {}


def model_record(state: dict, meta: dict, path: Path, cell: str | None, arch: str | None) -> dict:
    """The checkpoint's record of its model, or one built from ``cell`` and ``arch``."""
    from ..models.official_settings import check_arch

    record = meta.get("prunebench")
    run_dir = path.parent.parent if path.parent.name == "work_dir" else None
    if not record and run_dir is not None and (run_dir / "config.py").is_file():
        raise EvalError(
            f"{path}: a checkpoint of the sweep run {run_dir.name}, whose model (its width, "
            "schedule and selectors) only that run's config.py describes, not --cell / --arch. Fix: "
            f"its COCO metrics are in {run_dir / 'metrics.json'} (`prunebench report`); to test it "
            f"again, run MMDetection's `python tools/test.py {run_dir / 'config.py'} {path}`"
        )
    if arch is not None:
        check_arch(state, arch, path)
    if record:
        if cell is not None and cell != record["cell"]:
            raise EvalError(f"{path}: records cell {record['cell']}, not {cell}. Fix: leave --cell out")
        return record
    if cell is None or arch is None:
        raise EvalError(
            f"{path}: records no model (not written by `prunebench convert`). Fix: name it, e.g. "
            "--cell preserve-react-dyn-mlp --arch deit-small (or --cell dense)"
        )
    if "backbone.spm.stem.0.weight" not in state:
        raise EvalError(f"{path}: no backbone.spm.*: not a ViT-Adapter (PrunedViTAdapter) checkpoint")
    axes = parse_cell(cell)
    backbone = {"family": "adapter", "arch": arch}
    if axes:
        backbone.update(axes, prune_layers=list(REFERENCE_LAYERS), keep_ratios=list(REFERENCE_RATIOS))
    n = int(state["roi_head.bbox_head.fc_cls.weight"].shape[0]) - 1
    return {"backbone": backbone, "cell": cell, "num_classes": n, "zoo": None}


def eval_backbone(
    record: dict, keep_ratios: list[float] | None, rate: str | None, selector_inference: str
) -> dict:
    """The record's backbone with this evaluation's budget, inference rule and sampling."""
    backbone = dict(record["backbone"])
    pruned = bool(backbone.get("prune_layers"))
    if not pruned and (keep_ratios or rate or selector_inference != "argmax"):
        raise EvalError(
            "a dense checkpoint has no selectors: --keep-ratios, --rate and --selector-inference do not apply"
        )
    if selector_inference not in SELECTOR_INFERENCE:
        raise EvalError(f"--selector-inference {selector_inference!r}: use {' or '.join(SELECTOR_INFERENCE)}")
    if rate is not None:
        if rate not in PRUNING_AXES["rate"]:
            raise EvalError(f"--rate {rate!r}: use fixed or dynamic")
        backbone["rate"] = rate
    if keep_ratios:
        if backbone["rate"] == "dynamic":
            raise EvalError(
                "--keep-ratios: a dynamic-rate model keeps the tokens whose keep logit wins, whatever the "
                "ratios. Fix: add --rate fixed to keep exactly these shares (top-k of its keep scores)"
            )
        backbone["keep_ratios"] = per_layer(keep_ratios, backbone["keep_ratios"])
    if pruned:
        backbone["selector_inference"] = selector_inference
    return backbone


# --- the data -------------------------------------------------------------------------------


@dataclass
class EvalData:
    """A validation set: the grid-style ``data`` section, its root and class names."""

    data: dict
    root: Path
    classes: list[str]

    @property
    def ann_file(self) -> Path:
        return self.root / (self.data.get("val_ann") or "annotations/instances_val.json")


def eval_data(spec: str) -> EvalData:
    """``synthetic`` (the built-in set, tested at its own size), a grid file (its ``data:``
    section) or a COCO root (``annotations/instances_val2017.json`` + ``val2017/``)."""
    from ..data import SYNTH_DEFAULTS, check_coco, ensure_synthetic
    from ..grid import COCO_DEFAULTS, GridError, load_grid
    from ..sweep import resolve_data

    path = Path(spec).expanduser()
    if spec == "synthetic":
        data = {"type": "synthetic", "img_scale": list(SYNTH_DEFAULTS["image_size"]), "num_workers": 0}
        root = ensure_synthetic(data)
        return EvalData(data, root, check_coco(root, "annotations/instances_val.json", "val/"))
    if path.is_file():
        try:
            grid = load_grid(path)
            root, classes = resolve_data(grid)
        except GridError as e:
            raise EvalError(str(e)) from None
        return EvalData(grid.data, root, classes)
    if path.is_dir():
        data = {"type": "coco", "root": str(path.resolve()), **COCO_DEFAULTS}
        try:
            classes = check_coco(path, data["val_ann"], data["val_img"])
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(f"--data {spec}: {e}") from None
        return EvalData(data, path.resolve(), classes)
    raise EvalError(
        f"--data {spec!r}: not 'synthetic', a grid file or a COCO folder (annotations/, val2017/)"
    )


def check_classes(meta: dict, record: dict, data: EvalData, path: Path) -> None:
    """The checkpoint's classes must be the dataset's (by name and order, as labels index them)."""
    theirs = list((meta.get("dataset_meta") or {}).get("classes") or [])
    if theirs == data.classes or (not theirs and record["num_classes"] == len(data.classes)):
        return
    from ..convert import first_names
    from ..zoo import COCO_ROOT

    named = f" ({first_names(theirs)})" if theirs else ""
    raise EvalError(
        f"{path}: detects {record['num_classes']} classes{named}, but {data.ann_file} has "
        f"{len(data.classes)} ({first_names(data.classes)}): its AP there would mean nothing. "
        f"Fix: evaluate it on the data it was trained for (COCO: --data {COCO_ROOT})"
    )


# --- the run folder -------------------------------------------------------------------------


def run_id(path: Path, axes: dict, seed: int, dtype: str, identity: dict) -> str:
    """Readable and stable: the checkpoint's name, what this evaluation changes, the seed, and a
    digest of the checkpoint file, the data and every setting."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", path.name.removesuffix(".pth").removesuffix(".prunebench"))
    tags = [axes["selector_inference"]] if axes.get("selector_inference") == "gumbel" else []
    if axes.get("keep_ratios"):
        tags.append("keep" + "-".join(axes["keep_ratios"].split(",")))
    tags += [dtype] if dtype != "fp32" else []
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return "-".join([stem, *tags, f"s{seed}", digest])
