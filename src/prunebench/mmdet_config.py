"""RunSpec -> a plain MMDetection 3.x config file (``config.py``) per run.

The base (a built-in template or any MMDetection config) is loaded once per sweep; each run's
settings are applied as dotted keys and the result is written as ordinary Python assignments,
so MMDetection's own ``tools/train.py`` and ``tools/test.py`` can run it. As in MMDetection, the
written ``train_dataloader.batch_size`` is per GPU, for the GPU count the file is written for
(``GPUS_KEY``); the grid's ``data.batch_size`` is the run's total batch.
"""

from __future__ import annotations

import copy
import functools
import pprint
import uuid
from pathlib import Path
from typing import Any

from .axes import FAMILIES, FAMILY_ARGS, feature_channels
from .configs import base_path
from .configs.detectors import LEVELS, PRUNED_DETECTOR_ARGS, DetectorError, adapt_detector, set_num_classes
from .grid import Grid
from .spec import RunSpec
from .tracking.backends import add_vis_backends

GPUS_KEY = "train_gpus"  # top-level config key: the GPUs (training processes) the file is written for
AMP_INIT_SCALE = 512  # the official fp16 setting: dynamic loss scaling from 512


def load_base(grid: Grid) -> dict:
    """The grid's base config as a plain dict (``_base_`` inheritance resolved by MMEngine).

    Any MMDetection detector with a backbone and a neck works (two-stage, one-stage,
    query-based): it becomes ``PrunedDetector`` of that detector, its backbone prunebench's with
    the maps its neck takes (:func:`~prunebench.configs.detectors.adapt_detector`), and
    ``prunebench.models`` and the grid's ``imports`` (plug-in selectors) join its ``custom_imports``."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(base_path(grid.path, grid.base))).to_dict()
    try:
        cfg["model"] = adapt_detector(cfg.get("model") or {}, tuple(FAMILIES.values()))
    except DetectorError as e:
        raise grid.error("base", f"{grid.base!r}: {e.key}: {e}", e.fix) from None
    imports = cfg.setdefault("custom_imports", dict(imports=[], allow_failed_imports=False))
    for module in ("prunebench.models", "prunebench.hooks", *grid.imports):
        if module not in imports["imports"]:
            imports["imports"] = [*imports["imports"], module]
    for key in ("val_dataloader", "val_evaluator", "val_cfg"):  # each run is tested once at the end
        cfg[key] = None
    return cfg


def own_visualizer(cfg) -> None:
    """Give ``cfg``'s visualizer a name of its own before a Runner is built from it. MMEngine keeps
    visualizers process-wide by name and MMDetection's configs all say ``visualizer``, so a second
    Runner in one process (``plan --estimate``, tests) would take the first one's, with its folder."""
    visualizer = cfg.get("visualizer")
    if visualizer is not None:
        visualizer["name"] = f"visualizer-{uuid.uuid4().hex[:12]}"


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    """``cfg["a"]["b"] = value`` for ``key="a.b"``; the parent must exist (catches typos)."""
    *parents, leaf = key.split(".")
    node = cfg
    for i, part in enumerate(parents):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            have = sorted(node) if isinstance(node, dict) else []
            raise KeyError(
                f"config key {key!r}: {'.'.join(parents[: i + 1])!r} does not exist in the "
                f"base config (keys there: {', '.join(map(str, have))})"
            )
        node = node[part]
    node[leaf] = value


def unknown_argument(base: dict, key: str) -> str | None:
    """Why dotted ``key`` cannot apply: it sets an argument that the registered MMDetection
    component it lands in (a dict with ``type`` under ``model``) does not take; None when it may.
    Imports MMDetection and prunebench's models only for keys under ``model``."""
    *parents, leaf = key.split(".")
    node: Any = base
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if (
        parents[:1] != ["model"]
        or not isinstance(node, dict)
        or "type" not in node
        or leaf in ("type", "_delete_")
    ):
        return None
    kind = str(node["type"])
    if kind == "PrunedDetector":  # the pruning losses' own arguments, then its detector's
        if leaf in PRUNED_DETECTOR_ARGS:
            return None
        kind = str(node.get("detector"))
    params = _accepted_arguments(kind)
    if params is None or leaf in params:
        return None
    return (
        f"{kind} (at {'.'.join(parents)}) takes no argument {leaf!r}; it accepts: {', '.join(sorted(params))}"
    )


