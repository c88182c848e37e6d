"""The validators of a grid's sections: backbone, data, schedule (per stage), bench, axes,
``per_value`` settings and the ``exclude`` / ``include`` points. Each takes the raw YAML value,
fills defaults and returns the checked section, or raises a GridError through the checker.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from ..axes import (
    ARCHS,
    AXIS_DEFAULTS,
    DEFAULT_MATRIX,
    FAMILIES,
    FAMILY_ARGS,
    KEEP_AXIS,
    LINKAGES,
    PRECISIONS,
    PRUNING_AXES,
    REFERENCE_LAYERS,
    SELECTOR_INFERENCE,
    SELECTOR_INITS,
    reference_schedule,
)
from .methods import METHOD_AXIS, axis_values, check_method_axes, unknown_value
from .schema import (
    BACKBONE_KEYS,
    BENCH_KEYS,
    COCO_DEFAULTS,
    DATA_KEYS,
    PER_VALUE_SECTIONS,
    SCHEDULE_KEYS,
    STAGE_DEFAULTS,
    STAGE_KEYS,
    _Checker,
)


def _check_backbone(c: _Checker, raw: Any, grid_path: Path) -> dict:
    bb = {
        "arch": "deit-small",
        "selector_init": "official",
        **c.known("backbone", raw, BACKBONE_KEYS),
    }
    for key, allowed in (
        ("arch", ARCHS),
        ("family", FAMILIES),
        ("selector_init", SELECTOR_INITS),
        ("selector_inference", SELECTOR_INFERENCE),
        ("linkage", LINKAGES),
    ):
        if key in bb and bb[key] not in allowed:
            raise c.fail(f"backbone.{key}", f"unknown {key} {bb[key]!r}", f"use one of {', '.join(allowed)}")
    depth = bb.get("depth") if isinstance(bb.get("depth"), int) else ARCHS[bb["arch"]][1]
    layers, ratios = reference_schedule(depth)  # the default: the reference, scaled to the depth
    layers, ratios = bb.setdefault("prune_layers", layers), bb.setdefault("keep_ratios", ratios)
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
        from ..data import synthetic_params

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
        if k in st:  # a finetune of length 0 evaluates its parent off the shelf
            c.count(f"{key}.{k}", st[k], minimum=int(key != "schedule.finetune"))
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
    for k in ("amp", "distill", "method_protocol"):
        if k in sched:
            c.typed(f"schedule.{k}", sched[k], bool, "true or false")
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
        return {k: list(v) for k, v in DEFAULT_MATRIX.items()}
    raw = c.typed("axes", raw, dict, "a mapping of axis -> list of values")
    check_method_axes(c, raw)
    axes = {}
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise c.fail(
                f"axes.{key}",
                f"expected a non-empty list of values, got {values!r}",
                f"write `{key}: [value1, value2]`",
            )
        if key in PRUNING_AXES or key == METHOD_AXIS:
            allowed = axis_values(key)
            for i, v in enumerate(values):
                if v not in allowed or type(v) is not type(allowed[0]):
                    raise c.fail(f"axes.{key}[{i}]", *unknown_value(key, v))
        elif key == "family":
            for i, v in enumerate(values):
                if v not in FAMILIES:
                    raise c.fail(
                        f"axes.{key}[{i}]", f"unknown family {v!r}", f"use one of {', '.join(FAMILIES)}"
                    )
        elif key == KEEP_AXIS:
            for i, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                    raise c.fail(
                        f"axes.{key}[{i}]",
                        f"keep ratio per stage {v!r} is not in (0, 1]",
                        "use shares of the previous stage's tokens such as 0.7",
                    )
        elif "." not in key:
            close = difflib.get_close_matches(key, [*PRUNING_AXES, METHOD_AXIS, "family", KEEP_AXIS], n=1)
            hint = (
                f"did you mean `{close[0]}`?"
                if close
                else f"use a pruning axis ({', '.join(PRUNING_AXES)}), `method`, `family`, `keep` or a "
                "dotted MMEngine config key such as model.backbone.arch"
            )
            raise c.fail(f"axes.{key}", "unknown axis", hint)
        elif key == "model.backbone.arch":
            for i, v in enumerate(values):
                if v not in ARCHS:
                    raise c.fail(f"axes.{key}[{i}]", f"unknown arch {v!r}", f"use one of {', '.join(ARCHS)}")
        if len(set(map(json.dumps, values))) != len(values):
            raise c.fail(f"axes.{key}", "repeated value", "list each value once")
        axes[key] = list(values)
    if METHOD_AXIS not in axes:  # unswept pruning axes keep their default (a method sets them)
        for key, default in AXIS_DEFAULTS.items():
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
            if (axis in PRUNING_AXES or axis == METHOD_AXIS) and value not in axis_values(axis):
                raise c.fail(f"{key}.{axis}", *unknown_value(axis, value))
            own = axis in PRUNING_AXES or (axis == METHOD_AXIS and named)  # include: a method too
            if not own and (axis not in axes and (not named or "." not in axis)):
                raise c.fail(f"{key}.{axis}", "not an axis of this grid", f"use one of {', '.join(axes)}")
        points.append(dict(point))
    return points


def _check_family_args(c: _Checker, backbone: dict, axes: dict, per_value: dict) -> None:
    """A family's own backbone argument (e.g. ``conv_inplane`` of the adapter) needs a run of that
    family: set in ``backbone:`` or ``per_value``, at least one family the grid runs must take it."""
    families = set(axes.get("family", [backbone.get("family", "plain")]))
    settings = [(f"backbone.{k}", k) for k in backbone]
    settings += [
        (f"per_value.{axis}.{value}.{k}", k.partition(".")[2])
        for axis, by_value in per_value.items()
        for value, given in by_value
        for k in given
        if k.startswith("backbone.")
    ]
    for where, key in settings:
        owner = next((f for f, keys in FAMILY_ARGS.items() if key in keys), None)
        if owner is not None and owner not in families:
            raise c.fail(
                where,
                f"an argument of the {owner} backbone only, but this grid runs {', '.join(sorted(families))}",
                f"remove it, or run the {owner} family (`backbone.family: {owner}` or the `family` axis)",
            )
