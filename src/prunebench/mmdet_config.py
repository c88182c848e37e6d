"""RunSpec -> a plain MMDetection 3.x config file (``config.py``) per run.

The base (a built-in template or any MMDetection config) is loaded once per sweep; each run's
settings are applied as dotted keys and the result is written as ordinary Python assignments,
so MMDetection's own ``tools/train.py`` and ``tools/test.py`` can run it.
"""
from __future__ import annotations

import copy
import pprint
from pathlib import Path
from typing import Any

from .grid import Grid, RunSpec

TEMPLATE_DIR = Path(__file__).parent / "configs"
TEMPLATES = {"mask-rcnn-vit": "mask_rcnn_vit.py", "mask-rcnn-vit-cpu": "mask_rcnn_vit_cpu.py"}
_PRUNING_KWARGS = ("pruned_tokens", "reactivation", "rate", "selector")


def base_path(grid_file: Path, base: str) -> Path | None:
    """File of a grid's ``base``: a built-in template, or a config path relative to the grid file
    or the working directory; None when there is no such file."""
    if base in TEMPLATES:
        return TEMPLATE_DIR / TEMPLATES[base]
    return next((p for p in (grid_file.parent / base, Path(base)) if p.is_file()), None)


def load_base(grid: Grid) -> dict:
    """The grid's base config as a plain dict (``_base_`` inheritance resolved by MMEngine)."""
    from mmengine.config import Config

    return Config.fromfile(str(base_path(grid.path, grid.base))).to_dict()


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    """``cfg["a"]["b"] = value`` for ``key="a.b"``; the parent must exist (catches typos)."""
    *parents, leaf = key.split(".")
    node = cfg
    for i, part in enumerate(parents):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            have = sorted(node) if isinstance(node, dict) else []
            raise KeyError(f"config key {key!r}: {'.'.join(parents[:i + 1])!r} does not exist in the "
                           f"base config (keys there: {', '.join(map(str, have))})")
        node = node[part]
    node[leaf] = value


def checkpoint_name(stage: dict) -> str:
    """File MMEngine's CheckpointHook writes at the end of a stage's schedule."""
    return f"iter_{stage['iters']}.pth" if "iters" in stage else f"epoch_{stage['epochs']}.pth"


def build_config(grid: Grid, spec: RunSpec, base: dict, run_dir: Path, data_root: Path,
                 classes: list[str]) -> dict:
    """The full config dict of one run."""
    cfg = copy.deepcopy(base)
    sched, stage = grid.schedule, grid.schedule[spec.stage if spec.stage == "dense" else "finetune"]
    bb = {k: v for k, v in grid.backbone.items()}
    if spec.stage == "dense":
        bb.update(prune_layers=[], keep_ratios=[])
    else:
        bb.update({k: spec.axes[k] for k in _PRUNING_KWARGS})
    for key, value in bb.items():
        set_dotted(cfg, f"model.backbone.{key}", value)
    out_ch = cfg["model"]["backbone"].get("out_channels", 256)
    set_dotted(cfg, "model.neck.in_channels", [out_ch] * 4)
    if "keep_ratio_loss_weight" in sched:
        set_dotted(cfg, "model.keep_ratio_loss_weight", sched["keep_ratio_loss_weight"])
    _set_data(cfg, grid.data, data_root, classes)
    _set_schedule(cfg, sched, stage)
    if spec.stage == "finetune":
        dense_stage = grid.schedule["dense"]
        cfg["load_from"] = str(run_dir.parent / spec.depends_on[0] / "work_dir" / checkpoint_name(dense_stage))
    cfg["randomness"] = dict(seed=spec.seed, deterministic=False)
    cfg["work_dir"] = str(run_dir / "work_dir")
    for key, value in {**grid.overrides, **spec.overrides}.items():
        set_dotted(cfg, key, value)
    return cfg


def _set_data(cfg: dict, data: dict, root: Path, classes: list[str]) -> None:
    if data["type"] == "synthetic":
        files = {"train_ann": "annotations/instances_train.json", "train_img": "train/",
                 "val_ann": "annotations/instances_val.json", "val_img": "val/"}
    else:
        files = {k: data[k] for k in ("train_ann", "train_img", "val_ann", "val_img")}
    root_s = str(root).rstrip("/") + "/"
    metainfo = dict(classes=tuple(classes))
    for loader, split in (("train_dataloader", "train"), ("test_dataloader", "val")):
        ds = cfg[loader]["dataset"]
        ds.update(data_root=root_s, ann_file=files[f"{split}_ann"], metainfo=metainfo,
                  data_prefix=dict(img=files[f"{split}_img"]))
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
    roi = cfg["model"]["roi_head"]
    roi["bbox_head"]["num_classes"] = len(classes)
    roi["mask_head"]["num_classes"] = len(classes)


def _set_schedule(cfg: dict, sched: dict, stage: dict) -> None:
    by_epoch = "epochs" in stage
    length = stage["epochs"] if by_epoch else stage["iters"]
    if by_epoch:
        cfg["train_cfg"] = dict(type="EpochBasedTrainLoop", max_epochs=length, val_interval=length + 1)
    else:
        cfg["train_cfg"] = dict(type="IterBasedTrainLoop", max_iters=length, val_interval=length + 1)
    lr = stage.get("lr", sched.get("lr"))
    if lr is not None:
        cfg["optim_wrapper"]["optimizer"]["lr"] = lr
    if "weight_decay" in sched:
        cfg["optim_wrapper"]["optimizer"]["weight_decay"] = sched["weight_decay"]
    if "clip_grad" in sched:
        cfg["optim_wrapper"]["clip_grad"] = sched["clip_grad"] and dict(max_norm=sched["clip_grad"], norm_type=2)
    warmup = sched.get("warmup_iters", 1000 if by_epoch else max(1, length // 10))
    milestones = sorted({max(1, round(length * f)) for f in (0.75, 0.92)})
    cfg["param_scheduler"] = [
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=warmup),
        dict(type="MultiStepLR", by_epoch=by_epoch, begin=0, end=length, milestones=milestones, gamma=0.1),
    ]
    interval = sched.get("checkpoint_interval", 1 if by_epoch else max(1, length // 4))
    cfg["default_hooks"]["checkpoint"] = dict(type="CheckpointHook", by_epoch=by_epoch, interval=interval,
                                             max_keep_ckpts=2, save_last=True)
    if "log_interval" in sched:
        cfg["default_hooks"]["logger"]["interval"] = sched["log_interval"]
    cfg["log_processor"]["by_epoch"] = by_epoch


def dump_config(cfg: dict, path: Path, header: str) -> None:
    """Write ``cfg`` as a plain MMEngine config: one Python assignment per top-level key."""
    lines = [f"# {line}" for line in header.splitlines()] + [""]
    for key, value in cfg.items():
        lines.append(f"{key} = {pprint.pformat(value, width=100, sort_dicts=False)}")
    tmp = path.with_suffix(".py.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
