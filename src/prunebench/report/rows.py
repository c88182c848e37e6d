"""Report rows: one per finished run with its change and speed-up vs its dense reference (the
dense run of the same backbone, seed and swept settings; a finetune's speed-up timed beside its
dense parent when its job did so), its setting's label, and the mean ± std per setting over
seeds.
"""

from __future__ import annotations

import math
from typing import Any

from ..axes import METHOD_AXIS, PRUNING_AXES
from ..results import Run
from .schema import EXTRA, METRICS, axis_label
from .stats import mean_sd

_RAW = ("box_ap", "mask_ap", "latency_backbone", "latency_full", "keep_ratio", "flops_backbone", "flops_full")


def _setting_label(run: Run, axes: list[str], multi_sweep: bool, multi_backbone: bool) -> str:
    parts = [run.sweep] if multi_sweep else []
    parts += [run.backbone or "?"] if multi_backbone else []
    if run.is_dense:
        parts.append("dense")
    method = run.axes.get(METHOD_AXIS)
    if method is not None:  # a method names its four axes: show it and the other settings
        axes = [a for a in axes if a not in PRUNING_AXES]
    parts += [
        ("react" if v else "no-react") if a == "reactivation" else axis_label(a, v)
        for a in axes
        if (v := run.axes.get(a)) is not None
    ]
    return "/".join(parts)


class _DenseIndex:
    """Finds a run's dense reference: the dense run of the same backbone and seed (or a parent
    checkpoint shared by every seed: seed None; same sweep preferred) whose swept non-pruning
    settings (e.g. a learning rate) agree with the run's."""

    def __init__(self, runs: list[Run]):
        self.by_seed: dict[tuple, list[tuple[Run, dict]]] = {}
        for r in runs:
            if r.is_dense:
                settings = {k: v for k, v in r.axes.items() if k not in PRUNING_AXES and v is not None}
                self.by_seed.setdefault((r.backbone, repr(r.seed)), []).append((r, settings))
        self.memo: dict[tuple, Run | None] = {}

    def find(self, run: Run) -> Run | None:
        axes = {k: v for k, v in run.axes.items() if k not in PRUNING_AXES}
        key = (run.backbone, repr(run.seed), run.sweep, repr(sorted(axes.items())))
        if key not in self.memo:  # runs of one setting share the answer: a scan per setting only
            candidates = [*self.by_seed.get(key[:2], ()), *self.by_seed.get((run.backbone, "None"), ())]
            fits = [d for d, settings in candidates if all(axes.get(k) == v for k, v in settings.items())]
            fits.sort(key=lambda d: d.sweep != run.sweep)
            self.memo[key] = fits[0] if fits else None
        return self.memo[key]


def _positive(value: Any) -> float | None:
    ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
    return float(value) if ok else None


def paired_speedup(run: Run, part: str) -> float | None:
    """``metrics.json: paired.speedup.<part>``: the finetune and its dense parent timed in the
    same process; None for runs written before it existed."""
    paired = (run.metrics or {}).get("paired")
    speedup = paired.get("speedup") if isinstance(paired, dict) else None
    return _positive(speedup.get(part)) if isinstance(speedup, dict) else None


def timing_setup(run: Run) -> str | None:
    """Where a run's latency was measured ("cpu, float32, 2 threads"), from ``latency_ms``."""
    lat = (run.metrics or {}).get("latency_ms")
    if not isinstance(lat, dict):
        return None
    parts = [str(lat[k]) for k in ("device", "dtype") if lat.get(k)]
    parts += [f"{lat['threads']} threads"] if lat.get("threads") else []
    return ", ".join(parts) or None


def off_the_shelf(run: Run) -> bool:
    """A finetune of length 0: the dense parent evaluated with a training-free method applied."""
    sched = run.spec.get("schedule") or {}
    return not run.is_dense and sched.get("iters", sched.get("epochs")) == 0


def _run_row(run: Run, dense: Run | None, label: str) -> dict:
    untrained = off_the_shelf(run)  # its own stage: kept apart from finetunes in every effect
    row: dict[str, Any] = {
        "sweep": run.sweep,
        "run_id": run.run_id,
        "label": f"{label} (off-the-shelf)" if untrained else label,
        "backbone": run.backbone,
        "stage": "off-the-shelf" if untrained else run.stage,
        "seed": run.seed,
        "n": 1,
        "axes": run.axes,
        "dense": run.is_dense,
    }
    for key in _RAW:
        row[key] = run.metric(key)
    ref = dict.fromkeys(_RAW) if dense is None else {k: dense.metric(k) for k in _RAW}
    for key in ("box_ap", "mask_ap"):
        row[f"d_{key}"] = None if None in (row[key], ref[key]) else row[key] - ref[key]
    row["speedup_paired"] = False
    for part in ("backbone", "full"):
        paired = None if run.is_dense else paired_speedup(run, part)
        lat, base = row[f"latency_{part}"], ref[f"latency_{part}"]
        row[f"speedup_{part}"] = (
            paired if paired is not None else base / lat if lat and base is not None else None
        )
        row["speedup_paired"] |= paired is not None
        flops, base = row[f"flops_{part}"], ref[f"flops_{part}"]
        row[f"flop_ratio_{part}"] = base / flops if flops and base is not None else None
    row.update(_flops_spread(run))
    lat, speedup = ref["latency_full"], row["speedup_full"]
    row["latency_full_paired"] = (
        row["latency_full"] if run.is_dense else lat / speedup if lat is not None and speedup else None
    )
    return row


def _flops_spread(run: Run) -> dict:
    """``flops_images`` (None for runs counted on their first timed image only) and the GFLOPs'
    p10 / p90 over the val images."""
    flops = (run.metrics or {}).get("flops_g")
    flops = flops if isinstance(flops, dict) else {}
    images = flops.get("images")
    out = {"flops_images": images if isinstance(images, int) and not isinstance(images, bool) else None}
    for q in ("p10", "p90"):
        block = flops.get(q) if isinstance(flops.get(q), dict) else {}
        out.update({f"flops_{part}_{q}": _positive(block.get(part)) for part in ("backbone", "full")})
    return out


def _mean_std(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    return mean_sd(values) if values else (None, None)


def _aggregate(rows: list[dict], axes: list[str]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["sweep"], row["backbone"], row["stage"], *(repr(row["axes"].get(a)) for a in axes))
        groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        agg = {
            **members[0],
            "run_id": ";".join(m["run_id"] for m in members),
            "n": len(members),
            "seed": ";".join(str(m["seed"]) for m in members),
            "speedup_paired": all(m["speedup_paired"] for m in members),
        }
        for key in METRICS + EXTRA:
            agg[key], agg[f"{key}_std"] = _mean_std([m[key] for m in members])
        out.append(agg)
    return out
