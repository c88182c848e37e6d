"""YAML -> validated Grid: schema, types and values, with errors naming file, line, key and fix.

Validation reads only the grid file (and checks that a pretrained checkpoint exists); dataset
checks happen when a sweep is prepared (:mod:`prunebench.sweep`), expansion into runs in
:mod:`prunebench.spec`.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .axes import ARCHS, AXIS_DEFAULTS, PRECISIONS, PRUNING_AXES, REFERENCE_LAYERS, REFERENCE_RATIOS
from .configs import TEMPLATES, base_path

SECTIONS = (
    "name",
    "base",
    "backbone",
    "data",
    "schedule",
    "bench",
    "axes",
    "per_value",
    "exclude",
    "include",
    "seeds",
    "overrides",
    "slurm",
)
BACKBONE_KEYS = (
    "arch",
    "embed_dim",
    "depth",
    "num_heads",
    "prune_layers",
    "keep_ratios",
    "tau",
    "out_channels",
    "drop_path_rate",
    "pretrained",
)
DATA_KEYS = {
    "synthetic": (
        "type",
        "num_train",
        "num_val",
        "image_size",
        "num_classes",
        "max_objects",
        "min_size",
        "max_size",
        "colour_by_class",
        "seed",
        "cache_dir",
        "batch_size",
        "num_workers",
        "img_scale",
    ),
    "coco": (
        "type",
        "root",
        "train_ann",
        "train_img",
        "val_ann",
        "val_img",
        "batch_size",
        "num_workers",
        "img_scale",
    ),
}
COCO_DEFAULTS = {
    "train_ann": "annotations/instances_train2017.json",
    "train_img": "train2017/",
    "val_ann": "annotations/instances_val2017.json",
    "val_img": "val2017/",
}
SCHEDULE_KEYS = (
    "dense",
    "finetune",
    "warmup_iters",
    "checkpoint_interval",
    "log_interval",
    "keep_ratio_loss_weight",
    "clip_grad",
    "amp",
)
STAGE_KEYS = ("iters", "epochs", "lr", "weight_decay", "milestones", "warmup_iters", "checkpoint_interval")
#: The paper's stages (official configs): dense AdamW 1e-4 / wd 0.05 for 36 epochs; pruned
#: finetune AdamW 1e-5 / wd 1e-6. A finetune never inherits the dense lr or weight decay.
STAGE_DEFAULTS = {
    "dense": {"epochs": 36, "lr": 1e-4, "weight_decay": 0.05},
    "finetune": {"epochs": 6, "lr": 1e-5, "weight_decay": 1e-6},
}
BENCH_KEYS = ("images", "warmup", "repeats", "dtype")
SLURM_KEYS = ("partition", "gpus_per_job", "cpus_per_task", "mem", "time", "account", "qos", "sbatch_args")
#: grid sections a `per_value` setting may change (besides dotted MMEngine config keys).
PER_VALUE_SECTIONS = ("backbone", "schedule")


class GridError(ValueError):
    """A grid file problem; the message names the file, the key (and line) and the fix."""


@dataclass
class Grid:
    """A validated grid file (values as written; paths of checkpoints resolved)."""

    path: Path
    name: str
    base: str
    backbone: dict
    data: dict
    schedule: dict
    bench: dict
    axes: dict[str, list]
    per_value: dict[str, list[tuple[Any, dict]]]
    exclude: list[dict]
    include: list[dict]
    seeds: list[int]
    overrides: dict[str, Any]
    slurm: dict
    lines: dict[str, int] = field(default_factory=dict, repr=False)

    def error(self, key: str, problem: str, fix: str) -> GridError:
        """A GridError naming this grid's file and the line of ``key``."""
        return _Checker(self.path, self.lines).fail(key, problem, fix)


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

    with contextlib.suppress(yaml.YAMLError):  # a syntax error is reported by safe_load
        walk(yaml.compose(text), "")
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
            raise self.fail(
                section,
                f"expected a mapping, got {type(mapping).__name__}",
                f"write `{section}:` followed by indented `key: value` lines",
            )
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

    def count(self, key: str, value: Any, minimum: int = 1) -> int:
        """An integer >= ``minimum`` (batch sizes, iterations, epochs, workers)."""
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        self.typed(key, value, int, what)
        if value < minimum:
            raise self.fail(key, f"expected {what}, got {value}", f"set {key} to {what}")
        return value

    def checkpoint(self, key: str, value: Any, grid_path: Path) -> str:
        """A pretrained checkpoint path, relative to the grid file, then the working directory."""
        self.typed(key, value, str, "the path of an ImageNet DeiT checkpoint")
        raw = Path(value).expanduser()
        for cand in [raw] if raw.is_absolute() else [grid_path.parent / raw, raw]:
            if cand.is_file():
                return str(cand.resolve())
        raise self.fail(
            key,
            f"checkpoint {value!r} not found (looked next to {grid_path.name} and in the working directory)",
            "download the ImageNet DeiT weights (README, "
            "'Pretrained weights') or correct the path; "
            "`prunebench weights PATH --arch ARCH` checks a file",
        )


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid YAML file; raises GridError naming file, key, line and fix."""
    path = Path(path)
    if not path.is_file():
        raise GridError(
            f"{path}: grid file not found. Fix: pass the path of a grid YAML such as ablations/smoke.yaml"
        )
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise GridError(
            f"{where}: not valid YAML ({getattr(e, 'problem', e)}). Fix: check the "
            "indentation and quoting on that line"
        ) from None
    lines = _key_lines(text)
    c = _Checker(path, lines)
    if not isinstance(raw, dict):
        raise c.fail(
            "(top level)",
            "expected a mapping of sections",
            f"start with `name: ...`; sections: {', '.join(SECTIONS)}",
        )
    raw = c.known("", raw, SECTIONS)
    if "name" not in raw:
        raise c.fail("name", "missing", "add `name: my-sweep` (the results folder name)")
    name = str(c.typed("name", raw["name"], str, "a folder name"))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise c.fail("name", f"{name!r} is not a safe folder name", "use letters, digits, - _ .")
    base = str(c.typed("base", raw.get("base", "mask-rcnn-vit"), str, "a template name or path"))
    if base_path(path, base) is None:
        raise c.fail(
            "base",
            f"{base!r} is neither a built-in template nor an existing file",
            f"use one of {', '.join(TEMPLATES)} or the path of an MMDetection config",
        )
    backbone = _check_backbone(c, raw.get("backbone"), path)
    data = _check_data(c, raw.get("data"))
    schedule = _check_schedule(c, raw.get("schedule"))
    bench = _check_bench(c, raw.get("bench"))
    slurm = c.known("slurm", raw.get("slurm"), SLURM_KEYS)
    axes = _check_axes(c, raw.get("axes"))
    per_value = _check_per_value(c, raw.get("per_value"), axes, path)
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise c.fail(
            "seeds", f"expected a non-empty list of integers, got {seeds!r}", "write e.g. `seeds: [0, 1, 2]`"
        )
    overrides = c.typed("overrides", raw.get("overrides") or {}, dict, "a mapping of dotted keys")
    for key in overrides:
        if "." not in str(key):
            raise c.fail(
                f"overrides.{key}",
                "not a dotted MMEngine config key",
                "write the full key, e.g. `optim_wrapper.optimizer.lr: 0.0001`",
            )
    exclude = _check_points(c, "exclude", raw.get("exclude"), axes, named=False)
    include = _check_points(c, "include", raw.get("include"), axes, named=True)
    return Grid(
        path,
        name,
        base,
        backbone,
        data,
        schedule,
        bench,
        axes,
        per_value,
        exclude,
        include,
        sorted(set(seeds)),
        overrides,
        slurm,
        lines,
    )


def _check_backbone(c: _Checker, raw: Any, grid_path: Path) -> dict:
    bb = {
        "arch": "deit-small",
        "prune_layers": REFERENCE_LAYERS,
        "keep_ratios": REFERENCE_RATIOS,
        **c.known("backbone", raw, BACKBONE_KEYS),
    }
    if bb["arch"] not in ARCHS:
        raise c.fail("backbone.arch", f"unknown arch {bb['arch']!r}", f"use one of {', '.join(ARCHS)}")
    layers, ratios = bb["prune_layers"], bb["keep_ratios"]
    if not isinstance(layers, list) or not isinstance(ratios, list) or len(layers) != len(ratios):
        raise c.fail(
            "backbone.keep_ratios",
            "prune_layers and keep_ratios must be lists of the same length",
            "give one keep ratio per pruning layer",
        )
    if not layers:
        raise c.fail(
            "backbone.prune_layers",
            "empty: there would be nothing to ablate",
            f"use the reference schedule {REFERENCE_LAYERS}",
        )
    if not all(isinstance(r, (int, float)) and 0 < r <= 1 for r in ratios):
        raise c.fail(
            "backbone.keep_ratios",
            f"ratios must be in (0, 1], got {ratios}",
            "use fractions of all tokens such as 0.7",
        )
    if bb.get("pretrained") is not None:
        bb["pretrained"] = c.checkpoint("backbone.pretrained", bb["pretrained"], grid_path)
    return bb


def _check_data(c: _Checker, raw: Any) -> dict:
    raw = raw or {"type": "synthetic"}
    kind = raw.get("type", "synthetic") if isinstance(raw, dict) else None
    if kind not in DATA_KEYS:
        raise c.fail("data.type", f"unknown data type {kind!r}", "use `synthetic` or `coco`")
    data = {"type": kind, **c.known("data", raw, DATA_KEYS[kind])}
    if "batch_size" in data:
        c.count("data.batch_size", data["batch_size"])
    if "num_workers" in data:
        c.count("data.num_workers", data["num_workers"], minimum=0)
    if kind == "synthetic":
        from .data import synthetic_params

        try:
            synthetic_params(data)
        except (ValueError, TypeError) as e:
            raise c.fail("data", str(e), "correct the synthetic data settings") from None
    else:
        if "root" not in data:
            raise c.fail("data.root", "missing", "set data.root to your COCO folder")
        data = {**COCO_DEFAULTS, **data}
    return data


def _check_stage(c: _Checker, key: str, raw: Any, defaults: dict) -> dict:
    st = c.known(key, raw, STAGE_KEYS)
    if "iters" in st and "epochs" in st:
        raise c.fail(
            key, "give exactly one of `iters` or `epochs`", f"e.g. `{{epochs: {defaults['epochs']}}}`"
        )
    if "iters" not in st and "epochs" not in st:
        st["epochs"] = defaults["epochs"]
    for k in ("iters", "epochs"):
        if k in st:
            c.count(f"{key}.{k}", st[k])
    for k in ("lr", "weight_decay"):
        st.setdefault(k, defaults[k])
        c.typed(f"{key}.{k}", st[k], (int, float), "a number")
    if "warmup_iters" in st:
        c.count(f"{key}.warmup_iters", st["warmup_iters"], minimum=0)
    if "checkpoint_interval" in st:
        c.count(f"{key}.checkpoint_interval", st["checkpoint_interval"])
    if "milestones" in st:
        length = st.get("iters", st.get("epochs"))
        ms = st["milestones"]
        if not isinstance(ms, list) or not all(isinstance(m, int) and 0 < m < length for m in ms):
            raise c.fail(
                f"{key}.milestones",
                f"expected increasing integers in (0, {length}), got {ms!r}",
                "list the epochs (or iterations) after which the lr drops 10x, e.g. [3]",
            )
    return st


def _check_schedule(c: _Checker, raw: Any) -> dict:
    if isinstance(raw, dict):
        for moved in ("lr", "weight_decay"):
            if moved in raw:
                raise c.fail(
                    f"schedule.{moved}",
                    "is set per stage",
                    f"write `dense: {{..., {moved}: ...}}` and `finetune: {{..., {moved}: ...}}` "
                    "(a finetune must not inherit the dense value by accident)",
                )
    sched = c.known("schedule", raw, SCHEDULE_KEYS)
    for stage, defaults in STAGE_DEFAULTS.items():
        sched[stage] = _check_stage(c, f"schedule.{stage}", sched.get(stage), defaults)
    for k in ("warmup_iters", "checkpoint_interval", "log_interval"):
        if k in sched:
            c.count(f"schedule.{k}", sched[k], minimum=0 if k == "warmup_iters" else 1)
    if "amp" in sched:
        c.typed("schedule.amp", sched["amp"], bool, "true or false")
    return sched


def _check_bench(c: _Checker, raw: Any) -> dict:
    bench = c.known("bench", raw, BENCH_KEYS)
    for k in ("warmup", "images"):
        if k in bench:
            c.count(f"bench.{k}", bench[k], minimum=0 if k == "warmup" else 1)
    if "repeats" in bench:
        c.count("bench.repeats", bench["repeats"])
    if bench.get("dtype", "fp32") not in PRECISIONS:
        raise c.fail(
            "bench.dtype", f"unknown dtype {bench['dtype']!r}", f"use one of {', '.join(PRECISIONS)}"
        )
    return bench


def _check_axes(c: _Checker, raw: Any) -> dict[str, list]:
    if raw is None:
        return {k: list(v) for k, v in PRUNING_AXES.items()}
    raw = c.typed("axes", raw, dict, "a mapping of axis -> list of values")
    axes = {}
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise c.fail(
                f"axes.{key}",
                f"expected a non-empty list of values, got {values!r}",
                f"write `{key}: [value1, value2]`",
            )
        if key in PRUNING_AXES:
            for i, v in enumerate(values):
                if v not in PRUNING_AXES[key] or type(v) is not type(PRUNING_AXES[key][0]):
                    raise c.fail(
                        f"axes.{key}[{i}]",
                        f"unknown value {v!r}",
                        f"use values from {list(PRUNING_AXES[key])}",
                    )
        elif "." not in key:
            close = difflib.get_close_matches(key, list(PRUNING_AXES), n=1)
            hint = (
                f"did you mean `{close[0]}`?"
                if close
                else f"use a pruning axis ({', '.join(PRUNING_AXES)}) or a dotted MMEngine config "
                "key such as model.backbone.arch"
            )
            raise c.fail(f"axes.{key}", "unknown axis", hint)
        elif key == "model.backbone.arch":
            for i, v in enumerate(values):
                if v not in ARCHS:
                    raise c.fail(f"axes.{key}[{i}]", f"unknown arch {v!r}", f"use one of {', '.join(ARCHS)}")
        if len(set(map(json.dumps, values))) != len(values):
            raise c.fail(f"axes.{key}", "repeated value", "list each value once")
        axes[key] = list(values)
    for key, default in AXIS_DEFAULTS.items():  # unswept pruning axes keep their default
        axes.setdefault(key, [default])
    return axes


def _check_per_value(c: _Checker, raw: Any, axes: dict, grid_path: Path) -> dict[str, list]:
    """``per_value: {axis: {value: {setting: value}}}``: settings that depend on a swept value
    (e.g. drop-path and finetune length per arch). A setting is ``backbone.<key>``,
    ``schedule.<key>`` / ``schedule.<stage>.<key>``, or a dotted MMEngine config key."""
    if raw is None:
        return {}
    raw = c.typed("per_value", raw, dict, "a mapping of axis -> value -> settings")
    out: dict[str, list] = {}
    for axis, by_value in raw.items():
        key = f"per_value.{axis}"
        if axis not in axes:
            raise c.fail(key, "not an axis of this grid", f"use one of {', '.join(axes)}")
        by_value = c.typed(key, by_value, dict, "a mapping of axis value -> settings")
        out[axis] = []
        for value, settings in by_value.items():
            vkey = f"{key}.{value}"
            if value not in axes[axis]:
                raise c.fail(vkey, f"{value!r} is not a value of axes.{axis}", f"use one of {axes[axis]}")
            settings = c.typed(vkey, settings, dict, "a mapping of setting -> value")
            out[axis].append(
                (value, {s: _check_setting(c, f"{vkey}.{s}", s, v, grid_path) for s, v in settings.items()})
            )
    return out


def _check_setting(c: _Checker, key: str, setting: str, value: Any, grid_path: Path) -> Any:
    section, _, rest = str(setting).partition(".")
    if section not in PER_VALUE_SECTIONS:
        if not rest:
            raise c.fail(
                key,
                "unknown setting",
                "use backbone.<key>, schedule.<stage>.<key> or a "
                "dotted MMEngine config key such as model.backbone.drop_path_rate",
            )
        return value
    if section == "backbone":
        c.known("backbone", {rest: value}, BACKBONE_KEYS)
        return c.checkpoint(key, value, grid_path) if rest == "pretrained" else value
    stage, _, leaf = rest.partition(".")
    if stage in STAGE_DEFAULTS:
        if leaf:
            c.known(f"schedule.{stage}", {leaf: value}, STAGE_KEYS)
        else:
            c.known(f"schedule.{stage}", value, STAGE_KEYS)
        return value
    c.known("schedule", {rest: value}, SCHEDULE_KEYS)
    return value


def _check_points(c: _Checker, section: str, raw: Any, axes: dict, named: bool) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise c.fail(
            section, "expected a list of assignments", f"write `{section}:` then `- {{axis: value}}` items"
        )
    points = []
    for i, point in enumerate(raw):
        key = f"{section}[{i}]"
        if not isinstance(point, dict) or not point:
            raise c.fail(
                key,
                f"expected a mapping of axis: value, got {point!r}",
                "write e.g. `- {pruned_tokens: discard, reactivation: true}`",
            )
        for axis, value in point.items():
            if axis == "name" and named:
                continue
            if axis in PRUNING_AXES and value not in PRUNING_AXES[axis]:
                raise c.fail(
                    f"{key}.{axis}", f"unknown value {value!r}", f"use one of {list(PRUNING_AXES[axis])}"
                )
            if axis not in PRUNING_AXES and (axis not in axes and (not named or "." not in axis)):
                raise c.fail(f"{key}.{axis}", "not an axis of this grid", f"use one of {', '.join(axes)}")
        points.append(dict(point))
    return points
