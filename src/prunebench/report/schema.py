"""What a report holds and how its values read: the metric columns, :class:`Effect` (one axis's
paired difference), the paper's :class:`Verdict` and :class:`PaperCheck`, :class:`Report`, and the
labels of axis values. The modules that build, judge and render a report import these; this one
imports none of them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import axes as facts
from ..axes import METHOD_AXIS, PRUNING_AXES
from ..results import Run
from .stats import POWER, Interval

# (key, header, format, higher is better): metric columns in display order.
COLUMNS = (
    ("box_ap", "box AP", "{:.1f}", True),
    ("mask_ap", "mask AP", "{:.1f}", True),
    ("d_box_ap", "Δ box", "{:+.1f}", True),
    ("d_mask_ap", "Δ mask", "{:+.1f}", True),
    ("latency_backbone", "backbone ms", "{:.1f}", False),
    ("latency_full", "full ms", "{:.1f}", False),
    ("speedup_backbone", "speed-up bb", "{:.2f}×", True),
    ("flop_ratio_backbone", "FLOP ratio bb", "{:.2f}×", True),
    ("speedup_full", "speed-up full", "{:.2f}×", True),
    ("flop_ratio_full", "FLOP ratio full", "{:.2f}×", True),
    ("keep_ratio", "keep", "{:.3f}", False),
    ("flops_backbone", "GFLOPs bb", "{:.3g}", False),
    ("flops_full", "GFLOPs full", "{:.3g}", False),
)
METRICS = tuple(c[0] for c in COLUMNS)
# Numbers the CSV and JSON exports (and the plot) carry beside the columns: GFLOPs' image count and
# spread over the val images, and the full latency rescaled to the dense reference by the speed-up.
EXTRA = (
    "flops_images",
    "flops_backbone_p10",
    "flops_backbone_p90",
    "flops_full_p10",
    "flops_full_p90",
    "latency_full_paired",
)
IDENTITY = ("sweep", "run_id", "label", "backbone", "stage", "seed")
# (key, name, format of a difference, higher is better): what each per-axis effect is measured on.
EFFECT_METRICS = (
    ("box_ap", "box AP", "{:+.2f}", True),
    ("mask_ap", "mask AP", "{:+.2f}", True),
    ("latency_full", "full ms", "{:+.1f}", False),
    ("latency_backbone", "backbone ms", "{:+.1f}", False),
    ("speedup_full", "speed-up full ×", "{:+.3f}", True),
    ("speedup_backbone", "speed-up bb ×", "{:+.3f}", True),
)


# --- labels ---------------------------------------------------------------------------------


def short_axis(axis: str) -> str:
    return axis.rsplit(".", 1)[-1]


def cell(value: Any) -> str:
    """An axis value in a table cell."""
    if value is None:
        return "—"
    return (
        str(value).lower()
        if isinstance(value, bool)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def axis_label(axis: str, value: Any) -> str:
    """How one axis value reads in sentences and legends."""
    if axis == METHOD_AXIS:
        return str(value)
    return facts.value_label(axis, value) if axis in PRUNING_AXES else f"{short_axis(axis)}={cell(value)}"


@dataclass
class Effect:
    """Change of one metric when only ``axis`` changes: the mean of (first − second) over the
    pairs of finished runs that agree in everything else, with its 95 % t-interval."""

    axis: str
    first: Any
    second: Any
    metric: str
    pairs: int
    seeds: int  # distinct seeds among the pairs
    mean: float
    sd: float | None
    low: float | None
    high: float | None
    first_better: int
    second_better: int
    pairs_needed: int | None  # for 80 % power at alpha 0.05, at the observed size and spread

    @property
    def comparison(self) -> str:
        return f"{axis_label(self.axis, self.first)} vs {axis_label(self.axis, self.second)}"

    @property
    def within_noise(self) -> bool:
        """The interval includes 0 (also when there is no interval: one pair)."""
        return self.low is None or self.low <= 0 <= self.high

    @property
    def seeds_needed(self) -> int | None:
        """Seeds of this grid that give ``pairs_needed`` pairs."""
        if self.pairs_needed is None:
            return None
        return max(2, math.ceil(self.pairs_needed / (self.pairs / self.seeds)))

    @property
    def reading(self) -> str:
        """How to read the effect: "1 pair" (no interval), "1 seed" (not separable from seed
        noise), "within noise" (interval includes 0) or "" (interval excludes 0)."""
        if self.low is None:
            return "1 pair"
        if self.seeds < 2:
            return "1 seed"
        return "within noise" if self.within_noise else ""


@dataclass
class Verdict:
    finding: int  # 1-based, as listed in paper.json
    claim: str
    axis: str
    paper: str  # the paper's direction: "preserve > discard", "mlp ≈ gating (±0.5 AP)"
    metric: str
    effect: Effect | None
    verdict: str  # reproduced | contradicted | inconclusive
    reason: str


@dataclass
class MethodRow:
    """One method of the paper's comparison: its change vs its own dense parent (95 % t-interval
    over seeds), mean speed-ups and keep ratio, and the published values (None: no primary source
    states them)."""

    group: str  # the setting its runs share (backbone, swept keys)
    method: str
    seeds: int
    d_box_ap: Interval | None
    d_mask_ap: Interval | None
    speedup_full: float | None
    speedup_backbone: float | None
    keep_ratio: float | None
    published: dict  # d_box_ap, d_mask_ap, speedup_full, speedup_backbone, source


@dataclass
class MethodVerdict:
    """The headline: the prior methods' mean change minus the paper's method's, per seed, with
    its 95 % t-interval over seeds (the paper: about −1.5 vs −0.3 AP)."""

    group: str
    metric: str
    prior: list[str]
    gap: Interval | None
    paper_gap: float | None
    verdict: str  # reproduced | contradicted | inconclusive
    reason: str


@dataclass
class PaperCheck:
    source: dict
    margin: float
    verdicts: list[Verdict]
    headline: list[dict]  # label, d_box_ap, d_mask_ap, speedup_full, speedup_backbone (+ _std)
    methods: list[MethodRow] = field(default_factory=list)  # with a ``method`` axis
    method_verdicts: list[MethodVerdict] = field(default_factory=list)


@dataclass
class Report:
    root: Path
    axes: list[str]  # axis names, pruning axes first
    rows: list[dict]  # one per run, or per setting when ``aggregated``
    aggregated: bool
    effects: list[Effect]
    not_done: list[Run]
    multi_sweep: bool
    multi_backbone: bool
    timing: Counter = field(default_factory=Counter)  # latency setup ("cpu, float32, 2 threads") -> runs
    paired: tuple[int, int] = (0, 0)  # finetunes with a same-process speed-up, finished finetunes
    paper: PaperCheck | None = None  # with ``--paper``
    metric_warnings: list[str] = field(default_factory=list)  # done runs with a metric that is not a number

    def notes(self) -> list[str]:
        """Warnings every format prints below the effects: one seed, mixed timing setups, where
        the speed-ups come from."""
        out = []
        one_seed = [e for e in self.effects if e.seeds < 2]
        if one_seed:
            sized = [
                f"{e.comparison} {e.pairs_needed} pairs (≈ {e.seeds_needed} seeds of this grid)"
                for e in one_seed
                if e.metric == "box_ap" and e.pairs_needed is not None
            ]
            need = (
                "needs about, for box AP: " + "; ".join(sized)
                if sized
                else "cannot be sized yet: no comparison has two pairs"
            )
            out.append(
                "One seed: these effects cannot be told from noise — a single-seed spread between "
                "pairs confounds seed noise with the effect. Resolving an effect of the observed size "
                f"at the observed pair spread (α = 0.05, power {POWER:.0%}) {need}."
            )
        if len(self.timing) > 1:
            setups = ", ".join(f"{k} ({n} run{'s' * (n != 1)})" for k, n in self.timing.most_common())
            out.append(f"Latencies come from different setups: {setups}; compare them only within one.")
        out += self._flops_note()
        paired, finetunes = self.paired
        if paired:
            out.append(
                f"Speed-ups: {paired} of {finetunes} finetunes timed beside their dense parent in the "
                "same process (paired); the rest are ratios to the dense run's median latency."
            )
        return out

    def _flops_note(self) -> list[str]:
        """What the GFLOPs columns cover: how many val images, or the first timed image only."""
        counted = [r.get("flops_images") for r in self.rows if r.get("flops_backbone") is not None]
        if not counted:
            return []
        images = sorted({round(n) for n in counted if n})
        first = len(counted) - sum(1 for n in counted if n)
        parts = []
        if images:
            span = f"{images[0]}" if len(images) == 1 else f"{images[0]}–{images[-1]}"
            parts.append(
                f"means per image over each run's val images ({span} images, each at its own size and "
                "kept tokens; p10 / p90 in the CSV and JSON exports); a FLOP ratio is the dense "
                "reference's GFLOPs over the run's"
            )
        if first:
            parts.append(
                f"{first} row{'s' * (first != 1)} from an earlier prunebench count the first timed image only"
            )
        return ["GFLOPs: " + "; ".join(parts) + "."]
