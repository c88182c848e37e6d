"""YAML -> validated Grid -> list of RunSpec (axes, seed, stage, dependencies, stable run id).

The protocol follows the paper: one dense run per seed and per combination of the swept
non-pruning keys; every pruned run of that combination finetunes from it (a dependency).
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

PRUNING_AXES: dict[str, tuple] = {
    "pruned_tokens": ("discard", "preserve"),
    "reactivation": (False, True),
    "rate": ("fixed", "dynamic"),
    "selector": ("mlp", "gating"),
}
ARCHS = ("deit-tiny", "deit-small", "deit-base")
SECTIONS = ("name", "base", "backbone", "data", "schedule", "bench", "axes", "exclude",
            "include", "seeds", "overrides", "slurm")
BACKBONE_KEYS = ("arch", "embed_dim", "depth", "num_heads", "prune_layers", "keep_ratios", "tau",
                 "out_channels", "drop_path_rate")
DATA_KEYS = {
    "synthetic": ("type", "num_train", "num_val", "image_size", "num_classes", "max_objects",
                  "min_size", "max_size", "colour_by_class",
                  "seed", "cache_dir", "batch_size", "num_workers", "img_scale"),
    "coco": ("type", "root", "train_ann", "train_img", "val_ann", "val_img", "batch_size",
             "num_workers", "img_scale"),
}
SCHEDULE_KEYS = ("dense", "finetune", "lr", "weight_decay", "warmup_iters", "checkpoint_interval",
                 "log_interval", "keep_ratio_loss_weight", "clip_grad")
STAGE_KEYS = ("iters", "epochs", "lr")
BENCH_KEYS = ("input_size", "warmup", "repeats")
SLURM_KEYS = ("partition", "gpus_per_job", "cpus_per_task", "mem", "time", "account", "qos",
              "sbatch_args")
REFERENCE_LAYERS = [3, 4, 5, 6, 7, 8, 9, 10, 11]
REFERENCE_RATIOS = [0.7, 0.7, 0.7, 0.49, 0.49, 0.49, 0.343, 0.343, 0.343]
_SHORT = {"reactivation": {True: "react", False: "noreact"},
          "rate": {"fixed": "fixed", "dynamic": "dyn"}}


class GridError(ValueError):
    """A grid file problem; the message names the file, the key (and line) and the fix."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep. ``axes`` holds the swept values: the four pruning axes (None on the
    dense run) and any swept dotted config key. ``overrides`` are the resolved dotted config keys
    the run's ``config.py`` is built with."""

    run_id: str
    sweep: str
    stage: str  # "dense" or "finetune"
    backbone: str
    seed: int
    axes: dict[str, Any]
    depends_on: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**asdict(self), "depends_on": list(self.depends_on)}

    @classmethod
    def from_json(cls, data: dict) -> "RunSpec":
        return cls(**{**data, "depends_on": tuple(data.get("depends_on", ()))})


@dataclass
class Grid:
    """A validated grid file. ``excluded`` lists (assignment, reason) of cells left out."""

    path: Path
    name: str
    base: str
    backbone: dict
    data: dict
    schedule: dict
    bench: dict
    axes: dict[str, list]
    exclude: list[dict]
    include: list[dict]
    seeds: list[int]
    overrides: dict[str, Any]
    slurm: dict
    excluded: list[tuple[dict, str]] = field(default_factory=list)


