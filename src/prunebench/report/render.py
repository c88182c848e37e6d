"""Report -> text: the terminal table (Rich), CSV, Markdown, JSON and LaTeX. Every format shows
the same runs, effects, notes and verdicts; the text formats share their cell strings."""

from __future__ import annotations

import csv
import io
import json

from ..axes import AXIS_HEADERS
from ..results import STYLES, detail
from .build import COLUMNS, EFFECT_METRICS, IDENTITY, METRICS, Effect, Report, cell, short_axis
from .paper import HEADLINE, Verdict

FORMATS = ("table", "csv", "markdown", "json", "latex")
# Columns a narrow terminal hides first (CSV, JSON, Markdown and LaTeX always have them all).
OPTIONAL = ("flops_full", "speedup_backbone", "flops_backbone", "keep_ratio", "d_mask_ap", "latency_backbone")
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
VERDICT_STYLES = {"reproduced": "green", "contradicted": "red", "inconclusive": "yellow"}


# --- cell strings (shared by every text format) ---------------------------------------------


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


def records(report: Report) -> dict[str, list[dict]]:
    """table name -> flat records: runs, effects and, with ``--paper``, verdicts and headline."""
    out = {"run": flat_rows(report), "effect": [effect_record(e) for e in report.effects]}
    if report.paper:
        out["verdict"] = [verdict_record(v, report.paper.margin) for v in report.paper.verdicts]
        out["headline"] = report.paper.headline
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
    lines += [f"% not done: {r.run_id} ({r.sweep}) {r.state}: {detail(r)}" for r in report.not_done]
    return "\n".join(lines) + "\n"


def render(report: Report, fmt: str) -> str:
    """``report`` as text in ``fmt`` (any of FORMATS but ``table``)."""
    return {"csv": to_csv, "json": to_json, "markdown": to_markdown, "latex": to_latex}[fmt](report)


# --- terminal -------------------------------------------------------------------------------


def _box_table(
    title: str,
    headers: list[list[str]],
    cells: list[list[str]],
    widths: list[int],
    right: list[bool],
    row_styles: list[str | None],
):
    """A table drawn as one Rich Text in Rich's heavy-head box style: thousands of rows print
    in milliseconds, where a Rich Table measures and wraps every cell."""
    from rich.text import Text

    def rule(left: str, mid: str, end: str, ch: str) -> str:
        return left + mid.join(ch * (w + 2) for w in widths) + end + "\n"

    def line(values: list[str], sep: str) -> str:
        padded = (f" {v.rjust(w) if r else v.ljust(w)} " for v, w, r in zip(values, widths, right))
        return sep + sep.join(padded) + sep + "\n"

    out = Text()
    out.append(title.center(sum(w + 3 for w in widths) + 1).rstrip() + "\n", style="italic")
    out.append(rule("┏", "┳", "┓", "━"))
    for k in range(max(map(len, headers), default=0)):
        out.append(line([h[k] if k < len(h) else "" for h in headers], "┃"), style="bold")
    out.append(rule("┡", "╇", "┩", "━"))
    for row, style in zip(cells, row_styles):
        out.append(line(row, "│"), style=style or "")
    out.append(rule("└", "┴", "┘", "─"))
    return out


