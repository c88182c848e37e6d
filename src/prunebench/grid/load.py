"""``load_grid``: read a grid YAML file, check its top level (sections, name, base template,
seeds, overrides) and hand each section to its validator."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..configs import TEMPLATES, base_path
from ..tracking.section import check_tracking
from .checks import check_name, check_warmup, read_text, safe_load
from .methods import check_imports, check_method_depth
from .parent import parent_per_seed, split_parent
from .schema import SECTIONS, SLURM_KEYS, Grid, GridError, _Checker, _key_lines
from .sections import (
    _check_axes,
    _check_backbone,
    _check_bench,
    _check_data,
    _check_family_args,
    _check_per_value,
    _check_points,
    _check_schedule,
)


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid YAML file; raises GridError naming file, key, line and fix."""
    path = Path(path)
    if not path.is_file():
        raise GridError(
            f"{path}: grid file not found. Fix: pass the path of a grid YAML such as ablations/smoke.yaml"
        )
    text = read_text(path)
    try:
        raw = safe_load(text, path)
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
    check_name(c, name)
    base = str(c.typed("base", raw.get("base", "mask-rcnn-vit"), str, "a template name or path"))
    if base_path(path, base) is None:
        raise c.fail(
            "base",
            f"{base!r} is neither a built-in template nor an existing file",
            f"use one of {', '.join(TEMPLATES)} or the path of an MMDetection config",
        )
    imports = check_imports(c, raw.get("imports"))
    backbone = _check_backbone(c, raw.get("backbone"), path)
    data = _check_data(c, raw.get("data"))
    schedule_raw, parent = split_parent(c, raw.get("schedule"), path)
    schedule = _check_schedule(c, schedule_raw)
    check_warmup(c, schedule)
    bench = _check_bench(c, raw.get("bench"))
    slurm = c.known("slurm", raw.get("slurm"), SLURM_KEYS)
    axes = _check_axes(c, raw.get("axes"))
    check_method_depth(c, backbone, axes)
    per_value = _check_per_value(c, raw.get("per_value"), axes, path)
    _check_family_args(c, backbone, axes, per_value)
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
    if parent:  # no dense training: the parent is evaluated from its checkpoint
        schedule["dense"] = parent_per_seed(c, parent, list(dict.fromkeys(seeds)))
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
        imports,
        tracking=check_tracking(c, raw.get("tracking")),
    )
