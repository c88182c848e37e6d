"""The paper's released checkpoints (uzh-rpg/svit, README "Results"): what they are, what the paper
reports for them, where the official README links them, and the prunebench commands that
convert and evaluate them; plus the report rows of those that were evaluated here.

A leaf module without torch: ``prunebench zoo`` and ``--help`` start fast.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OFFICIAL_README = "https://github.com/uzh-rpg/svit#results"
#: where the converted files go in the commands ``prunebench zoo`` prints.
CONVERTED_DIR = "checkpoints"
COCO_ROOT = "data/coco"  # the official repository's layout
#: ``source`` (metrics.json) and axis value of the runs ``prunebench eval`` writes.
EVAL_SOURCE = "eval"


@dataclass(frozen=True)
class Released:
    """One released Mask R-CNN checkpoint with the numbers the official README gives for it
    (COCO val2017; FPS: ``speed_test.py``, one image, batch 1)."""

    name: str
    arch: str
    cell: str  # "dense" or the pruned cell's run-id prefix
    schedule: str
    box_ap: float
    mask_ap: float
    fps: float
    file: str  # as the official code names it (README, speed_test.py, the finetune configs' load_from)
    config: str  # the official config that trained it
    url: str  # the README's "Download" link
    dense: str | None = None  # the released dense model a pruned one was finetuned from

    @property
    def converted(self) -> str:
        return f"{CONVERTED_DIR}/{Path(self.file).stem}.prunebench.pth"

    @property
    def convert_line(self) -> str:
        return f"prunebench convert pretrained/{self.file} {self.converted}"

    @property
    def eval_line(self) -> str:
        return eval_command(self.converted, self.cell)


def eval_command(checkpoint: str, cell: str) -> str:
    """The ``prunebench eval`` line for a converted checkpoint of ``cell`` on COCO, with the
    official Gumbel test-time sampling for a pruned model."""
    sampling = " --selector-inference gumbel --seed 0" if cell != "dense" else ""
    return f"prunebench eval {checkpoint} --data {COCO_ROOT}{sampling}"


_DRIVE = "https://drive.google.com/file/d/{}/view?usp=drive_link"
RELEASED: tuple[Released, ...] = (
    Released(
        "ViT-Adapter-T",
        "deit-tiny",
        "dense",
        "3x+MS (36 epochs) from ImageNet DeiT-T",
        45.8,
        40.9,
        18.45,
        "vit-adapter-t-3x.pth",
        "configs/mask_rcnn/vit-adapter-t-3x.py",
        _DRIVE.format("1CjCTDauTXUc-FauAvqtc7aitFo4GfK_z"),
    ),
    Released(
        "SViT-Adapter-T",
        "deit-tiny",
        "preserve-react-dyn-mlp",
        "0.5x+MS finetune (6 epochs) of ViT-Adapter-T",
        45.5,
        40.7,
        22.32,
        "svit-adapter-t-0.5x.pth",
        "configs/mask_rcnn/svit-adapter-t-0.5x-ftune.py",
        _DRIVE.format("1jpslNG16YBLe6h7E1_ZYmCSxYG86Euup"),
        dense="ViT-Adapter-T",
    ),
    Released(
        "ViT-Adapter-S",
        "deit-small",
        "dense",
        "3x+MS (36 epochs) from ImageNet DeiT-S",
        48.5,
        42.8,
        11.70,
        "vit-adapter-s-3x.pth",
        "configs/mask_rcnn/vit-adapter-s-3x.py",
        _DRIVE.format("1f9brYvhuoH6xFXK_nhsd7a5y9ewDIwHm"),
    ),
    Released(
        "SViT-Adapter-S",
        "deit-small",
        "preserve-react-dyn-mlp",
        "0.33x+MS finetune (4 epochs) of ViT-Adapter-S",
        48.2,
        42.5,
        15.75,
        "svit-adapter-s-0.33x.pth",
        "configs/mask_rcnn/svit-adapter-s-0.33x-ftune.py",
        _DRIVE.format("1F0WlAWQwZ8obgkUsTT2hdkTW8raVtlq_"),
        dense="ViT-Adapter-S",
    ),
)
BY_NAME = {r.name: r for r in RELEASED}


def identify(file_name: str, exp_name: str | None) -> Released | None:
    """The released model a checkpoint is: by its published file name, or by the config it was
    trained with (``meta.exp_name`` of an official checkpoint: the config's file name)."""
    for r in RELEASED:
        if Path(file_name).name == r.file or exp_name == Path(r.config).name:
            return r
    return None


def print_zoo(console) -> None:
    """The released models as a table, then the exact commands per model."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Released checkpoints of the paper (official README: {OFFICIAL_README})")
    for col in ("model", "arch", "cell", "schedule", "box AP", "mask AP", "FPS", "file as published"):
        table.add_column(col, justify="right" if col in ("box AP", "mask AP", "FPS") else "left")
    for r in RELEASED:
        table.add_row(
            r.name, r.arch, r.cell, r.schedule, f"{r.box_ap:.1f}", f"{r.mask_ap:.1f}", f"{r.fps:.2f}", r.file
        )
    console.print(table)
    console.print(
        "Download: the official README's Results table, column 'Download' (Google Drive); save each "
        f"file under pretrained/ with the name above. COCO val2017 in {COCO_ROOT}/ "
        "(annotations/instances_val2017.json, val2017/).",
        highlight=False,
    )
    for r in RELEASED:
        console.print(f"\n[bold]{r.name}[/]  {escape(r.url)}", highlight=False, soft_wrap=True)
        console.print(f"  {escape(r.convert_line)}\n  {escape(r.eval_line)}", highlight=False, soft_wrap=True)
    parents = ", ".join(r.converted for r in RELEASED if r.cell == "dense")
    console.print(
        f"\n[bold]A study from the released parents[/]: the converted dense files ({parents}) become the "
        "dense parents of the paper's study with `schedule.dense: {checkpoint: PATH}` in the grid (one "
        "grid per arch): no 36-epoch dense training, the study then costs its finetunes only "
        "(README, 'Studies a lab can afford').",
        highlight=False,
        soft_wrap=True,
    )


# --- the report's rows of released checkpoints evaluated here ---------------------------------


def _mean(runs: list, metric: str) -> float | None:
    values = [v for run in runs if (v := run.metric(metric)) is not None]
    return statistics.fmean(values) if values else None


def is_eval(axes: dict) -> bool:
    """A run of ``prunebench eval`` (its axes say so), not a run a sweep trained."""
    return axes.get("source") == EVAL_SOURCE


def _evaluated(runs) -> dict[tuple[str, str | None], list]:
    """Finished ``prunebench eval`` runs of the released models as released (their own keep
    ratios and rate), by model name and selector inference."""
    out: dict[tuple[str, str | None], list] = {}
    for run in runs:
        ev = (run.metrics or {}).get("eval") or {}
        if is_eval(run.axes) and ev.get("zoo") in BY_NAME and ev.get("as_released"):
            out.setdefault((ev["zoo"], ev.get("selector_inference")), []).append(run)
    return out


def released_rows(runs) -> list[dict[str, Any]]:
    """Headline rows (``label``, ``d_box_ap``, ``d_mask_ap``, ``speedup_full``,
    ``speedup_backbone``) of each released pruned model evaluated here, per selector inference:
    its change against its released dense model evaluated here (means over the evaluations, e.g.
    Gumbel seeds) and the ratio of their median latencies; None where the dense one was not."""
    evaluated = _evaluated(runs)
    rows = []
    for (name, inference), mine in sorted(evaluated.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        r = BY_NAME[name]
        if r.dense is None:
            continue
        dense = evaluated.get((r.dense, None), [])
        row: dict[str, Any] = {}
        for key in ("box_ap", "mask_ap"):
            a, b = _mean(mine, key), _mean(dense, key)
            row[f"d_{key}"] = None if a is None or b is None else a - b
        for part in ("full", "backbone"):
            a, b = _mean(mine, f"latency_{part}"), _mean(dense, f"latency_{part}")
            row[f"speedup_{part}"] = b / a if a and b else None
        box, mask = _mean(mine, "box_ap"), _mean(mine, "mask_ap")
        here = f"box {box:.1f} / mask {mask:.1f}" if box is not None and mask is not None else "no AP"
        runs_text = f"{len(mine)} run{'s' * (len(mine) != 1)}"
        label = (
            f"released {name} evaluated here ({inference}, {runs_text}: {here}; paper {r.box_ap:.1f} / "
            f"{r.mask_ap:.1f}{'' if dense else f'; {r.dense} not evaluated'})"
        )
        rows.append({"label": label, **row, **{f"{k}_std": None for k in row}})
    return rows
