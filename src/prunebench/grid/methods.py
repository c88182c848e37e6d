"""The grid's ``method`` axis and its plug-in selectors: ``imports`` (the user's modules that
register selectors), the values of ``axes.method`` and ``axes.selector``, and the rules a method
grid must keep (no sweeping a method together with an axis it fixes; enough blocks for its
schedule). Importing a plug-in module imports torch: only grids with ``imports`` do.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ..axes import ARCHS, METHOD_AXIS, PRUNING_AXES
from ..presets import PRESETS, blocks_needed, plugin_selectors
from .schema import _Checker


def check_imports(c: _Checker, raw: Any) -> list[str]:
    """Import each module of ``imports`` (as MMEngine's ``custom_imports`` will in every job); the
    working directory is importable, as it is for the jobs a sweep starts."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(m, str) and m for m in raw):
        raise c.fail(
            "imports", f"expected a list of module names, got {raw!r}", "write `imports: [my_selectors]`"
        )
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for i, name in enumerate(raw):
        try:
            importlib.import_module(name)
        except Exception as e:  # the user's module: any error in it is theirs to see
            raise c.fail(
                f"imports[{i}]",
                f"cannot import {name!r} ({type(e).__name__}: {e})",
                "name a module importable from the working directory or PYTHONPATH, as `import` "
                "spells it (my_pkg.selectors, not a file path)",
            ) from None
    return list(raw)


def axis_values(axis: str) -> tuple:
    """The values ``axis`` may take: the four axes' (plug-in selectors added) and the methods."""
    if axis == METHOD_AXIS:
        return (*PRESETS, *plugin_selectors())
    if axis == "selector":
        return (*PRUNING_AXES["selector"], *plugin_selectors())
    return PRUNING_AXES[axis]


def unknown_value(axis: str, value: Any) -> tuple[str, str]:
    """(problem, fix) for a value ``axis`` does not take."""
    plugins = plugin_selectors()
    registered = f"registered selectors: {', '.join((*PRUNING_AXES['selector'], *plugins))}"
    if axis == METHOD_AXIS:
        return (
            f"unknown method {value!r}",
            f"use a preset ({', '.join(PRESETS)}) or a selector the grid's `imports` register ({registered})",
        )
    if axis == "selector":
        return (
            f"unknown selector {value!r}",
            f"use one of the {registered}; a plug-in registers with "
            "@SELECTORS.register_module('name') in a module listed under `imports`",
        )
    return f"unknown value {value!r}", f"use values from {list(PRUNING_AXES[axis])}"


def check_method_axes(c: _Checker, raw: dict) -> None:
    """A method fixes the four axes: sweeping one of them beside ``method`` is an error."""
    if METHOD_AXIS not in raw:
        return
    for axis in PRUNING_AXES:
        if axis in raw:
            raise c.fail(
                f"axes.{axis}",
                f"swept together with axes.method, but every method fixes {axis} "
                f"(e.g. dynamicvit: {PRESETS['dynamicvit'].axes[axis]!r})",
                f"sweep `method` alone (its presets set {axis}), or drop `method` and sweep the four axes",
            )


def check_method_depth(c: _Checker, backbone: dict, axes: dict) -> None:
    """Each method's own schedule must fit in the backbone's blocks."""
    depth = backbone.get("depth") or ARCHS[backbone.get("arch", "deit-small")][1]
    for i, name in enumerate(axes.get(METHOD_AXIS, [])):
        needed = blocks_needed(name)
        if needed > depth:
            raise c.fail(
                f"axes.method[{i}]",
                f"{name} prunes before block {needed} (1-based) but backbone.depth is {depth}",
                f"use a backbone of at least {needed} blocks (the DeiT archs have 12)",
            )
