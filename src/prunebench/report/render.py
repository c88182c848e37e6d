"""Report -> text files: CSV, Markdown, JSON and LaTeX (``render``; the terminal table is
:mod:`.terminal`). Every format shows the same runs, effects, notes and verdicts; CSV and JSON
as flat records at full precision, Markdown and LaTeX with the terminal's cell strings.
"""

from __future__ import annotations

import csv
import io
import json

from ..results import detail
from .cells import (
    EFFECT_HEADERS,
    EFFECTS_TITLE,
    HEADLINE_HEADERS,
    METHOD_HEADERS,
    METHOD_VERDICT_HEADERS,
    METHODS_TITLE,
    VERDICT_HEADERS,
    _cells,
    _display_columns,
    _source,
    effect_cells,
    headline_cells,
    method_cells,
    method_verdict_cells,
    methods_source,
    verdict_cells,
)
from .schema import COLUMNS, EXTRA, IDENTITY, METRICS, Effect, MethodRow, MethodVerdict, Report, Verdict

FORMATS = ("table", "csv", "markdown", "json", "latex")


# --- flat records (CSV, JSON) ---------------------------------------------------------------


def flat_rows(report: Report) -> list[dict]:
    """Rows as flat dicts for CSV/JSON; runs not done follow with their state. Numbers keep full
    precision (as everywhere in the exports), so formatting one gives the table's cell."""
    out = []
    for row in report.rows:
        flat = {k: row[k] for k in (*IDENTITY, "n")}
        flat.update({a: row["axes"].get(a) for a in report.axes})
        for key in METRICS:
            flat[key] = row[key]
            if report.aggregated:
                flat[f"{key}_std"] = row.get(f"{key}_std")
        flat["speedup_paired"] = row["speedup_paired"]
        flat.update({key: row.get(key) for key in EXTRA})
        out.append({**flat, "state": "done", "note": ""})
    for run in report.not_done:
        flat = dict.fromkeys(out[0] if out else (*IDENTITY, "n", *report.axes))
        flat.update(
            sweep=run.sweep,
            run_id=run.run_id,
            backbone=run.backbone,
            stage=run.stage,
            seed=run.seed,
            n=0,
            **{a: run.axes.get(a) for a in report.axes},
        )
        out.append({**flat, "state": run.state, "note": detail(run)})
    return out


def effect_record(e: Effect) -> dict:
    return {
        "axis": e.axis,
        "first": e.first,
        "second": e.second,
        "metric": e.metric,
        "mean": e.mean,
        "ci_low": e.low,
        "ci_high": e.high,
        "sd": e.sd,
        "pairs": e.pairs,
        "seeds": e.seeds,
        "first_better": e.first_better,
        "second_better": e.second_better,
        "pairs_needed": e.pairs_needed,
        "seeds_needed": e.seeds_needed,
        "reading": e.reading,
    }


def verdict_record(v: Verdict, margin: float) -> dict:
    e = v.effect
    return {
        "finding": v.finding,
        "claim": v.claim,
        "axis": v.axis,
        "paper": v.paper,
        "metric": v.metric,
        "mean": e and e.mean,
        "ci_low": e and e.low,
        "ci_high": e and e.high,
        "pairs": e.pairs if e else 0,
        "verdict": v.verdict,
        "reason": v.reason,
        "margin": margin,
    }


def _interval_record(prefix: str, iv) -> dict:
    keys = ("mean", "ci_low", "ci_high", "sd")
    return {f"{prefix}_{k}": None if iv is None else getattr(iv, k.removeprefix("ci_")) for k in keys}


def method_record(row: MethodRow) -> dict:
    return {
        "group": row.group,
        "method": row.method,
        "seeds": row.seeds,
        **_interval_record("d_box_ap", row.d_box_ap),
        **_interval_record("d_mask_ap", row.d_mask_ap),
        "speedup_full": row.speedup_full,
        "speedup_backbone": row.speedup_backbone,
        "keep_ratio": row.keep_ratio,
        **{f"paper_{k}": v for k, v in row.published.items()},
    }


def method_verdict_record(v: MethodVerdict) -> dict:
    return {
        "group": v.group,
        "metric": v.metric,
        "prior": ", ".join(v.prior),
        **_interval_record("gap", v.gap),
        "seeds": v.gap.n if v.gap else 0,
        "paper_gap": v.paper_gap,
        "verdict": v.verdict,
        "reason": v.reason,
    }


def records(report: Report) -> dict[str, list[dict]]:
    """table name -> flat records: runs, effects and, with ``--paper``, verdicts, headline and
    (with a ``method`` axis) the methods' comparison and its verdict."""
    out = {"run": flat_rows(report), "effect": [effect_record(e) for e in report.effects]}
    if report.paper:
        out["verdict"] = [verdict_record(v, report.paper.margin) for v in report.paper.verdicts]
        out["headline"] = report.paper.headline
        out["method"] = [method_record(r) for r in report.paper.methods]
        out["method_verdict"] = [method_verdict_record(v) for v in report.paper.method_verdicts]
    return out