def _key_lines(text: str) -> dict[str, int]:
    """Map each dotted key path of the YAML document to its 1-based line number."""
    lines: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                path = f"{prefix}.{k.value}" if prefix else str(k.value)
                lines[path] = k.start_mark.line + 1
                walk(v, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                path = f"{prefix}[{i}]"
                lines[path] = v.start_mark.line + 1
                walk(v, path)

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return lines


class _Checker:
    """Raises GridError with file, key, line and fix."""

    def __init__(self, path: Path, lines: dict[str, int]):
        self.path, self.lines = path, lines

    def fail(self, key: str, problem: str, fix: str) -> GridError:
        line = self.lines.get(key)
        where = f"{self.path}:{line}" if line else str(self.path)
        return GridError(f"{where}: {key}: {problem}. Fix: {fix}")

    def known(self, section: str, mapping: Any, allowed: tuple) -> dict:
        if mapping is None:
            return {}
        if not isinstance(mapping, dict):
            raise self.fail(section, f"expected a mapping, got {type(mapping).__name__}",
                            f"write `{section}:` followed by indented `key: value` lines")
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean `{close[0]}`?" if close else f"allowed keys: {', '.join(allowed)}"
                raise self.fail(f"{section}.{key}" if section else str(key), "unknown key", hint)
        return dict(mapping)

    def typed(self, key: str, value: Any, types: type | tuple, what: str) -> Any:
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.fail(key, f"expected {what}, got a boolean", f"set {key} to {what}")
        if not isinstance(value, types):
            raise self.fail(key, f"expected {what}, got {value!r}", f"set {key} to {what}")
        return value


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid YAML file; raises GridError naming file, key, line and fix."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path}: grid file not found. Fix: pass the path of a grid YAML such as "
                        "ablations/smoke.yaml")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise GridError(f"{where}: not valid YAML ({getattr(e, 'problem', e)}). Fix: check the "
                        "indentation and quoting on that line") from None
    c = _Checker(path, _key_lines(text))
    if not isinstance(raw, dict):
        raise c.fail("(top level)", "expected a mapping of sections", f"start with `name: ...`; "
                     f"sections: {', '.join(SECTIONS)}")
    raw = c.known("", raw, SECTIONS)
    if "name" not in raw:
        raise c.fail("name", "missing", "add `name: my-sweep` (the results folder name)")
    name = str(c.typed("name", raw["name"], str, "a folder name"))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise c.fail("name", f"{name!r} is not a safe folder name", "use letters, digits, - _ .")
    base = str(c.typed("base", raw.get("base", "mask-rcnn-vit"), str, "a template name or path"))
    from .mmdet_config import TEMPLATES, base_path

    if base_path(path, base) is None:
        raise c.fail("base", f"{base!r} is neither a built-in template nor an existing file",
                     f"use one of {', '.join(TEMPLATES)} or the path of an MMDetection config")
    backbone = _check_backbone(c, raw.get("backbone"))
    data = _check_data(c, raw.get("data"), path)
    schedule = _check_schedule(c, raw.get("schedule"))
    bench = c.known("bench", raw.get("bench"), BENCH_KEYS)
    slurm = c.known("slurm", raw.get("slurm"), SLURM_KEYS)
    axes = _check_axes(c, raw.get("axes"))
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise c.fail("seeds", f"expected a non-empty list of integers, got {seeds!r}",
                     "write e.g. `seeds: [0, 1, 2]`")
    overrides = c.typed("overrides", raw.get("overrides") or {}, dict, "a mapping of dotted keys")
    exclude = _check_points(c, "exclude", raw.get("exclude"), axes, named=False)
    include = _check_points(c, "include", raw.get("include"), axes, named=True)
    return Grid(path, name, base, backbone, data, schedule, bench, axes, exclude, include,
                sorted(set(seeds)), overrides, slurm)


def _check_backbone(c: _Checker, raw: Any) -> dict:
    bb = {"arch": "deit-small", "prune_layers": REFERENCE_LAYERS, "keep_ratios": REFERENCE_RATIOS,
          **c.known("backbone", raw, BACKBONE_KEYS)}
    if bb["arch"] not in ARCHS:
        raise c.fail("backbone.arch", f"unknown arch {bb['arch']!r}", f"use one of {', '.join(ARCHS)}")
    layers, ratios = bb["prune_layers"], bb["keep_ratios"]
    if not isinstance(layers, list) or not isinstance(ratios, list) or len(layers) != len(ratios):
        raise c.fail("backbone.keep_ratios", "prune_layers and keep_ratios must be lists of the "
                     "same length", "give one keep ratio per pruning layer")
    if not layers:
        raise c.fail("backbone.prune_layers", "empty: there would be nothing to ablate",
                     f"use the reference schedule {REFERENCE_LAYERS}")
    if not all(isinstance(r, (int, float)) and 0 < r <= 1 for r in ratios):
        raise c.fail("backbone.keep_ratios", f"ratios must be in (0, 1], got {ratios}",
                     "use fractions of all tokens such as 0.7")
    return bb


