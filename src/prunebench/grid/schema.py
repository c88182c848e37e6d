"""What a grid file may hold and how a problem in it is reported: the allowed sections and keys
with their defaults, :class:`Grid` (a validated file), :class:`GridError`, and the checker that
builds every error from file, line, key and fix (the line from the YAML document's key paths).
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..axes import FAMILY_ARGS

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
    "imports",
    "tracking",
)
#: backbone keys of the pruning (and merging) only: the dense run ignores them
PRUNING_KEYS = (
    "prune_layers",
    "keep_ratios",
    "tau",
    "selector_init",
    "selector_inference",
    "linkage",
    "proportional_attention",
)
BACKBONE_KEYS = (
    "family",
    "arch",
    "embed_dim",
    "depth",
    "num_heads",
    *PRUNING_KEYS,
    "drop_path_rate",
    "pretrained",
    "layer_scale",
    *(key for keys in FAMILY_ARGS.values() for key in keys),
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
    "distill",
    "method_protocol",
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
    imports: list[str] = field(default_factory=list)  # modules that register plug-in selectors
    tracking: dict[str, dict] = field(default_factory=dict)  # tracker -> settings (prunebench.tracking)

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
