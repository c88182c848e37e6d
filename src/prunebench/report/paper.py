"""The paper's reference values (``paper.json``, with their source) and this study's verdict on
each of the paper's four findings, plus its best pruned cell beside the paper's headline."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from .. import axes as facts
from ..zoo import is_eval, released_rows
from .schema import Effect, PaperCheck, Report, Verdict

PAPER_FILE = Path(__file__).with_name("paper.json")
VERDICT_METRICS = ("box_ap", "mask_ap")  # each finding is judged on both
HEADLINE = ("d_box_ap", "d_mask_ap", "speedup_full", "speedup_backbone")
_NUMBERS = (
    "dense.box_ap",
    "dense.mask_ap",
    "dense.fps",
    "pruned.box_ap",
    "pruned.mask_ap",
    "pruned.fps",
    "pruned.speedup_backbone",
    "prior.d_box_ap",
    "prior.d_mask_ap",
)


@cache
def load_paper(path: Path = PAPER_FILE) -> dict:
    """The reference values; ValueError naming the file and key when one is missing or wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path}: cannot read the paper's reference values ({e}); reinstall prunebench"
        ) from e
    for dotted in _NUMBERS:
        section, key = dotted.split(".")
        if not isinstance((data.get(section) or {}).get(key), (int, float)):
            raise ValueError(f"{path}: {dotted} must be a number")
    for i, f in enumerate(data.get("findings") or ()):
        if f.get("axis") not in facts.PAPER_DIRECTION or f.get("kind") not in ("better", "equivalent"):
            raise ValueError(
                f"{path}: findings[{i}] needs axis in {list(facts.PAPER_DIRECTION)} and "
                "kind 'better' or 'equivalent'"
            )
    if not data.get("findings") or not (data.get("source") or {}).get("cite"):
        raise ValueError(f"{path}: needs 'findings' and 'source.cite'")
    return data


def judge(effect: Effect | None, kind: str, margin: float) -> tuple[str, str]:
    """(verdict, reason) for a "better" finding (the interval must exclude 0 in the paper's
    direction: effects are first − second with the paper's better value first) or an
    "equivalent" one (the interval must lie within ±margin)."""
    if effect is None:
        return "inconclusive", "not in this study: no pairs differ only in this axis"
    if effect.low is None:
        return "inconclusive", "1 pair: no interval"
    verdict, reason = _judge_interval(effect.low, effect.high, kind, margin)
    if effect.seeds < 2:
        alone = f" (alone, the interval says {verdict})" if verdict != "inconclusive" else ""
        return "inconclusive", "one seed: cannot be told from noise" + alone
    return verdict, reason


def _judge_interval(low: float, high: float, kind: str, margin: float) -> tuple[str, str]:
    if kind == "equivalent":
        if -margin <= low and high <= margin:
            return "reproduced", f"interval within ±{margin:g}"
        if low > margin or high < -margin:
            return "contradicted", f"interval outside ±{margin:g}"
        return "inconclusive", f"interval crosses ±{margin:g}"
    if low > 0:
        return "reproduced", "interval above 0"
    if high < 0:
        return "contradicted", "interval below 0"
    return "inconclusive", "interval includes 0 (within noise)"


def _headline_row(label: str, row: dict) -> dict:
    return {
        "label": label,
        **{k: row.get(k) for k in HEADLINE},
        **{f"{k}_std": row.get(f"{k}_std") for k in HEADLINE},
    }


def headline(report: Report, paper: dict, runs: list) -> list[dict]:
    """The paper's SViT and prior methods, the released checkpoints evaluated here (``prunebench
    eval`` runs among the scanned ``runs``), and this study's best pruned cell (highest Δ box AP)
    and its cell with the paper's choice on every axis (evaluations of checkpoints are not cells
    of the study)."""
    dense, pruned, prior = paper["dense"], paper["pruned"], paper["prior"]
    out = [
        {
            "label": f"paper: {pruned['model']}",
            "d_box_ap": pruned["box_ap"] - dense["box_ap"],
            "d_mask_ap": pruned["mask_ap"] - dense["mask_ap"],
            "speedup_full": pruned["fps"] / dense["fps"],
            "speedup_backbone": pruned["speedup_backbone"],
        },
        {
            "label": f"paper: {prior['model']}",
            "d_box_ap": prior["d_box_ap"],
            "d_mask_ap": prior["d_mask_ap"],
            "speedup_full": None,
            "speedup_backbone": None,
        },
    ]
    out += released_rows(runs)  # released checkpoints evaluated here
    cells = sorted(
        (r for r in report.rows if not r["dense"] and r["d_box_ap"] is not None and not is_eval(r["axes"])),
        key=lambda r: (r["d_box_ap"], r["speedup_full"] or 0),
        reverse=True,
    )
    svit = {a: better for a, (better, _) in facts.PAPER_DIRECTION.items()}
    ours = [r for r in cells if all(r["axes"].get(a) == v for a, v in svit.items())]
    if cells and ours and ours[0] is cells[0]:
        out.append(
            _headline_row(f"this study: best cell = the paper's choices ({cells[0]['label']})", cells[0])
        )
    else:
        out += [_headline_row(f"this study: best cell ({cells[0]['label']})", cells[0])] if cells else []
        out += (
            [_headline_row(f"this study: the paper's choices ({ours[0]['label']})", ours[0])] if ours else []
        )
    return out


def check_paper(report: Report, runs: list, margin: float = 0.5) -> PaperCheck:
    """Verdicts on the paper's findings from ``report.effects`` and the headline comparison
    (``runs``: every run scanned for the report)."""
    if not margin > 0:
        raise ValueError(
            f"--margin {margin:g}: the equivalence margin must be a positive number of AP points"
        )
    paper = load_paper()
    effects = {  # a three-valued axis (pruned_tokens with merge): its paper pair's effect
        (e.axis, e.metric): e
        for e in report.effects
        if (e.first, e.second) == facts.PAPER_DIRECTION.get(e.axis)
    }
    verdicts = []
    measured = [
        m for m in VERDICT_METRICS if any(r.get(m) is not None for r in report.rows)
    ]  # box-only: no mask AP
    for i, finding in enumerate(paper["findings"], 1):
        axis, kind = finding["axis"], finding["kind"]
        better, other = (facts.value_label(axis, v) for v in facts.PAPER_DIRECTION[axis])
        direction = f"{better} > {other}" if kind == "better" else f"{better} ≈ {other} (±{margin:g} AP)"
        for metric in measured:
            effect = effects.get((axis, metric))
            verdicts.append(
                Verdict(i, finding["claim"], axis, direction, metric, effect, *judge(effect, kind, margin))
            )
    return PaperCheck(paper["source"], margin, verdicts, headline(report, paper, runs))