@functools.cache
def _accepted_arguments(type_name: str) -> frozenset[str] | None:
    """Keyword arguments of a registered model component, following ``**kwargs`` up its bases;
    None when the component is unknown or takes any keyword."""
    import inspect

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import prunebench.models  # noqa: F401  (registers PrunedViT / PrunedMaskRCNN)

    register_all_modules(init_default_scope=False)
    cls = MODELS.get(type_name)
    if cls is None:
        return None
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return frozenset(names)
    return None


def checkpoint_name(stage: dict) -> str:
    """File MMEngine's CheckpointHook writes at the end of a stage's schedule."""
    return f"iter_{stage['iters']}.pth" if "iters" in stage else f"epoch_{stage['epochs']}.pth"


def per_gpu_batch(total: int, gpus: int) -> int:
    """Samples per GPU (training process) that make up the total batch ``total`` on ``gpus``
    processes. Raises ValueError when ``total`` is not divisible by ``gpus``."""
    if total % gpus:
        raise ValueError(f"a total batch of {total} images per run is not divisible by {gpus} GPUs")
    return total // gpus


def build_config(
    grid: Grid,
    spec: RunSpec,
    base: dict,
    run_dir: Path,
    data_root: Path,
    classes: list[str],
    gpus: int = 1,
) -> dict:
    """The full config dict of one run, written for ``gpus`` GPUs (1: one GPU or a CPU process):
    the total batch (``data.batch_size`` or an override, else the base's
    ``train_dataloader.batch_size``) becomes ``train_dataloader.batch_size`` per GPU. Raises
    GridError naming ``data.batch_size`` when it does not divide."""
    cfg = copy.deepcopy(base)
    set_backbone(cfg, spec.backbone_args)
    set_param_groups(cfg, spec.backbone_args.get("family", "plain"), spec.schedule.get("protocol"))
    if "keep_ratio_loss_weight" in spec.schedule:
        set_dotted(cfg, "model.keep_ratio_loss_weight", spec.schedule["keep_ratio_loss_weight"])
    set_data(cfg, grid.data, data_root, classes)
    _set_schedule(cfg, spec.schedule, spec.stage)
    if spec.schedule.get("checkpoint"):  # a dense parent given as a file: evaluated, not trained
        cfg["load_from"] = spec.schedule["checkpoint"]
    if spec.stage == "finetune":
        cfg["load_from"] = spec.dense_schedule.get("checkpoint") or str(
            run_dir.parent / spec.depends_on[0] / "work_dir" / checkpoint_name(spec.dense_schedule)
        )
        if spec.schedule.get("distill"):  # DynamicViT's teacher terms, the dense parent as teacher
            set_dotted(cfg, "model.distill", dict(teacher=cfg["load_from"]))
    cfg["randomness"] = dict(seed=spec.seed or 0, deterministic=False)
    cfg["work_dir"] = str(run_dir / "work_dir")
    for key, value in spec.overrides.items():
        set_dotted(cfg, key, value)
    add_vis_backends(cfg, grid.tracking, spec, run_dir)  # the grid's `tracking:` trackers
    total = cfg["train_dataloader"]["batch_size"]
    try:
        cfg["train_dataloader"]["batch_size"] = per_gpu_batch(total, gpus)
    except ValueError as e:
        raise grid.error(
            "data.batch_size",
            str(e),
            f"set data.batch_size (the total batch per run) to a multiple of {gpus}, "
            "or run on another number of GPUs (--gpus-per-job / slurm.gpus_per_job)",
        ) from None
    # the configured lr is for this total batch: MMEngine's scaling would only change it on another GPU count
    cfg["auto_scale_lr"] = dict(enable=False, base_batch_size=total)
    cfg[GPUS_KEY] = gpus
    return cfg


