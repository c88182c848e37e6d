"""Grid -> RunSpecs: every run of a sweep with its axes, seed, stage, dependency and stable id.

The protocol follows the paper: one dense run per seed and per combination of the swept
non-pruning keys; every pruned cell of that combination finetunes from it (a dependency).
Run ids hash the experiment's meaning only (swept values, backbone, schedule, data identity,
seed): moving the dataset, changing workers, logging or Slurm resources keeps every id.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .axes import (
    BENCH_DEFAULTS,
    FAMILY_ARGS,
    KEEP_AXIS,
    METHOD_AXIS,
    PRUNING_AXES,
    id_prefix,
    impossible,
    keep_schedule,
)
from .grid import Grid, GridError
from .grid.parent import check_off_the_shelf
from .grid.schema import PRUNING_KEYS
from .parent import content_hash
from .presets import backbone_args, method_cell, preset

#: settings that change how a run is executed or logged, not what it learns or measures.
_NOT_MEANING = {
    "data": ("root", "cache_dir", "num_workers"),
    "schedule": ("checkpoint_interval", "log_interval"),
}
#: pruning settings: not the dense run's (its id does not change with them)
_DENSE_ONLY_BACKBONE = PRUNING_KEYS


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep. ``axes`` holds the swept values: the four pruning axes (None on the
    dense run) and any swept dotted config key. ``backbone_args`` are PrunedViT's keyword
    arguments, ``schedule`` this run's stage (length, lr, weight decay, milestones) plus the
    shared schedule keys, ``overrides`` the dotted config keys applied last."""

    run_id: str
    sweep: str
    stage: str  # "dense" or "finetune"
    backbone: str
    seed: int
    axes: dict[str, Any]
    depends_on: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)
    backbone_args: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    dense_schedule: dict[str, Any] = field(default_factory=dict)

    @property
    def trains(self) -> bool:
        """False for a run evaluated without training: a checkpoint parent, an off-the-shelf cell."""
        return self.schedule.get("iters", self.schedule.get("epochs")) != 0

    def to_json(self) -> dict:
        return {**asdict(self), "depends_on": list(self.depends_on)}

    @classmethod
    def from_json(cls, data: dict) -> RunSpec:
        return cls(**{**data, "depends_on": tuple(data.get("depends_on", ()))})


def _matches(cell: dict, point: dict) -> bool:
    return all(cell.get(k) == v for k, v in point.items() if k != "name")


def _digest(payload: dict) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:6]


def cells(grid: Grid) -> tuple[list[tuple[str | None, dict]], list[tuple[dict, str]]]:
    """The grid's (name, cell) points to run and the (cell, reason) points left out."""
    kept, excluded = [], []
    for values in itertools.product(*grid.axes.values()):
        cell = method_cell(dict(zip(grid.axes, values)))
        reason = impossible(cell) or (
            "matched an `exclude` entry" if any(_matches(cell, p) for p in grid.exclude) else None
        )
        if reason:
            excluded.append((cell, reason))
        else:
            kept.append((None, cell))
    for point in grid.include:
        cell = {k: grid.axes[k][0] for k in grid.axes}
        cell = method_cell({**cell, **{k: v for k, v in point.items() if k != "name"}})
        if impossible(cell):
            raise GridError(
                f"{grid.path}: include: {point}: {impossible(cell)}. Fix: change one of the two values"
            )
        kept.append((point.get("name"), cell))
    return kept, excluded


