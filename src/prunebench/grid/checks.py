"""Checks that a job would otherwise fail on, made when a grid is read (``plan`` / ``sweep``,
before any job): the file's encoding and duplicate keys, a name the file system takes, the warm-up
against the stage length, and, on each run's final backbone arguments, the pruning schedule
against the depth and the backbone's construction itself (on the meta device: no memory, no
weights). Each failure is a GridError naming file, line, key and fix.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ..axes import ARCHS
from .schema import Grid, GridError, _Checker

#: longest sweep name: its folder must fit the file systems' 255-byte name limit
MAX_NAME = 200


def read_text(path: Path) -> str:
    """The grid file's text; a file that is not UTF-8 is a GridError naming the byte offset."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise GridError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}). "
            "Fix: save the grid file with UTF-8 encoding"
        ) from None


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"key {key!r} on line {second} repeats line {first}")
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error naming both lines
    (PyYAML keeps the second silently; ``<<`` merge keys may still override)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
        return super().construct_mapping(node, deep)


def safe_load(text: str, path: Path) -> Any:
    """``yaml.safe_load`` that rejects duplicate keys (a second ``data:`` block would replace the
    first wholesale) with a GridError naming both lines."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except DuplicateKey as e:
        raise GridError(
            f"{path}:{e.second}: {e.key}: given twice in the same mapping (lines {e.first} and "
            f"{e.second}); YAML would keep only the second. Fix: merge the two into one `{e.key}:`"
        ) from None


def check_name(c: _Checker, name: str) -> None:
    if len(name.encode()) > MAX_NAME:
        raise c.fail(
            "name",
            f"{len(name.encode())} bytes, too long for a folder name (file systems take 255)",
            f"use a name of at most {MAX_NAME} characters",
        )


def check_warmup(c: _Checker, schedule: dict) -> None:
    """An iteration stage reaches the grid's lr only when its warm-up ends before the stage does."""
    for stage in ("dense", "finetune"):
        st = schedule[stage]
        warmup = st.get("warmup_iters", schedule.get("warmup_iters"))
        if "iters" in st and warmup and warmup >= st["iters"]:  # 0: no warm-up, any length
            key = f"schedule.{stage}.warmup_iters" if "warmup_iters" in st else "schedule.warmup_iters"
            raise c.fail(
                key,
                f"{warmup} warm-up iterations in a {st['iters']}-iteration stage: it would never train "
                f"at its lr {st['lr']}",
                f"use fewer than {st['iters']} (0: no warm-up)",
            )


def check_backbones(grid: Grid, configs: dict[str, dict], cells: dict[str, dict]) -> None:
    """Every run's final backbone arguments (``configs``: run id -> config dict; ``cells``: run id
    -> its axes, for the message): the pruning schedule against the depth, then the backbone's
    construction on the meta device, once per distinct configuration."""
    seen: set[str] = set()
    for run_id, cfg in configs.items():
        args = dict(cfg["model"]["backbone"])
        key = json.dumps(args, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        cell = ", ".join(f"{k}={v}" for k, v in cells[run_id].items() if v is not None) or "dense"
        _check_pruning_schedule(grid, args, cell)
        _construct(grid, args, cell)


def _check_pruning_schedule(grid: Grid, args: dict, cell: str) -> None:
    layers, ratios = list(args.get("prune_layers") or []), list(args.get("keep_ratios") or [])
    depth = args.get("depth") or ARCHS.get(args.get("arch", "deit-small"), (None, 12))[1]
    bad = [i for i in layers if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < depth]
    if bad:
        raise grid.error(
            "backbone.prune_layers",
            f"{bad} outside the {depth} blocks of the backbone (run {cell})",
            f"use 0-based block indices 0..{depth - 1}",
        )
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise grid.error(
            "backbone.prune_layers",
            f"{layers} is not strictly increasing (a repeated or out-of-order block; run {cell})",
            "list each block once, in order",
        )
    if not args.get("reactivation") and any(b > a for a, b in zip(ratios, ratios[1:])):
        raise grid.error(
            "backbone.keep_ratios",
            f"{ratios} increase, but without reactivation the kept set can only shrink (run {cell})",
            "make the ratios non-increasing, or run only `reactivation: true` cells",
        )


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter a module registers moves to the meta device (its initialisation then costs
    nothing); other tensors made while building (e.g. drop-path rates) stay real."""
    import torch
    from torch import nn

    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        with torch.no_grad():
            yield
    finally:
        nn.Module.register_parameter = register


def _construct(grid: Grid, args: dict, cell: str) -> None:
    from mmdet.registry import MODELS

    import prunebench.models  # noqa: F401  (registers the backbones)

    if args.get("pretrained"):  # construction only: the file was checked when the grid was read
        args = {**args, "pretrained": None}
    try:
        with _parameters_on_meta():
            MODELS.build(args)
    except (ValueError, TypeError, KeyError, AssertionError) as e:
        raise grid.error(
            "backbone",
            f"{args['type']} cannot be built for run {cell}: {type(e).__name__}: {e}",
            "correct the backbone settings (backbone:, per_value or the axes that set them)",
        ) from None


def check_data_sizes(grid: Grid) -> None:
    """A sweep trains and tests: a synthetic set needs at least one train and one val image."""
    for key in ("num_train", "num_val"):
        if grid.data["type"] == "synthetic" and grid.data.get(key, 1) < 1:
            raise grid.error(
                f"data.{key}",
                f"{grid.data[key]} images: a sweep {'trains' if key == 'num_train' else 'tests'} on them",
                f"set data.{key} to at least 1",
            )