def set_backbone(cfg: dict, args: dict) -> None:
    """The run's backbone: its family's registered class (``family``: ``plain`` | ``adapter``),
    the base's settings that family takes, then the run's arguments; the FPN reads its maps. The
    adapter's BatchNorms become SyncBatchNorm in distributed runs (MMEngine's ``sync_bn``)."""
    family = args.get("family", "plain")
    others = {k for f, keys in FAMILY_ARGS.items() if f != family for k in keys}
    backbone = {k: v for k, v in cfg["model"]["backbone"].items() if k not in others}
    backbone.update({k: v for k, v in args.items() if k != "family"}, type=FAMILIES[family])
    cfg["model"]["backbone"] = backbone
    maps = len(backbone.get("out_indices", LEVELS))
    cfg["model"]["neck"]["in_channels"] = [feature_channels(family, backbone)] * maps
    if family == "adapter":
        cfg["sync_bn"] = "torch"


def set_param_groups(cfg: dict, family: str, protocol: dict | None = None) -> None:
    """Weight decay and lr per parameter: no decay on a method's class token (as DeiT, EViT and
    Evo-ViT); for the adapter, decay off by name as the official ViT-Adapter configs
    (``custom_keys`` ``norm`` and ``bias``: the spatial prior module's BatchNorm weights,
    ``spm.*.1.weight``, are decayed); a method's ``protocol`` (:mod:`prunebench.models.protocol`)."""
    paramwise = cfg["optim_wrapper"].setdefault("paramwise_cfg", {})
    keys = paramwise.setdefault("custom_keys", {})
    keys.setdefault("cls_token", dict(decay_mult=0.0))
    if family == "adapter":
        paramwise.pop("norm_decay_mult", None)
        paramwise.pop("bias_decay_mult", None)
        for key in ("norm", "bias"):
            keys.setdefault(key, dict(decay_mult=0.0))
    if protocol:
        paramwise["selector_lr_mult"] = protocol["selector_lr_mult"]
        cfg["optim_wrapper"]["constructor"] = "SelectorLrConstructor"
        hooks = cfg.setdefault("custom_hooks", [])
        hooks.append(dict(type="FrozenStartHook", share=protocol["frozen_share"]))


def set_data(cfg: dict, data: dict, root: Path, classes: list[str]) -> None:
    """The dataloaders, evaluator and class count for a dataset (synthetic or COCO files under ``root``)."""
    if data["type"] == "synthetic":
        files = {
            "train_ann": "annotations/instances_train.json",
            "train_img": "train/",
            "val_ann": "annotations/instances_val.json",
            "val_img": "val/",
        }
    else:
        files = {k: data[k] for k in ("train_ann", "train_img", "val_ann", "val_img")}
    root_s = str(root).rstrip("/") + "/"
    metainfo = dict(classes=tuple(classes))
    for loader, split in (("train_dataloader", "train"), ("test_dataloader", "val")):
        ds = cfg[loader]["dataset"]
        ds.update(
            data_root=root_s,
            ann_file=files[f"{split}_ann"],
            metainfo=metainfo,
            data_prefix=dict(img=files[f"{split}_img"]),
        )
        if "batch_size" in data and split == "train":
            cfg[loader]["batch_size"] = data["batch_size"]
        if "num_workers" in data:
            cfg[loader]["num_workers"] = data["num_workers"]
            cfg[loader]["persistent_workers"] = data["num_workers"] > 0
        if "img_scale" in data:
            for step in ds["pipeline"]:
                if step["type"] == "Resize":
                    step["scale"] = tuple(data["img_scale"])
    cfg["test_evaluator"]["ann_file"] = root_s + files["val_ann"]
    set_num_classes(cfg["model"], len(classes))


def default_milestones(stage: str, length: int) -> list[int]:
    """The paper's lr steps when a grid gives none: dense 3x-style at 75 % and 92 % of the
    schedule (27, 33 of 36 epochs), finetune at 75 % (3 of 4, 4 of 6 epochs)."""
    fractions = (0.75, 0.92) if stage == "dense" else (0.75,)
    return sorted({min(length - 1, max(1, round(length * f))) for f in fractions if length > 1})


def default_warmup(by_epoch: bool, length: int) -> int:
    """Warm-up iterations when a grid gives none: MMDetection's 500 for epoch schedules, a tenth
    of an iteration schedule (0, no warm-up, below 10 iterations)."""
    return 500 if by_epoch else length // 10