def print_table(report: Report, console) -> None:
    """The report for a terminal (or a text file): the runs, then the effects, notes, verdicts
    and the runs not done."""
    from rich.table import Table
    from rich.text import Text

    title = f"{report.root} — {len(report.rows)} {'settings' if report.aggregated else 'runs'}" + (
        " (mean ± std over seeds)" if report.aggregated else ""
    )
    cols = _display_columns(report)
    cells = [_cells(report, row, "±") for row in report.rows]
    headers = [h.replace("_", " ").split() for _, h in cols]  # one word per line: narrow columns
    widths = [max([*map(len, words), *(len(c[i]) for c in cells)]) for i, words in enumerate(headers)]
    shown, hidden = list(range(len(cols))), []
    keys = [k for k, _ in cols]
    for key in OPTIONAL:  # drop whole columns rather than truncate numbers
        if sum(widths[i] + 3 for i in shown) + 1 <= console.width:
            break
        shown.remove(keys.index(key))
        hidden.append(dict(cols)[key])
    n_id = len(cols) - len(COLUMNS)
    console.print(
        _box_table(
            title,
            [headers[i] for i in shown],
            [[c[i] for i in shown] for c in cells],
            [widths[i] for i in shown],
            [i >= n_id for i in shown],
            ["bold cyan" if row["dense"] else None for row in report.rows],
        ),
        end="",
        soft_wrap=True,
    )
    if hidden:
        console.print(
            f"[dim]hidden to fit the terminal: {', '.join(hidden)} (widen it, or use --format csv)[/]"
        )
    if report.effects:
        _print_effects(report, console, Table, Text)
    for note in report.notes():
        console.print(Text(f"note: {note}", style="yellow"))
    if report.paper:
        _print_paper(report, console, Table, Text)
    if report.not_done:
        nd = Table(title=f"{len(report.not_done)} run(s) not done", header_style="bold", title_justify="left")
        for header in ("run", "sweep", "state", "note"):
            nd.add_column(header, overflow="fold")
        for r in report.not_done:
            nd.add_row(Text(r.run_id), Text(r.sweep), Text(r.state, STYLES.get(r.state, "")), Text(detail(r)))
        console.print(nd)


def _print_effects(report: Report, console, Table, Text) -> None:
    table = Table(title=EFFECTS_TITLE, title_justify="left", header_style="bold")
    rows = [effect_cells(e) for e in report.effects]
    for i, header in enumerate(EFFECT_HEADERS):  # narrow terminals wrap words, never cut numbers
        table.add_column(header, justify="right" if 2 <= i <= 5 else "left", no_wrap=i in (1, 2, 3))
    for i, (e, row) in enumerate(zip(report.effects, rows)):
        new_axis = i == 0 or report.effects[i - 1].axis != e.axis
        last = i + 1 == len(report.effects) or report.effects[i + 1].axis != e.axis
        style = "dim" if e.reading in ("within noise", "1 pair", "1 seed") else "bold"
        table.add_row(
            Text(row[0] if new_axis else ""),
            *(Text(c) for c in row[1:7]),
            Text(row[7], "yellow" if row[7] else ""),
            style=style,
            end_section=last,
        )
    console.print(table)


def _print_paper(report: Report, console, Table, Text) -> None:
    check = report.paper
    table = Table(
        title=f"The paper's findings ({check.source['cite']}): verdict from this study's 95 % t-intervals",
        title_justify="left",
        header_style="bold",
    )
    rows = [verdict_cells(v) for v in check.verdicts]
    for i, header in enumerate(VERDICT_HEADERS):
        table.add_column(
            header,
            justify="right" if i in (0, 4, 5, 6) else "left",
            no_wrap=i in (3, 4, 5),
            max_width=34 if i == 1 else None,
        )
    for i, (v, row) in enumerate(zip(check.verdicts, rows)):
        first = i == 0 or check.verdicts[i - 1].finding != v.finding
        if not first:
            row[:3] = ["", "", ""]
        last = i + 1 == len(check.verdicts) or check.verdicts[i + 1].finding != v.finding
        table.add_row(
            *(Text(c) for c in row[:7]),
            Text(row[7], f"bold {VERDICT_STYLES[v.verdict]}"),
            Text(row[8]),
            end_section=last,
        )
    console.print(table)
    head = Table(
        title="Best pruned cell vs the paper's headline (Δ vs each one's dense model)",
        title_justify="left",
        header_style="bold",
    )
    for i, header in enumerate(HEADLINE_HEADERS):
        head.add_column(header, justify="left" if i == 0 else "right")
    for row in check.headline:
        head.add_row(*(Text(c) for c in headline_cells(row)))
    console.print(head)
    console.print(Text(_source(report), style="dim"))