def resolve(grid: Grid, cell: dict) -> tuple[dict, dict, dict]:
    """Backbone, schedule and dotted overrides of one cell: the grid's sections with the
    ``per_value`` settings of the cell's values applied."""
    backbone, schedule = copy.deepcopy(grid.backbone), copy.deepcopy(grid.schedule)
    overrides = dict(grid.overrides)
    if "model.backbone.arch" in cell:
        backbone["arch"] = cell["model.backbone.arch"]
    if "family" in cell:
        backbone["family"] = cell["family"]
    for axis, by_value in grid.per_value.items():
        for value, settings in by_value:
            if cell.get(axis) != value:
                continue
            for key, v in settings.items():
                section, _, rest = key.partition(".")
                if section == "backbone":
                    backbone[rest] = v
                elif section == "schedule":
                    stage, _, leaf = rest.partition(".")
                    if stage in ("dense", "finetune") and leaf:
                        schedule[stage][leaf] = v
                    elif stage in ("dense", "finetune"):
                        schedule[stage].update(v)
                    else:
                        schedule[rest] = v
                else:
                    overrides[key] = v
    family = backbone.get("family", "plain")  # another family's own arguments do not apply
    backbone = {
        k: v for k, v in backbone.items() if all(k not in FAMILY_ARGS[f] for f in FAMILY_ARGS if f != family)
    }
    for stage in ("dense", "finetune"):  # a per-value length replaces the other unit
        st = schedule[stage]
        if "iters" in st and "epochs" in st:
            raise GridError(
                f"{grid.path}: per_value: schedule.{stage} of cell {cell} has both iters "
                "and epochs. Fix: set the same unit as schedule." + stage
            )
    return backbone, schedule, overrides


def _method_settings(method: str, args: dict, schedule: dict) -> tuple[dict, dict]:
    """A method's finetune: its backbone settings over the grid's, its keep-ratio loss weight and,
    with ``schedule.method_protocol``, its own optimisation protocol (``protocol``)."""
    p = preset(method)
    args = backbone_args(method, args)
    if p.keep_ratio_loss_weight is not None:
        schedule = {**schedule, "keep_ratio_loss_weight": p.keep_ratio_loss_weight}
    if schedule.get("method_protocol") and p.protocol:
        schedule = {**schedule, "protocol": dict(p.protocol)}
    return args, schedule


def _shared(schedule: dict) -> dict:
    """The schedule keys both stages share (warm-up, loss weight, amp, ...)."""
    return {k: v for k, v in schedule.items() if k not in ("dense", "finetune")}


def _meaning(section: str, mapping: dict) -> dict:
    return {k: v for k, v in mapping.items() if k not in _NOT_MEANING.get(section, ())}


def _backbone_identity(backbone: dict) -> dict:
    """The backbone as it matters for results: a checkpoint by file name, not path."""
    return (
        {**backbone, "pretrained": Path(backbone["pretrained"]).name}
        if backbone.get("pretrained")
        else backbone
    )


def parent_stage(path: str) -> dict:
    """The dense "stage" of a parent given as a checkpoint: no training, the file and its hash."""
    return {"iters": 0, "lr": 0.0, "weight_decay": 0.0, "checkpoint": path, "sha256": content_hash(path)}


