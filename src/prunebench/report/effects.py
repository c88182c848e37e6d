"""Per-axis effects: for each axis with two or more values among the pruned runs (e.g.
``pruned_tokens``: discard / preserve / merge), for each pair of its values, the paired differences
(first − second) between runs that agree in everything else, one :class:`Effect` per metric with
its 95 % t-interval, win counts and the pairs 80 % power would need.
"""

from __future__ import annotations

from itertools import combinations, product
from typing import Any

from .. import axes as facts
from .schema import EFFECT_METRICS, Effect
from .stats import pairs_needed, t_interval


def _order(axis: str, values: dict[str, Any]) -> tuple[Any, Any]:
    """(first, second) of an axis with two values: the paper's direction for a pruning axis,
    else the larger value first."""
    first, second = facts.PAPER_DIRECTION.get(axis, (None, None))
    if {repr(first), repr(second)} != set(values):
        first, second = sorted(values.values(), key=lambda v: (str(type(v)), v), reverse=True)
    return first, second


def _pairs(axis: str, values: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Each pair of an axis's values as (first, second), the paper's pair first."""
    pairs = [_order(axis, {a: values[a], b: values[b]}) for a, b in combinations(sorted(values), 2)]
    return sorted(pairs, key=lambda p: p != facts.PAPER_DIRECTION.get(axis))


def compute_effects(rows: list[dict], axes: list[str]) -> list[Effect]:
    """For each axis with two or more values among the pruned runs (``rows``: one per run) and
    each pair of them, pair the runs that agree in every other axis, the sweep, backbone, stage
    and seed; one Effect per metric of EFFECT_METRICS that the pairs have."""
    pruned = [r for r in rows if not r["dense"]]
    effects = []
    for axis in axes:
        values = {repr(v): v for r in pruned if (v := r["axes"].get(axis)) is not None}
        for first, second in _pairs(axis, values):
            effects += _effects(pruned, axes, axis, first, second)
    return effects


def _effects(pruned: list[dict], axes: list[str], axis: str, first: Any, second: Any) -> list[Effect]:
    """The effects of ``first`` − ``second`` on ``axis``, one per metric."""
    effects = []
    others = [a for a in axes if a != axis]
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in pruned:
        key = (
            r["sweep"],
            r["backbone"],
            r["stage"],
            r["seed"],
            *(repr(r["axes"].get(a)) for a in others),
        )
        groups.setdefault(key, {}).setdefault(repr(r["axes"].get(axis)), []).append(r)
    pairs = [
        (a, b) for g in groups.values() for a, b in product(g.get(repr(first), ()), g.get(repr(second), ()))
    ]
    for key, _, _, higher in EFFECT_METRICS:
        used = [(a, b) for a, b in pairs if a[key] is not None and b[key] is not None]
        if not used:
            continue
        diffs = [a[key] - b[key] for a, b in used]
        ci = t_interval(diffs)
        wins = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        effects.append(
            Effect(
                axis,
                first,
                second,
                key,
                ci.n,
                len({repr(a["seed"]) for a, _ in used}),
                ci.mean,
                ci.sd,
                ci.low,
                ci.high,
                *(wins if higher else wins[::-1]),
                pairs_needed(ci.mean, ci.sd),
            )
        )
    return effects