def _check_data(c: _Checker, raw: Any, grid_path: Path) -> dict:
    raw = raw or {"type": "synthetic"}
    kind = raw.get("type", "synthetic") if isinstance(raw, dict) else None
    if kind not in DATA_KEYS:
        raise c.fail("data.type", f"unknown data type {kind!r}", "use `synthetic` or `coco`")
    data = {"type": kind, **c.known("data", raw, DATA_KEYS[kind])}
    if kind == "synthetic":
        from .data import synthetic_params

        try:
            synthetic_params(data)
        except (ValueError, TypeError) as e:
            raise c.fail("data", str(e), "correct the synthetic data settings") from None
    if kind == "coco":
        from .data import check_coco

        if "root" not in data:
            raise c.fail("data.root", "missing", "set data.root to your COCO folder")
        root = Path(data["root"]).expanduser()
        if not root.is_absolute():
            root = (grid_path.parent / root) if (grid_path.parent / root).exists() else root.resolve()
        data["root"] = str(root)
        defaults = {"train_ann": "annotations/instances_train2017.json", "train_img": "train2017/",
                    "val_ann": "annotations/instances_val2017.json", "val_img": "val2017/"}
        data = {**defaults, **data}
        for split in ("train", "val"):
            try:
                data[f"{split}_classes"] = check_coco(root, data[f"{split}_ann"], data[f"{split}_img"])
            except (FileNotFoundError, ValueError) as e:
                raise c.fail(f"data.{split}_ann", str(e), "fix data.root / data.*_ann / data.*_img, "
                             "or build a subset with `prunebench data subset`") from None
    return data


def _check_schedule(c: _Checker, raw: Any) -> dict:
    sched = c.known("schedule", raw, SCHEDULE_KEYS)
    for stage in ("dense", "finetune"):
        st = c.known(f"schedule.{stage}", sched.get(stage) or {"epochs": 36 if stage == "dense" else 6},
                     STAGE_KEYS)
        if ("iters" in st) == ("epochs" in st):
            raise c.fail(f"schedule.{stage}", "give exactly one of `iters` or `epochs`",
                         f"e.g. `{stage}: {{epochs: {36 if stage == 'dense' else 6}}}`")
        for k in ("iters", "epochs"):
            if k in st:
                c.typed(f"schedule.{stage}.{k}", st[k], int, "a positive integer")
                if st[k] <= 0:
                    raise c.fail(f"schedule.{stage}.{k}", "must be positive", "use e.g. 1 or more")
        sched[stage] = st
    for k in ("lr", "weight_decay"):
        if k in sched:
            c.typed(f"schedule.{k}", sched[k], (int, float), "a number")
    return sched


def _check_axes(c: _Checker, raw: Any) -> dict[str, list]:
    if raw is None:
        return {k: list(v) for k, v in PRUNING_AXES.items()}
    raw = c.typed("axes", raw, dict, "a mapping of axis -> list of values")
    axes = {}
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise c.fail(f"axes.{key}", f"expected a non-empty list of values, got {values!r}",
                         f"write `{key}: [value1, value2]`")
        if key in PRUNING_AXES:
            for i, v in enumerate(values):
                if v not in PRUNING_AXES[key] or type(v) is not type(PRUNING_AXES[key][0]):
                    raise c.fail(f"axes.{key}[{i}]", f"unknown value {v!r}",
                                 f"use values from {list(PRUNING_AXES[key])}")
        elif "." not in key:
            close = difflib.get_close_matches(key, list(PRUNING_AXES), n=1)
            hint = (f"did you mean `{close[0]}`?" if close else
                    f"use a pruning axis ({', '.join(PRUNING_AXES)}) or a dotted MMEngine config "
                    "key such as model.backbone.arch")
            raise c.fail(f"axes.{key}", "unknown axis", hint)
        if len(set(map(json.dumps, values))) != len(values):
            raise c.fail(f"axes.{key}", "repeated value", "list each value once")
        axes[key] = list(values)
    for key, values in PRUNING_AXES.items():  # unswept pruning axes keep their first value
        axes.setdefault(key, [values[1] if key == "pruned_tokens" else values[0]])
    return axes


def _check_points(c: _Checker, section: str, raw: Any, axes: dict, named: bool) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise c.fail(section, "expected a list of assignments", f"write `{section}:` then `- {{axis: value}}` items")
    points = []
    for i, point in enumerate(raw):
        key = f"{section}[{i}]"
        if not isinstance(point, dict) or not point:
            raise c.fail(key, f"expected a mapping of axis: value, got {point!r}",
                         "write e.g. `- {pruned_tokens: discard, reactivation: true}`")
        for axis, value in point.items():
            if axis == "name" and named:
                continue
            if axis in PRUNING_AXES and value not in PRUNING_AXES[axis]:
                raise c.fail(f"{key}.{axis}", f"unknown value {value!r}",
                             f"use one of {list(PRUNING_AXES[axis])}")
            if axis not in PRUNING_AXES and (axis not in axes and (not named or "." not in axis)):
                raise c.fail(f"{key}.{axis}", "not an axis of this grid",
                             f"use one of {', '.join(axes)}")
        points.append(dict(point))
    return points


