"""The cell strings every text format shares (terminal, Markdown, LaTeX): the displayed columns
of the runs table and each row's cells, one effect, one verdict and one headline row as strings,
the tables' headers, and the line that cites the paper's reference values.
"""

from __future__ import annotations

from ..axes import AXIS_HEADERS
from .paper import HEADLINE
from .schema import COLUMNS, EFFECT_METRICS, Effect, Report, Verdict, cell, short_axis

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
