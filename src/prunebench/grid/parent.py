"""A dense parent given as a checkpoint (``schedule.dense: {checkpoint: PATH}``) instead of trained,
and the finetunes of length 0 (off-the-shelf cells) that evaluate it with a method applied.

``checkpoint`` is one path (the parent of every seed) or a list of one path per seed, in the order
of ``seeds``; each path is relative to the grid file, then the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..axes import PRUNING_AXES
from ..presets import plugin_selectors, preset
from .schema import _Checker

KEY = "schedule.dense.checkpoint"


def split_parent(c: _Checker, raw: Any, grid_path: Path) -> tuple[Any, list[str] | None]:
    """``raw`` (the YAML ``schedule`` section) without a checkpoint parent, and the parent's
    resolved paths (None: the grid trains its dense parent)."""
    dense = raw.get("dense") if isinstance(raw, dict) else None
    if not isinstance(dense, dict) or "checkpoint" not in dense:
        return raw, None
    extra = sorted(set(dense) - {"checkpoint"})
    if extra:
        raise c.fail(
            f"schedule.dense.{extra[0]}",
            "a dense parent from a checkpoint is not trained, so it takes no schedule",
            "write `dense: {checkpoint: PATH}` alone, or drop `checkpoint` to train the parent",
        )
    given = dense["checkpoint"]
    paths = given if isinstance(given, list) and given else [given]
    resolved = []
    for i, p in enumerate(paths):
        key = KEY if len(paths) == 1 and not isinstance(given, list) else f"{KEY}[{i}]"
        c.typed(key, p, str, "the path of a dense detector checkpoint")
        raw_path = Path(p).expanduser()
        candidates = [raw_path] if raw_path.is_absolute() else [grid_path.parent / raw_path, raw_path]
        found = next((q for q in candidates if q.is_file()), None)
        if found is None:
            raise c.fail(
                key,
                f"checkpoint {p!r} not found (looked next to {grid_path.name} and in the working directory)",
                "give the checkpoint of a finished dense run (its work_dir/*.pth) or one written by "
                "`prunebench convert`",
            )
        resolved.append(str(found.resolve()))
    rest = {k: v for k, v in raw.items() if k != "dense"}
    return rest, resolved if isinstance(given, list) else resolved[:1]


def parent_per_seed(c: _Checker, paths: list[str], seeds: list[int]) -> dict:
    """``{"checkpoint": {seed: path}}``; one path serves every seed, a list gives one per seed."""
    if len(paths) == 1:
        return {"checkpoint": dict.fromkeys(seeds, paths[0]), "shared": True}
    if len(paths) != len(seeds):
        raise c.fail(
            KEY,
            f"{len(paths)} checkpoints for {len(seeds)} seeds",
            "give one checkpoint for all seeds, or a list with one per seed in the order of `seeds`",
        )
    return {"checkpoint": dict(zip(seeds, paths)), "shared": False}


def training_free(method: str | None) -> bool:
    """Whether a method can be evaluated without finetuning: its tokens are chosen by no learned
    selector (a preset whose ``selector`` is not a registered selector: the class-attention
    methods, merging). The class-attention methods' fresh class token stays at its seeded init."""
    if method is None:
        return False
    learned = (*PRUNING_AXES["selector"], *plugin_selectors())
    return preset(method).axes.get("selector") not in learned


def length(stage: dict) -> int | None:
    """A stage's length in its unit (None when it has none: a checkpoint parent)."""
    return stage.get("iters", stage.get("epochs"))


def check_off_the_shelf(grid, cell: dict, finetune: dict, method: str | None) -> None:
    """A finetune of length 0 must be of a training-free method; GridError naming it otherwise."""
    if length(finetune) != 0 or training_free(method):
        return
    what = f"method {method!r}" if method else f"selector {cell.get('selector')!r}"
    raise grid.error(
        "schedule.finetune",
        f"a finetune of length 0 (off-the-shelf) for cell {cell}: {what} has learned parameters "
        "(a fresh selector is random), so it cannot be evaluated without training",
        "give it a finetune length (per method through `per_value`), or use a training-free method "
        "(evit, evo-vit, ats, ...)",
    )
