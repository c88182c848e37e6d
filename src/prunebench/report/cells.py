"""The cell strings every text format shares (terminal, Markdown, LaTeX): the displayed columns
of the runs table and each row's cells, one effect, one verdict and one headline row as strings,
the tables' headers, and the line that cites the paper's reference values.
"""

from __future__ import annotations

from ..axes import AXIS_HEADERS
from ..presets import OURS, PRESETS
from .paper import HEADLINE, load_paper
from .schema import (
    COLUMNS,
    EFFECT_METRICS,
    Effect,
    MethodRow,
    MethodVerdict,
    Report,
    Verdict,
    cell,
    short_axis,
)

EFFECTS_TITLE = (
    "Per-axis effects: mean paired difference (first − second) over runs that differ only in "
    "that axis, 95 % t-interval over the pairs (n−1 df)"
)
EFFECT_HEADERS = (
    "comparison",
    "metric",
    "mean Δ",
    "95 % CI",
    "pairs",
    "better 1st:2nd",
    "80 % power needs",
    "reading",
)
VERDICT_HEADERS = ("#", "finding", "paper", "metric", "mean Δ", "95 % CI", "pairs", "verdict", "why")
HEADLINE_HEADERS = ("", "Δ box AP", "Δ mask AP", "speed-up full", "speed-up bb")
_EFFECT_FMT = {k: (name, fmt) for k, name, fmt, _ in EFFECT_METRICS}
_COLUMN_FMT = {c[0]: c[2] for c in COLUMNS}


def fmt_metric(row: dict, key: str, fmt: str, pm: str = " ± ") -> str:
    v = row.get(key)
    if v is None:
        return "—"
    text = fmt.format(v)
    std = row.get(f"{key}_std")
    return text + pm + fmt.format(std).lstrip("+").rstrip("×") if std is not None else text


def _display_columns(report: Report) -> list[tuple[str, str]]:
    """(key, header) of the displayed table: identity, axes (which name each setting), metrics."""
    cols = [] if report.aggregated else [("run_id", "run")]
    cols += [("sweep", "sweep")] * report.multi_sweep + [("backbone", "backbone")] * report.multi_backbone
    cols += [("n", "seeds")] if report.aggregated else [("seed", "seed")]
    cols += [(f"axis:{a}", AXIS_HEADERS.get(a, short_axis(a))) for a in report.axes]
    return cols + [(c[0], c[1]) for c in COLUMNS]


def _cells(report: Report, row: dict, pm: str) -> list[str]:
    out = []
    for key, _ in _display_columns(report):
        if key.startswith("axis:"):
            out.append(cell(row["axes"].get(key[5:])))
        elif key in _COLUMN_FMT:
            out.append(fmt_metric(row, key, _COLUMN_FMT[key], pm))
        else:
            out.append(cell(row.get(key)))
    return out


def _interval(fmt: str, low: float | None, high: float | None) -> str:
    return f"[{fmt.format(low)}, {fmt.format(high)}]" if low is not None else "—"


def effect_cells(e: Effect) -> list[str]:
    """One effect as the strings of EFFECT_HEADERS."""
    name, fmt = _EFFECT_FMT[e.metric]
    power = f"{e.pairs_needed} pairs ≈ {e.seeds_needed} seeds" if e.pairs_needed is not None else "—"
    return [
        e.comparison,
        name,
        fmt.format(e.mean),
        _interval(fmt, e.low, e.high),
        str(e.pairs),
        f"{e.first_better}:{e.second_better}",
        power,
        e.reading,
    ]


def verdict_cells(v: Verdict) -> list[str]:
    """One verdict as the strings of VERDICT_HEADERS."""
    name, fmt = _EFFECT_FMT[v.metric]
    e = v.effect
    numbers = [fmt.format(e.mean), _interval(fmt, e.low, e.high), str(e.pairs)] if e else ["—", "—", "0"]
    return [str(v.finding), v.claim, v.paper, name, *numbers, v.verdict, v.reason]


def headline_cells(row: dict) -> list[str]:
    fmts = ("{:+.2f}", "{:+.2f}", "{:.2f}×", "{:.2f}×")
    return [row["label"], *(fmt_metric(row, k, f) for k, f in zip(HEADLINE, fmts))]


def _source(report: Report) -> str:
    s = report.paper.source
    return f'Reference values: {s["cite"]}, "{s["title"]}" ({s["paper"]}; code {s["code"]}); {s["where"]}.'


METHODS_TITLE = (
    "The paper's comparison: each method vs its own dense parent (Δ: mean over seeds with its "
    "95 % t-interval), this study beside the published values"
)
METHOD_HEADERS = (
    "method",
    "seeds",
    "Δ box AP",
    "Δ mask AP",
    "speed-up full",
    "speed-up bb",
    "keep",
    "paper Δ box",
    "paper Δ mask",
    "paper speed-up full",
    "paper speed-up bb",
)
METHOD_VERDICT_HEADERS = (
    "metric",
    "prior methods",
    f"gap (prior − {OURS})",
    "95 % CI",
    "seeds",
    "paper",
    "verdict",
    "why",
)


def _mean_ci(iv, fmt: str = "{:+.2f}") -> str:
    if iv is None:
        return "—"
    return fmt.format(iv.mean) + ("" if iv.low is None else " " + _interval(fmt, iv.low, iv.high))


def _num(value, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def method_cells(row: MethodRow) -> list[str]:
    """One method of the comparison as the strings of METHOD_HEADERS (its group, if any, first)."""
    pub = row.published
    return [
        f"{row.group}: {row.method}" if row.group else row.method,
        str(row.seeds),
        _mean_ci(row.d_box_ap),
        _mean_ci(row.d_mask_ap),
        _num(row.speedup_full, "{:.2f}×"),
        _num(row.speedup_backbone, "{:.2f}×"),
        _num(row.keep_ratio, "{:.3f}"),
        _num(pub.get("d_box_ap"), "{:+.1f}"),
        _num(pub.get("d_mask_ap"), "{:+.1f}"),
        _num(pub.get("speedup_full"), "{:.2f}×"),
        _num(pub.get("speedup_backbone"), "{:.2f}×"),
    ]


def method_verdict_cells(v: MethodVerdict) -> list[str]:
    """The headline verdict as the strings of METHOD_VERDICT_HEADERS."""
    gap = v.gap
    metric = f"{v.group}: {v.metric}" if v.group else v.metric
    return [
        metric,
        ", ".join(v.prior),
        _num(gap and gap.mean, "{:+.2f}"),
        "—" if gap is None else _interval("{:+.2f}", gap.low, gap.high),
        str(gap.n if gap else 0),
        _num(v.paper_gap, "{:+.1f}"),
        v.verdict,
        v.reason,
    ]


def methods_source(report: Report) -> str:
    """Where each method and the published values of the comparison come from."""
    methods = dict.fromkeys(row.method for row in report.paper.methods)
    defined = ", ".join(
        f"{m} ({PRESETS[m].source if m in PRESETS else 'a plug-in selector'})" for m in methods
    )
    sources = sorted({row.published["source"] for row in report.paper.methods if row.published})
    where = load_paper().get("methods", {}).get("where", "")
    return f"Methods: {defined}. Published values: " + "; ".join([*sources, where])
