"""Report -> terminal (or a text file): the runs drawn as one Rich Text in a box (fast for
thousands of rows; on a narrow terminal whole optional columns are hidden, never numbers cut),
then the effects, notes, the paper's verdicts and headline, and the runs not done, as Rich tables.
"""

from __future__ import annotations

from ..presets import OURS
from ..results import STYLES, detail
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
from .schema import COLUMNS, Report

# Columns a narrow terminal hides first (CSV, JSON, Markdown and LaTeX always have them all).
OPTIONAL = (
    "flop_ratio_backbone",
    "flop_ratio_full",
    "flops_full",
    "speedup_backbone",
    "flops_backbone",
    "keep_ratio",
    "d_mask_ap",
    "latency_backbone",
)
VERDICT_STYLES = {"reproduced": "green", "contradicted": "red", "inconclusive": "yellow"}


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
        # one section per comparison: a three-valued axis (pruned_tokens) has three
        new_axis = i == 0 or report.effects[i - 1].comparison != e.comparison
        last = i + 1 == len(report.effects) or report.effects[i + 1].comparison != e.comparison
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
    if check.methods:
        _print_methods(report, console, Table, Text)


def _print_methods(report: Report, console, Table, Text) -> None:
    check = report.paper
    table = Table(title=METHODS_TITLE, title_justify="left", header_style="bold")
    for i, header in enumerate(METHOD_HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=i in (2, 3))
    for row in check.methods:
        table.add_row(*(Text(c) for c in method_cells(row)), style="bold" if row.method == OURS else "")
    console.print(table)
    if check.method_verdicts:
        verdicts = Table(
            title=f"Headline: do prior methods lose more than {OURS}? (per seed: mean Δ of the prior "
            f"methods − {OURS}'s Δ; 95 % t-interval over seeds)",
            title_justify="left",
            header_style="bold",
        )
        for i, header in enumerate(METHOD_VERDICT_HEADERS):
            verdicts.add_column(header, justify="right" if 2 <= i <= 5 else "left")
        for v in check.method_verdicts:
            cells = method_verdict_cells(v)
            verdicts.add_row(
                *(Text(c) for c in cells[:6]),
                Text(cells[6], f"bold {VERDICT_STYLES[v.verdict]}"),
                Text(cells[7]),
            )
        console.print(verdicts)
    console.print(Text(methods_source(report), style="dim"))