def warmup_schedulers(warmup: int) -> list[dict]:
    """A linear warm-up over ``warmup`` iterations: iterations ``0 .. warmup-1`` ramp up from
    0.001 of the lr and iteration ``warmup`` trains at the grid's lr. MMEngine's ``LinearLR``
    reaches its end factor at step ``end - begin - 1``, hence ``end = warmup + 1`` (``end = 1``
    would hold 0.001 for the whole run). ``warmup = 0``: no warm-up scheduler at all."""
    if warmup <= 0:
        return []
    return [dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=warmup + 1)]


def _set_schedule(cfg: dict, sched: dict, stage: str) -> None:
    by_epoch = "epochs" in sched
    length = sched["epochs"] if by_epoch else sched["iters"]
    if by_epoch:
        cfg["train_cfg"] = dict(type="EpochBasedTrainLoop", max_epochs=length, val_interval=length + 1)
    else:
        cfg["train_cfg"] = dict(type="IterBasedTrainLoop", max_iters=length, val_interval=length + 1)
    optim = cfg["optim_wrapper"]
    optim["optimizer"]["lr"] = sched["lr"]
    optim["optimizer"]["weight_decay"] = sched["weight_decay"]
    if "clip_grad" in sched:
        optim["clip_grad"] = dict(max_norm=sched["clip_grad"], norm_type=2) if sched["clip_grad"] else None
    if sched.get("amp"):
        optim.update(type="AmpOptimWrapper", loss_scale=dict(init_scale=AMP_INIT_SCALE))
    warmup = sched.get("warmup_iters", default_warmup(by_epoch, length))
    milestones = sched.get("milestones") or default_milestones(stage, length)
    cfg["param_scheduler"] = warmup_schedulers(warmup) + [
        dict(type="MultiStepLR", by_epoch=by_epoch, begin=0, end=length, milestones=milestones, gamma=0.1),
    ]
    interval = sched.get("checkpoint_interval", 1 if by_epoch else max(1, length // 4))
    cfg["default_hooks"]["checkpoint"] = dict(
        type="CheckpointHook", by_epoch=by_epoch, interval=interval, max_keep_ckpts=2, save_last=True
    )
    if "log_interval" in sched:
        cfg["default_hooks"]["logger"]["interval"] = sched["log_interval"]
    cfg["log_processor"]["by_epoch"] = by_epoch
    hooks = [h for h in cfg.get("custom_hooks") or [] if h.get("type") != "DivergenceHook"]
    cfg["custom_hooks"] = [*hooks, dict(type="DivergenceHook", patience=3 if sched.get("amp") else 1)]


def config_header(grid: Grid, spec: RunSpec, path: Path, cfg: dict) -> str:
    """The comment at the top of a run's ``config.py``: what it is, the GPU count it is written
    for and the MMDetection commands (run from MMDetection's folder) that reproduce the run."""
    gpus, per_gpu = cfg[GPUS_KEY], cfg["train_dataloader"]["batch_size"]
    lines = [
        f"MMDetection config of run {spec.run_id} (sweep {grid.name}, stage {spec.stage}), "
        f"written by prunebench from {grid.path.name}.",
        f"Written for {f'{gpus} GPUs' if gpus > 1 else '1 GPU or a CPU process'} ({GPUS_KEY} = {gpus}): "
        f"train_dataloader.batch_size is per GPU ({per_gpu}),",
        f"{per_gpu * gpus} images per step in total; the lr is for that total (auto_scale_lr off).",
        "Reproduce the run from MMDetection's folder with",
    ]
    if gpus == 1:
        lines.append(f"    python tools/train.py {path}")
    lines += [
        f"    bash tools/dist_train.sh {path} {gpus}",
        "Another GPU count trains another total batch: write the file for it with",
        "`prunebench sweep GRID --gpus-per-job N` (Slurm: gpus_per_job).",
    ]
    return "\n".join(lines)


def dump_config(cfg: dict, path: Path, header: str) -> None:
    """Write ``cfg`` as a plain MMEngine config: one Python assignment per top-level key."""
    lines = [f"# {line}" for line in header.splitlines()] + [""]
    for key, value in cfg.items():
        lines.append(f"{key} = {pprint.pformat(value, width=100, sort_dicts=False)}")
    text = "\n".join(lines) + "\n"
    if path.is_file() and path.read_text() == text:
        return  # unchanged: nothing to write (a finished sweep may live in a read-only folder)
    tmp = path.with_suffix(".py.tmp")
    tmp.write_text(text)
    tmp.replace(path)
