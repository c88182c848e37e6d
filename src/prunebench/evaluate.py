"""``prunebench eval``: a checkpoint of prunebench's Mask R-CNN (e.g. a converted released one) ->
a run folder like a sweep's (``run.json``, ``config.py``, ``status.json``, ``metrics.json`` with
``source: eval``), which ``prunebench report`` lists beside sweep runs.

The model is the one the checkpoint records (``prunebench convert`` writes the record), or the
one ``--cell`` / ``--arch`` name; it loads strictly. MMDetection's test loop computes COCO box and
mask AP on the validation images, the achieved keep ratio is recorded over them, and the detector
is timed as a job times it (the first val images, batch 1, ``dtype``), FLOPs included.
``selector_inference="gumbel"`` with a ``seed`` samples the selectors' decisions as the official
test does; ``keep_ratios`` evaluates a model at other budgets (one per stage or per layer).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from .axes import PRUNING_AXES, REFERENCE_LAYERS, REFERENCE_RATIOS, id_prefix, stages
from .results import (
    CONFIG_FILE,
    METRICS_FILE,
    RUN_FILE,
    WORK_DIR,
    atomic_write_json,
    is_finished,
    read_json,
    run_lock,
    write_status,
)

EVAL_SWEEP = "eval"
EVAL_LOG = "eval.log"  # the COCO evaluation's printed output
SELECTOR_INFERENCE = ("argmax", "gumbel")


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

    from .checkpoint import allow_mmengine_checkpoints

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
    from .models.official import check_arch

    record = meta.get("prunebench")
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
    backbone = {"type": "PrunedViTAdapter", "arch": arch}
    if axes:
        backbone.update(axes, prune_layers=list(REFERENCE_LAYERS), keep_ratios=list(REFERENCE_RATIOS))
    n = int(state["roi_head.bbox_head.fc_cls.weight"].shape[0]) - 1
    return {"family": "adapter", "backbone": backbone, "cell": cell, "num_classes": n, "zoo": None}


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
    from .data import SYNTH_DEFAULTS, check_coco, ensure_synthetic
    from .grid import COCO_DEFAULTS, GridError, load_grid
    from .sweep import resolve_data

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
    named = f" ({', '.join(theirs[:3])}, ...)" if theirs else ""
    raise EvalError(
        f"{path}: detects {record['num_classes']} classes{named}, but {data.ann_file} has "
        f"{len(data.classes)} ({', '.join(data.classes[:3])}, ...): its AP there would mean nothing. "
        "Fix: evaluate it on the data it was trained for (COCO: --data data/coco)"
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


def _progress_hook(progress, task):
    from mmengine.hooks import Hook

    class ValProgress(Hook):
        """Advances a progress bar by the images of each test batch."""

        def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            progress.advance(task, len(outputs or ()))

    return ValProgress()


def run_eval(
    checkpoint: Path,
    data: str = "synthetic",
    results: Path = Path("results"),
    name: str = EVAL_SWEEP,
    cell: str | None = None,
    arch: str | None = None,
    keep_ratios: list[float] | None = None,
    rate: str | None = None,
    selector_inference: str = "argmax",
    seed: int = 0,
    bench: dict | None = None,
    console=None,
) -> dict:
    """Evaluate ``checkpoint`` into ``results/name/<run id>/``; returns its metrics (those of an
    earlier identical evaluation when it is finished). Raises EvalError / ConversionError before
    anything is written when the input is bad."""
    from rich.console import Console

    from .spec import RunSpec

    console = console or Console(highlight=False)
    checkpoint = Path(checkpoint).expanduser().resolve()
    state, meta = read_checkpoint(checkpoint)
    record = model_record(state, meta, checkpoint, cell, arch)
    backbone = eval_backbone(record, keep_ratios, rate, selector_inference)
    dataset = eval_data(data)
    check_classes(meta, record, dataset, checkpoint)
    bench = {"images": 20, "warmup": 2, "repeats": 5, "dtype": "fp32", **(bench or {})}
    pruned = bool(backbone.get("prune_layers"))
    axes = {
        **{a: backbone.get(a) if pruned else None for a in PRUNING_AXES},
        "family": record["family"],
        "source": "eval",
        "selector_inference": selector_inference if pruned else None,
        "keep_ratios": ",".join(f"{r:g}" for r in keep_ratios) if keep_ratios else None,
    }
    stat = checkpoint.stat()
    identity = dict(
        checkpoint=[str(checkpoint), stat.st_size, stat.st_mtime_ns],
        data=[str(dataset.root), dataset.data.get("val_ann"), dataset.data.get("img_scale")],
        backbone=backbone,
        seed=seed,
        bench=bench,
    )
    run_dir = (
        Path(results).expanduser().resolve() / name / run_id(checkpoint, axes, seed, bench["dtype"], identity)
    )
    if is_finished(run_dir):
        console.print(f"already evaluated: {run_dir} (delete it to evaluate again)")
        return read_json(run_dir / METRICS_FILE)
    cfg = eval_config(backbone, record["num_classes"], dataset, checkpoint, run_dir, seed)
    model = _load_model(cfg, state, checkpoint)
    spec = RunSpec(
        run_id=run_dir.name,
        sweep=run_dir.parent.name,
        stage="finetune" if pruned else "dense",
        backbone=backbone["arch"],
        seed=seed,
        axes=axes,
        bench=bench,
        backbone_args=backbone,
    )
    as_released = not axes["keep_ratios"] and backbone.get("rate") == record["backbone"].get("rate")
    about = {
        "checkpoint": str(checkpoint),
        "zoo": record.get("zoo"),
        "as_released": as_released,
        "converted_from": record.get("converted_from"),
        "data": {"root": str(dataset.root), "ann_file": str(dataset.ann_file)},
        **{k: axes[k] for k in ("selector_inference", "keep_ratios")},
        "dtype": bench["dtype"],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        metrics = _run(cfg, model, spec, about, run_dir)
    _summary(metrics, run_dir, console)
    return metrics


def eval_config(
    backbone: dict, num_classes: int, dataset: EvalData, checkpoint: Path, run_dir: Path, seed: int
):
    """The evaluation's MMDetection config: the checkpoint's detector, the data's test loader and
    CocoMetric (box and segm), nothing to train."""
    from .convert import detector_config
    from .mmdet_config import _set_data

    cfg = detector_config(backbone, num_classes)
    _set_data(cfg, dataset.data, dataset.root, dataset.classes)
    for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler", "auto_scale_lr"):
        cfg[key] = None
    cfg.update(load_from=str(checkpoint), work_dir=str(run_dir / WORK_DIR), randomness=dict(seed=seed))
    return cfg


def _load_model(cfg, state: dict, checkpoint: Path):
    from .convert import build_detector, load_strictly

    try:
        model = build_detector(cfg)
    except ValueError as e:  # the backbone's own checks of the budget and cell
        raise EvalError(f"{checkpoint}: {e}") from None
    load_strictly(model, state, checkpoint)
    return model


def _run(cfg, model, spec, about: dict, run_dir: Path) -> dict:
    """Write the run folder, test and time; ``metrics.json`` at the end, status throughout."""
    from .mmdet_config import dump_config

    atomic_write_json(run_dir / RUN_FILE, spec.to_json())
    dump_config(
        cfg.to_dict(),
        run_dir / CONFIG_FILE,
        f"MMDetection config of eval run {spec.run_id}: {Path(about['checkpoint']).name} on "
        f"{about['data']['ann_file']}, written by prunebench eval.\n"
        f"Test: python tools/test.py {run_dir / CONFIG_FILE} {about['checkpoint']}",
    )
    log = str(run_dir / EVAL_LOG)
    write_status(run_dir, "running", phase="test", log=log, started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    try:
        metrics = _test_and_time(cfg, model, spec, run_dir)
    except BaseException as e:
        state = "pending" if isinstance(e, KeyboardInterrupt) else "failed"
        write_status(run_dir, state, error=f"{type(e).__name__}: {e}", log=log)
        raise
    metrics["eval"] = {**about, **metrics["eval"]}
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    write_status(run_dir, "done", box_ap=metrics["box_ap"], mask_ap=metrics["mask_ap"])
    return metrics


def _test_and_time(cfg, model, spec, run_dir: Path) -> dict:
    import torch
    from mmengine.runner import Runner
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .bench import measure_run
    from .job import _coco_metrics, _env, _keep_ratio_recorder

    runner = Runner(
        model=model,
        work_dir=cfg.work_dir,
        test_dataloader=cfg.test_dataloader,
        test_evaluator=cfg.test_evaluator,
        test_cfg=cfg.test_cfg,
        env_cfg=cfg.env_cfg,
        default_scope=cfg.default_scope,
        randomness=cfg.randomness,
        log_level="WARNING",
        cfg=cfg,
    )
    model = runner.model
    keep = _keep_ratio_recorder(model.backbone)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    t0 = time.time()
    with (
        open(run_dir / EVAL_LOG, "a") as log,
        contextlib.redirect_stdout(log),  # pycocotools' prints
        Progress(*columns, console=Console(stderr=True)) as progress,
    ):
        images = len(runner.test_dataloader.dataset)
        task = progress.add_task(f"COCO test of {images} val images", total=images)
        runner.register_hook(_progress_hook(progress, task), priority="VERY_LOW")
        torch.manual_seed(spec.seed)  # the Gumbel samples of selector_inference=gumbel
        raw = runner.test()
    test_time = time.time() - t0
    keep_stats = keep()
    write_status(run_dir, "running", phase="bench", log=str(run_dir / EVAL_LOG))
    model.eval()
    timed = measure_run(model, runner.test_dataloader.dataset, spec.bench, run_dir, None)
    return {
        "run_id": spec.run_id,
        "sweep": spec.sweep,
        "stage": spec.stage,
        "backbone": spec.backbone,
        "seed": spec.seed,
        "axes": spec.axes,
        "source": "eval",
        **_coco_metrics(raw),
        "latency_ms": timed["latency_ms"],
        "paired": None,
        "flops_g": timed["flops_g"],
        "keep_ratio": keep_stats,
        "checkpoint": str(cfg.load_from),
        "eval": {"images": images, "test_time_s": round(test_time, 1)},
        "env": _env(),
    }


def _summary(m: dict, run_dir: Path, console) -> None:
    lat, flops = m["latency_ms"], m["flops_g"]
    full = f"{flops['full']:.1f}" if flops.get("full") is not None else "—"
    console.print(
        f"box AP {m['box_ap']:.1f}  mask AP {m['mask_ap']:.1f}  keep ratio {m['keep_ratio']['mean']:.3f}  "
        f"latency full {lat['full']:.1f} ms / backbone {lat['backbone']:.1f} ms ({lat['device']}, "
        f"{lat['dtype']}, {lat['source']['count']} images)  GFLOPs full {full}"
    )
    console.print(
        f"wrote {run_dir / METRICS_FILE} ({m['eval']['images']} val images in {m['eval']['test_time_s']} s)"
    )