# ----------------------------------------------------------------------------- expansion

def _matches(cell: dict, point: dict) -> bool:
    return all(cell.get(k) == v for k, v in point.items() if k != "name")


def _run_id(prefix: str, seed: int, payload: dict) -> str:
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"{prefix}-s{seed}-{digest[:6]}"


def _cell_prefix(cell: dict) -> str:
    parts = [str(cell["pruned_tokens"])]
    parts += [_SHORT[k][cell[k]] for k in ("reactivation", "rate")]
    parts.append(str(cell["selector"]))
    return "-".join(parts)


def expand(grid: Grid) -> list[RunSpec]:
    """All runs of the grid, dense runs first. Invalid and excluded cells are recorded in
    ``grid.excluded`` with their reason."""
    grid.excluded = []
    pruning_keys = list(PRUNING_AXES)
    other_keys = [k for k in grid.axes if k not in PRUNING_AXES]
    cells = [dict(zip(grid.axes, values)) for values in itertools.product(*grid.axes.values())]
    kept, seen = [], set()
    for cell in cells:
        if cell["pruned_tokens"] == "discard" and cell["reactivation"]:
            grid.excluded.append((cell, "discard + reactivation: a discarded token has no state "
                                        "to come back with (needs preserve)"))
        elif any(_matches(cell, p) for p in grid.exclude):
            grid.excluded.append((cell, "matched an `exclude` entry"))
        else:
            kept.append((None, cell))
    for point in grid.include:
        cell = {k: grid.axes[k][0] for k in grid.axes}
        cell.update({k: v for k, v in point.items() if k != "name"})
        if cell["pruned_tokens"] == "discard" and cell["reactivation"]:
            raise GridError(f"{grid.path}: include: {point}: discard + reactivation is impossible "
                            "(a discarded token has no state to come back with). Fix: use preserve")
        kept.append((point.get("name"), cell))
    for _, cell in kept:  # dotted keys that only `include` points set
        other_keys += [k for k in cell if k not in pruning_keys and k not in other_keys]
    common = {"base": grid.base, "backbone": grid.backbone, "data": grid.data,
              "schedule": grid.schedule, "overrides": grid.overrides}
    bench = {"input_size": list(grid.data.get("image_size", (800, 1344))), "warmup": 2, "repeats": 5,
             **grid.bench}
    runs: list[RunSpec] = []
    dense_ids: dict[tuple, str] = {}
    finetunes: list[RunSpec] = []
    for seed in grid.seeds:
        for name, cell in kept:
            others = {k: cell.get(k) for k in other_keys if k in cell}
            arch = others.get("model.backbone.arch", grid.backbone["arch"])
            dkey = (seed, json.dumps(others, sort_keys=True, default=str))
            if dkey not in dense_ids:
                axes = {**{k: None for k in pruning_keys}, **others}
                dense_common = {**common, "schedule": {k: v for k, v in grid.schedule.items() if k != "finetune"}}
                rid = _run_id(f"dense{_arch_tag(grid, arch)}", seed, {**dense_common, "axes": axes, "seed": seed})
                dense_ids[dkey] = rid
                runs.append(RunSpec(rid, grid.name, "dense", arch, seed, axes, (), dict(others),
                                    bench))
            axes = {**{k: cell[k] for k in pruning_keys}, **others}
            prefix = name or _cell_prefix(cell)
            rid = _run_id(f"{prefix}{_arch_tag(grid, arch)}", seed, {**common, "axes": axes, "seed": seed})
            if rid in seen:
                continue
            seen.add(rid)
            finetunes.append(RunSpec(rid, grid.name, "finetune", arch, seed, axes,
                                     (dense_ids[dkey],), dict(others), bench))
    return runs + finetunes


def _arch_tag(grid: Grid, arch: str) -> str:
    swept = len(set(grid.axes.get("model.backbone.arch", []))) > 1
    return f"-{arch.split('-')[-1]}" if swept else ""