def expand(grid: Grid) -> tuple[list[RunSpec], list[tuple[dict, str]]]:
    """All runs of the grid, dense runs first, and the (cell, reason) pairs left out."""
    kept, excluded = cells(grid)
    with_method = METHOD_AXIS in grid.axes or any(METHOD_AXIS in cell for _, cell in kept)  # `include`
    pruning = [*PRUNING_AXES, *([METHOD_AXIS] if with_method else [])]  # finetunes' own
    pruning += [KEEP_AXIS] if KEEP_AXIS in grid.axes else []
    pruning_keys = [k for k in grid.axes if k.removeprefix("model.backbone.") in _DENSE_ONLY_BACKBONE]
    pruning += pruning_keys  # e.g. a keep-ratio axis: the finetunes' own, not the dense parent's
    others_keys = [k for k in grid.axes if k not in pruning]
    for _, cell in kept:  # dotted keys that only `include` points set
        others_keys += [k for k in cell if k not in pruning and k not in others_keys]
    base_id = Path(grid.base).name
    data_id = _meaning("data", grid.data)
    bench = {**BENCH_DEFAULTS, **grid.bench}
    dense_runs: dict[tuple, RunSpec] = {}
    finetunes: dict[str, RunSpec] = {}
    tagged = [k for k in ("model.backbone.arch", "family") if len(grid.axes.get(k, [])) > 1]
    for seed in grid.seeds:
        for name, cell in kept:
            others = {k: cell[k] for k in others_keys if k in cell}
            dense_bb, dense_sched, dense_over = resolve(grid, others)  # pruning values: finetunes only
            backbone, schedule, overrides = resolve(grid, {**others, **{k: cell.get(k) for k in pruning}})
            common = _shared(dense_sched)
            arch = backbone["arch"]
            tag = "".join(f"-{str(cell[k]).split('-')[-1]}" for k in tagged)
            dense_bb = {k: v for k, v in dense_bb.items() if k not in _DENSE_ONLY_BACKBONE}
            parent = dense_sched["dense"].get("checkpoint")  # a parent given as a file: not trained
            dense_stage = parent_stage(parent[seed]) if parent else dense_sched["dense"]
            shared = parent and dense_sched["dense"]["shared"]  # one file for every seed
            dense_payload = {
                "base": base_id,
                "backbone": _backbone_identity(dense_bb),
                "data": data_id,
                "schedule": (
                    {"sha256": dense_stage["sha256"]}
                    if parent
                    else {**_meaning("schedule", common), **dense_stage}
                ),
                "overrides": {**dense_over, **others},
                "axes": others,
                "seed": None if shared else seed,
            }
            dkey = json.dumps(dense_payload, sort_keys=True, default=str)
            if dkey not in dense_runs:
                seed_tag = "" if shared else f"-s{seed}"
                rid = f"dense{tag}{'-ckpt' if parent else ''}{seed_tag}-{_digest(dense_payload)}"
                dense_runs[dkey] = RunSpec(
                    rid,
                    grid.name,
                    "dense",
                    arch,
                    None if shared else seed,
                    {**dict.fromkeys(pruning), **others},
                    (),
                    {**dense_over, **others},
                    bench,
                    backbone_args={**dense_bb, "prune_layers": [], "keep_ratios": []},
                    schedule={**common, **dense_stage},
                )
            dense = dense_runs[dkey]
            axes = {**{k: cell.get(k) for k in pruning}, **others}
            ft_sched = {**_shared(schedule), **schedule["finetune"]}
            args = {
                **{k: v for k, v in backbone.items() if k != "pretrained"},
                **{k: cell[k] for k in PRUNING_AXES},
            }
            if METHOD_AXIS in cell:
                args, ft_sched = _method_settings(cell[METHOD_AXIS], args, ft_sched)
            if KEEP_AXIS in cell:
                args["keep_ratios"] = keep_schedule(args["keep_ratios"], cell[KEEP_AXIS])
                tag += f"-k{cell[KEEP_AXIS]:g}"
            check_off_the_shelf(grid, cell, ft_sched, cell.get(METHOD_AXIS))
            payload = {
                **dense_payload,
                "seed": seed,
                "dense": dense.run_id,
                "backbone": _backbone_identity(backbone),
                "schedule": _meaning("schedule", ft_sched),
                "axes": axes,
                **({METHOD_AXIS: args} if METHOD_AXIS in cell else {}),
            }
            rid = f"{name or cell.get(METHOD_AXIS) or id_prefix(cell)}{tag}-s{seed}-{_digest(payload)}"
            if rid not in finetunes:
                finetunes[rid] = RunSpec(
                    rid,
                    grid.name,
                    "finetune",
                    arch,
                    seed,
                    axes,
                    (dense.run_id,),
                    {**overrides, **others, **{k: cell[k] for k in pruning_keys}},
                    bench,
                    backbone_args=args,
                    schedule=ft_sched,
                    dense_schedule=dense.schedule,
                )
    return list(dense_runs.values()) + list(finetunes.values()), excluded
