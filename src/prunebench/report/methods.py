"""The paper's comparison (``--paper`` on runs with a ``method`` axis): per method (and per four-axis
cell run beside the methods, e.g. the three fates of ``smoke-merging.yaml``) its change vs
its own dense parent with the 95 % t-interval over seeds, its speed-ups and keep ratio, beside the
values a primary source publishes; and the verdict on the headline, the prior methods' mean drop
against the paper's method's (about −1.5 vs −0.3 AP in the paper)."""

from __future__ import annotations

import math

from ..axes import METHOD_AXIS, PRUNING_AXES, id_prefix
from ..presets import OURS, PRESETS
from .schema import MethodRow, MethodVerdict, cell, short_axis
from .stats import t_interval

_PRUNING = (*PRUNING_AXES, METHOD_AXIS)


def _order(method: str) -> tuple:
    """The paper's method first, then the presets in their order, then plug-ins by name."""
    return (method != OURS, list(PRESETS).index(method) if method in PRESETS else len(PRESETS), method)


def _group(row: dict) -> tuple[str, str]:
    """(key, label) of the setting a run shares with the other methods it is compared with."""
    settings = {k: v for k, v in row["axes"].items() if k not in _PRUNING and v is not None}
    label = ", ".join(
        [str(row["backbone"]), *(f"{short_axis(k)}={cell(v)}" for k, v in sorted(settings.items()))]
    )
    return f"{row['sweep']}|{label}", label


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return math.fsum(values) / len(values) if values else None


def _interval(values: list):
    values = [v for v in values if v is not None]
    return t_interval(values) if values else None


def published(method: str, arch: str | None, paper: dict) -> dict:
    """The values a primary source publishes for ``method`` on ``arch`` (empty when none)."""
    entry = ((paper.get("methods") or {}).get("published") or {}).get(method, {}).get(arch or "")
    if not entry:
        return {}
    dense, pruned = entry["dense"], entry["pruned"]
    return {
        "d_box_ap": round(pruned["box_ap"] - dense["box_ap"], 3),
        "d_mask_ap": round(pruned["mask_ap"] - dense["mask_ap"], 3),
        "speedup_full": pruned["fps"] / dense["fps"],
        "speedup_backbone": entry.get("speedup_backbone"),
        "source": entry["source"],
    }


def compare_methods(run_rows: list[dict], paper: dict) -> tuple[list[MethodRow], list[MethodVerdict]]:
    """The comparison rows and headline verdicts from the per-run rows (one per finished run)."""
    groups: dict[str, tuple[str, dict[str, list[dict]]]] = {}
    with_method = set()  # groups with a method's run; their four-axis runs (e.g. fates) join them
    for r in run_rows:
        method = r["axes"].get(METHOD_AXIS)
        four_axes = all(r["axes"].get(a) is not None for a in PRUNING_AXES)
        if r["dense"] or (method is None and not four_axes):
            continue
        key, label = _group(r)
        if method is not None:
            with_method.add(key)
        groups.setdefault(key, (label, {}))[1].setdefault(method or id_prefix(r["axes"]), []).append(r)
    groups = {k: v for k, v in groups.items() if k in with_method}
    rows, verdicts = [], []
    multi = len(groups) > 1
    for label, by_method in groups.values():
        group = label if multi else ""
        for method in sorted(by_method, key=_order):
            runs = by_method[method]
            rows.append(
                MethodRow(
                    group,
                    method,
                    len({repr(r["seed"]) for r in runs}),
                    _interval([r["d_box_ap"] for r in runs]),
                    _interval([r["d_mask_ap"] for r in runs]),
                    _mean([r["speedup_full"] for r in runs]),
                    _mean([r["speedup_backbone"] for r in runs]),
                    _mean([r["keep_ratio"] for r in runs]),
                    published(method, runs[0]["backbone"], paper),
                )
            )
        verdicts += _headline(group, by_method, paper)
    return rows, verdicts


def _headline(group: str, by_method: dict[str, list[dict]], paper: dict) -> list[MethodVerdict]:
    prior = sorted((m for m in by_method if m in PRESETS and PRESETS[m].prior), key=_order)
    if OURS not in by_method or not prior:
        return []
    head = (paper.get("methods") or {}).get("headline") or {}
    paper_gap = head["prior_d_ap"] - head["ours_d_ap"] if head else None
    out = []
    for metric in ("d_box_ap", "d_mask_ap"):
        by_seed: dict[str, dict[str, float]] = {}
        for method in (OURS, *prior):
            for r in by_method[method]:
                if r[metric] is not None:
                    by_seed.setdefault(repr(r["seed"]), {})[method] = r[metric]
        gaps = [
            math.fsum(v[m] for m in prior if m in v) / sum(m in v for m in prior) - v[OURS]
            for v in by_seed.values()
            if OURS in v and any(m in v for m in prior)
        ]
        gap = t_interval(gaps) if gaps else None
        name = metric[2:].replace("_ap", " AP")
        out.append(MethodVerdict(group, name, prior, gap, paper_gap, *_judge(gap)))
    return out


def _judge(gap) -> tuple[str, str]:
    """The paper: prior methods lose more than its method, so the gap is below 0."""
    if gap is None:
        return "inconclusive", "no seed has both the paper's method and a prior method"
    if gap.low is None:
        return "inconclusive", "one seed: cannot be told from noise"
    if gap.high < 0:
        return "reproduced", "interval below 0: the prior methods lose more"
    if gap.low > 0:
        return "contradicted", "interval above 0: the prior methods lose less"
    return "inconclusive", "interval includes 0 (within noise)"