def to_csv(report: Report) -> str:
    """One CSV: the first column ``table`` says what a row is (run, effect, verdict, headline);
    each kind fills its own columns."""
    rows = [{"table": name, **r} for name, recs in records(report).items() for r in recs]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def to_json(report: Report) -> str:
    recs = records(report)
    data = {
        "root": str(report.root),
        "aggregated": report.aggregated,
        "axes": report.axes,
        "rows": recs["run"],
        "effects": recs["effect"],
        "interval": "95 % t-interval over pairs, n-1 df",
        "notes": report.notes(),
    }
    if report.paper:
        data["paper"] = {
            "source": report.paper.source,
            "margin": report.paper.margin,
            "verdicts": recs["verdict"],
            "headline": recs["headline"],
            "methods": recs["method"],
            "method_verdicts": recs["method_verdict"],
        }
    return json.dumps(data, indent=2, default=str) + "\n"


# --- Markdown and LaTeX ---------------------------------------------------------------------


def _md_table(headers, rows) -> list[str]:
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows),
    ]


def to_markdown(report: Report) -> str:
    lines = _md_table(
        [h for _, h in _display_columns(report)], [_cells(report, r, " ± ") for r in report.rows]
    )
    if report.effects:
        lines += [
            "",
            f"**{EFFECTS_TITLE}**",
            "",
            *_md_table(EFFECT_HEADERS, map(effect_cells, report.effects)),
        ]
    lines += [line for note in report.notes() for line in ("", f"> {note}")]
    if report.paper:
        lines += [
            "",
            "**The paper's findings**",
            "",
            *_md_table(VERDICT_HEADERS, map(verdict_cells, report.paper.verdicts)),
            "",
            *_md_table(HEADLINE_HEADERS, map(headline_cells, report.paper.headline)),
            "",
            _source(report),
        ]
        if report.paper.methods:
            lines += [
                "",
                f"**{METHODS_TITLE}**",
                "",
                *_md_table(METHOD_HEADERS, map(method_cells, report.paper.methods)),
                "",
                *_md_table(METHOD_VERDICT_HEADERS, map(method_verdict_cells, report.paper.method_verdicts)),
                "",
                methods_source(report),
            ]
    if report.not_done:
        not_done = ([r.run_id, r.sweep, r.state, detail(r)] for r in report.not_done)
        lines += ["", "**Not done**", "", *_md_table(("run", "sweep", "state", "note"), not_done)]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
        ("—", "--"),
        ("−", "-"),
        ("×", r"$\times$"),
        ("Δ", r"$\Delta$"),
        ("±", r"$\pm$"),
        ("≈", r"$\approx$"),
        ("α", r"$\alpha$"),
    ):
        text = text.replace(a, b)
    return text


def _tex_table(spec: str, headers, rows) -> list[str]:
    return [
        r"\begin{tabular}{" + spec + "}",
        r"\toprule",
        " & ".join(map(_tex, headers)) + r" \\",
        r"\midrule",
        *(" & ".join(map(_tex, r)) + r" \\" for r in rows),
        r"\bottomrule",
        r"\end{tabular}",
    ]


def to_latex(report: Report) -> str:
    cols = _display_columns(report)
    lines = _tex_table(
        "l" * (len(cols) - len(COLUMNS)) + "r" * len(COLUMNS),
        [h for _, h in cols],
        [_cells(report, r, " ± ") for r in report.rows],
    )
    if report.effects:
        lines += [
            "",
            f"% {EFFECTS_TITLE}",
            *_tex_table("llrrrrll", EFFECT_HEADERS, map(effect_cells, report.effects)),
        ]
    lines += [f"% {_tex(note)}" for note in report.notes()]
    if report.paper:
        lines += [
            "",
            *_tex_table("rlllrrrll", VERDICT_HEADERS, map(verdict_cells, report.paper.verdicts)),
            "",
            *_tex_table("lrrrr", HEADLINE_HEADERS, map(headline_cells, report.paper.headline)),
            f"% {_tex(_source(report))}",
        ]
        if report.paper.methods:
            lines += [
                "",
                f"% {_tex(METHODS_TITLE)}",
                *_tex_table("lrrrrrrrrrr", METHOD_HEADERS, map(method_cells, report.paper.methods)),
                "",
                *_tex_table(
                    "llrrrrll",
                    METHOD_VERDICT_HEADERS,
                    map(method_verdict_cells, report.paper.method_verdicts),
                ),
                f"% {_tex(methods_source(report))}",
            ]
    lines += [f"% not done: {r.run_id} ({r.sweep}) {r.state}: {detail(r)}" for r in report.not_done]
    return "\n".join(lines) + "\n"


def render(report: Report, fmt: str) -> str:
    """``report`` as text in ``fmt`` (any of FORMATS but ``table``)."""
    return {"csv": to_csv, "json": to_json, "markdown": to_markdown, "latex": to_latex}[fmt](report)
