"""Results folder -> the paper's tables: runs (or settings, mean ± std over seeds), change vs
the dense run, per-axis effects, the runs that are not done, exports and a Pareto plot."""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Any, Iterable

from .results import PRUNING_AXES, Run, scan_results
from .status import STYLES, detail

# (key, header, format, higher is better): metric columns in display order.
COLUMNS = (
    ("box_ap", "box AP", "{:.1f}", True),
    ("mask_ap", "mask AP", "{:.1f}", True),
    ("d_box_ap", "Δ box", "{:+.1f}", True),
    ("d_mask_ap", "Δ mask", "{:+.1f}", True),
    ("latency_backbone", "backbone ms", "{:.1f}", False),
    ("latency_full", "full ms", "{:.1f}", False),
    ("speedup_backbone", "speed-up bb", "{:.2f}×", True),
    ("speedup_full", "speed-up full", "{:.2f}×", True),
    ("keep_ratio", "keep", "{:.3f}", False),
    ("flops_backbone", "GFLOPs bb", "{:.3g}", False),
    ("flops_full", "GFLOPs full", "{:.3g}", False),
)
METRICS = tuple(c[0] for c in COLUMNS)
_RAW = ("box_ap", "mask_ap", "latency_backbone", "latency_full", "keep_ratio", "flops_backbone", "flops_full")
AXIS_HEADERS = {"pruned_tokens": "pruned tokens", "reactivation": "react."}
# Columns a narrow terminal hides first (CSV, JSON, Markdown and LaTeX always have them all).
OPTIONAL = ("flops_full", "speedup_backbone", "flops_backbone", "keep_ratio", "d_mask_ap", "latency_backbone")
FORMATS = ("table", "csv", "markdown", "json", "latex")
IDENTITY = ("sweep", "run_id", "label", "backbone", "stage", "seed")
# Direction of each paper finding: "<first> vs <second>".
EFFECT_ORDER = {"pruned_tokens": ("preserve", "discard"), "reactivation": (True, False),
                "rate": ("dynamic", "fixed"), "selector": ("mlp", "gating")}


@dataclass
class Effect:
    """Mean change (first minus second) over runs that differ only in ``axis``."""

    axis: str
    first: Any
    second: Any
    pairs: int
    box_ap: float | None
    mask_ap: float | None
    latency_full_ms: float | None
    latency_full_pct: float | None
    latency_backbone_ms: float | None

    def sentence(self) -> str:
        def part(v, unit, fmt="{:+.1f}"):
            return f"{fmt.format(v)} {unit}" if v is not None else f"n/a {unit}"
        pct = f" ({self.latency_full_pct:+.0f}%)" if self.latency_full_pct is not None else ""
        return (f"{value_label(self.axis, self.first)} vs {value_label(self.axis, self.second)}: "
                f"{part(self.box_ap, 'box AP')}, {part(self.mask_ap, 'mask AP')}, "
                f"{part(self.latency_full_ms, 'ms')} full{pct} / "
                f"{part(self.latency_backbone_ms, 'ms')} backbone latency "
                f"over {self.pairs} pair{'s' * (self.pairs != 1)}")


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


# --- building -------------------------------------------------------------------------------

def short_axis(axis: str) -> str:
    return axis.rsplit(".", 1)[-1]


def value_label(axis: str, value: Any) -> str:
    """How one axis value reads in sentences and plot labels."""
    if axis == "reactivation":
        return "reactivation" if value else "no reactivation"
    return str(value) if axis in PRUNING_AXES else f"{short_axis(axis)}={cell(value)}"


def cell(value: Any) -> str:
    """An axis value in a table cell."""
    if value is None:
        return "—"
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def _setting_label(run: Run, axes: list[str], multi_sweep: bool, multi_backbone: bool) -> str:
    parts = [run.sweep] if multi_sweep else []
    parts += [run.backbone or "?"] if multi_backbone else []
    if run.is_dense:
        parts.append("dense")
    parts += [("react" if v else "no-react") if a == "reactivation" else value_label(a, v)
              for a in axes if (v := run.axes.get(a)) is not None]
    return "/".join(parts)


def _dense_index(runs: list[Run]) -> dict[tuple, list[Run]]:
    index: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.is_dense:
            index.setdefault((r.backbone, r.seed), []).append(r)
    return index


def _dense_for(run: Run, index: dict[tuple, list[Run]]) -> Run | None:
    """The dense run of the same backbone and seed (same sweep preferred) whose swept
    non-pruning settings (e.g. a learning rate) agree with ``run``'s."""
    fits = [d for d in index.get((run.backbone, run.seed), ())
            if all(run.axes.get(k) == v for k, v in d.axes.items() if k not in PRUNING_AXES and v is not None)]
    fits.sort(key=lambda d: d.sweep != run.sweep)
    return fits[0] if fits else None


def _run_row(run: Run, dense: Run | None, label: str) -> dict:
    row: dict[str, Any] = {"sweep": run.sweep, "run_id": run.run_id, "label": label, "backbone": run.backbone,
                           "stage": run.stage, "seed": run.seed, "n": 1, "axes": run.axes, "dense": run.is_dense}
    for key in _RAW:
        row[key] = run.metric(key)
    ref = dict.fromkeys(_RAW) if dense is None else {k: dense.metric(k) for k in _RAW}
    for key in ("box_ap", "mask_ap"):
        row[f"d_{key}"] = None if None in (row[key], ref[key]) else row[key] - ref[key]
    for part in ("backbone", "full"):
        lat, base = row[f"latency_{part}"], ref[f"latency_{part}"]
        row[f"speedup_{part}"] = base / lat if lat and base is not None else None
    return row


def _mean_std(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _aggregate(rows: list[dict], axes: list[str]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["sweep"], row["backbone"], row["stage"], *(repr(row["axes"].get(a)) for a in axes))
        groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        first = members[0]
        agg = {**first, "run_id": ";".join(m["run_id"] for m in members), "n": len(members),
               "seed": ";".join(str(m["seed"]) for m in members)}
        for key in METRICS:
            agg[key], agg[f"{key}_std"] = _mean_std([m[key] for m in members])
        out.append(agg)
    return out


def _matches(value: Any, text: str) -> bool:
    t = text.strip().lower()
    if value is None:
        return t in ("none", "null", "", "-", "—")
    if isinstance(value, bool):
        return t in (("true", "1", "yes", "on") if value else ("false", "0", "no", "off"))
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(t), value, rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return str(value).lower() == t


def parse_where(where: Iterable[str], known: Iterable[str]) -> list[tuple[str, str]]:
    """``axis=value`` strings -> pairs; raises ValueError naming the known keys."""
    known = list(known)
    out = []
    for item in where:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--where {item!r}: expected AXIS=VALUE, e.g. pruned_tokens=preserve")
        matches = [k for k in known if k == key] or [k for k in known if short_axis(k) == key]
        if len(matches) != 1:
            raise ValueError(f"--where {item!r}: unknown key {key!r}; known: {', '.join(known)}")
        out.append((matches[0], value))
    return out


def _field(run: Run, key: str) -> Any:
    return getattr(run, key) if key in ("sweep", "run_id", "backbone", "stage", "seed") else run.axes.get(key)


def compute_effects(runs: list[Run], axes: list[str]) -> list[Effect]:
    """For each axis with exactly two values, pair the finished runs that differ only in it."""
    pruned = [r for r in runs if not r.is_dense]
    effects = []
    for axis in axes:
        values = {repr(v): v for r in pruned if (v := r.axes.get(axis)) is not None}
        if len(values) != 2:
            continue
        first, second = EFFECT_ORDER.get(axis, (None, None))
        if {repr(first), repr(second)} != set(values):
            first, second = sorted(values.values(), key=lambda v: (str(type(v)), v), reverse=True)
        others = [a for a in axes if a != axis]
        groups: dict[tuple, dict[str, list[Run]]] = {}
        for r in pruned:
            key = (r.sweep, r.backbone, r.stage, r.seed, *(repr(r.axes.get(a)) for a in others))
            groups.setdefault(key, {}).setdefault(repr(r.axes.get(axis)), []).append(r)
        pairs = [(a, b) for g in groups.values()
                 for a, b in product(g.get(repr(first), ()), g.get(repr(second), ()))]
        if not pairs:
            continue

        def mean_diff(key: str, relative: bool = False) -> float | None:
            diffs = [(x - y) * 100 / y if relative else x - y for a, b in pairs
                     if (x := a.metric(key)) is not None and (y := b.metric(key)) is not None and (y or not relative)]
            return statistics.fmean(diffs) if diffs else None

        effects.append(Effect(axis, first, second, len(pairs), mean_diff("box_ap"), mean_diff("mask_ap"),
                              mean_diff("latency_full"), mean_diff("latency_full", relative=True),
                              mean_diff("latency_backbone")))
    return effects


def _row_value(row: dict, key: str) -> Any:
    return row[key] if key in row else row["axes"].get(key)


def sort_rows(rows: list[dict], sort: str, axes: list[str]) -> list[dict]:
    """Rows by column ``sort``, best first for metrics (highest AP, lowest latency), A-Z
    otherwise; a leading ``-`` reverses; empty values last."""
    key = sort.lstrip("-")
    if key not in sortable(axes):
        raise ValueError(f"--sort {sort!r}: unknown column; choose one of {', '.join(sortable(axes))}")
    higher = {c[0]: c[3] for c in COLUMNS}.get(key, False)
    present = [r for r in rows if _row_value(r, key) is not None]
    present.sort(key=lambda r: _orderable(_row_value(r, key)), reverse=higher != sort.startswith("-"))
    return present + [r for r in rows if _row_value(r, key) is None]


def _orderable(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def sortable(axes: list[str]) -> list[str]:
    return [*METRICS, *IDENTITY, *axes]


def build_report(root: Path, where: Iterable[str] = (), sort: str | None = None) -> Report:
    """Scan ``root`` and build every table. ``sort``: a column key, best first (highest AP,
    lowest latency); prefix ``-`` to reverse. Raises FileNotFoundError / ValueError."""
    runs = scan_results(root)
    axes_seen = {a for r in runs for a in r.axes}
    axes = [a for a in PRUNING_AXES if a in axes_seen] + sorted(axes_seen - set(PRUNING_AXES))
    filters = parse_where(where, [*axes, "sweep", "run_id", "backbone", "stage", "seed"])
    done = [r for r in runs if r.state == "done"]
    index = _dense_index(done)
    kept = [r for r in runs if all(_matches(_field(r, k), v) for k, v in filters)]
    done_kept = [r for r in kept if r.state == "done"]
    multi_sweep = len({r.sweep for r in runs}) > 1
    multi_backbone = len({r.backbone for r in runs if r.backbone}) > 1
    rows = [_run_row(r, _dense_for(r, index), _setting_label(r, axes, multi_sweep, multi_backbone))
            for r in done_kept]
    aggregated = len({r.seed for r in done_kept}) > 1
    if aggregated:
        rows = _aggregate(rows, axes)
    rows.sort(key=lambda row: (row["sweep"], str(row["backbone"]), not row["dense"],
                               *(cell(row["axes"].get(a)) for a in axes), str(row["seed"])))
    if sort:
        rows = sort_rows(rows, sort, axes)
    return Report(Path(root), axes, rows, aggregated, compute_effects(done_kept, axes),
                  [r for r in kept if r.state != "done"], multi_sweep, multi_backbone)


# --- rendering ------------------------------------------------------------------------------

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
    fmts = {c[0]: c[2] for c in COLUMNS}
    out = []
    for key, _ in _display_columns(report):
        if key.startswith("axis:"):
            out.append(cell(row["axes"].get(key[5:])))
        elif key in fmts:
            out.append(fmt_metric(row, key, fmts[key], pm))
        else:
            out.append(cell(row.get(key)))
    return out


def flat_rows(report: Report) -> list[dict]:
    """Rows as flat dicts (full precision) for CSV/JSON; runs not done follow with their state."""
    out = []
    for row in report.rows:
        flat = {k: row[k] for k in (*IDENTITY, "n")}
        flat.update({a: row["axes"].get(a) for a in report.axes})
        for key in METRICS:
            flat[key] = row[key]
            if report.aggregated:
                flat[f"{key}_std"] = row.get(f"{key}_std")
        out.append({**{k: round(v, 6) if isinstance(v, float) else v for k, v in flat.items()},
                    "state": "done", "note": ""})
    for run in report.not_done:
        flat = dict.fromkeys(out[0] if out else (*IDENTITY, "n", *report.axes))
        flat.update(sweep=run.sweep, run_id=run.run_id, backbone=run.backbone, stage=run.stage, seed=run.seed,
                    n=0, **{a: run.axes.get(a) for a in report.axes})
        out.append({**flat, "state": run.state, "note": detail(run)})
    return out


def to_csv(report: Report) -> str:
    rows = flat_rows(report)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def to_json(report: Report) -> str:
    return json.dumps({"root": str(report.root), "aggregated": report.aggregated, "axes": report.axes,
                       "rows": flat_rows(report), "effects": [asdict(e) for e in report.effects]},
                      indent=2, default=str) + "\n"


def to_markdown(report: Report) -> str:
    headers = [h for _, h in _display_columns(report)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cells(report, row, " ± ")) + " |" for row in report.rows]
    if report.effects:
        lines += ["", "**Per-axis effects** (mean change when only that axis changes)", ""]
        lines += [f"- {e.sentence()}" for e in report.effects]
    if report.not_done:
        lines += ["", "**Not done**", "", "| run | sweep | state | note |", "|---|---|---|---|"]
        lines += [f"| {r.run_id} | {r.sweep} | {r.state} | {detail(r).replace('|', '/')} |" for r in report.not_done]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("—", "--"), ("×", r"$\times$"), ("Δ", r"$\Delta$"), ("±", r"$\pm$")):
        text = text.replace(a, b)
    return text


def to_latex(report: Report) -> str:
    cols = _display_columns(report)
    lines = [r"\begin{tabular}{" + "l" * (len(cols) - len(COLUMNS)) + "r" * len(COLUMNS) + "}", r"\toprule",
             " & ".join(_tex(h) for _, h in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in _cells(report, row, " ± ")) + r" \\" for row in report.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if report.effects:
        lines += ["", r"\begin{tabular}{lrrrrr}", r"\toprule",
                  r"comparison & pairs & $\Delta$ box AP & $\Delta$ mask AP & $\Delta$ full ms & $\Delta$ backbone ms \\",
                  r"\midrule"]
        for e in report.effects:
            vals = [f"{v:+.1f}" if v is not None else "--"
                    for v in (e.box_ap, e.mask_ap, e.latency_full_ms, e.latency_backbone_ms)]
            name = f"{value_label(e.axis, e.first)} vs {value_label(e.axis, e.second)}"
            lines.append(" & ".join([_tex(name), str(e.pairs), *vals]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% not done: {r.run_id} ({r.sweep}) {r.state}: {detail(r)}" for r in report.not_done]
    return "\n".join(lines) + "\n"


def print_table(report: Report, console) -> None:
    """The report for a terminal (or a text file): Rich tables plus the effect sentences."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{escape(str(report.root))} — {len(report.rows)} {'settings' if report.aggregated else 'runs'}"
                  + (" (mean ± std over seeds)" if report.aggregated else ""), header_style="bold")
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
    for i in shown:  # fixed widths: Rich then skips measuring every cell
        table.add_column("\n".join(headers[i]), justify="left" if i < n_id else "right", width=widths[i],
                         no_wrap=True)
    for row, row_cells in zip(report.rows, cells):
        table.add_row(*(Text(row_cells[i]) for i in shown), style="bold cyan" if row["dense"] else None)
    console.print(table)
    if hidden:
        console.print(f"[dim]hidden to fit the terminal: {', '.join(hidden)} (widen it, or use --format csv)[/]")
    if report.effects:
        console.print("[bold]Per-axis effects[/] (mean change when only that axis changes):")
        for e in report.effects:
            console.print(f"  {e.sentence()}", markup=False, highlight=False)
    if report.not_done:
        nd = Table(title=f"{len(report.not_done)} run(s) not done", header_style="bold", title_justify="left")
        for header in ("run", "sweep", "state", "note"):
            nd.add_column(header, overflow="fold")
        for r in report.not_done:
            nd.add_row(Text(r.run_id), Text(r.sweep), Text(r.state, STYLES.get(r.state, "")), Text(detail(r)))
        console.print(nd)


def render(report: Report, fmt: str) -> str:
    """``report`` as text in ``fmt`` (any of FORMATS but ``table``)."""
    return {"csv": to_csv, "json": to_json, "markdown": to_markdown, "latex": to_latex}[fmt](report)


# --- plot -----------------------------------------------------------------------------------

def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by any other (lower latency and higher AP), by rising latency."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


MAX_LABELS = 60  # beyond this many points only the dense runs and the Pareto front get labels


def plot_pareto(report: Report, path: Path) -> int:
    """Box and mask AP against full latency, one labelled point per row, dense starred, the
    Pareto front drawn. Returns the number of points plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r["latency_full"] is not None]
    fig, axs = plt.subplots(1, 2, figsize=(13, 5.5), constrained_layout=True)
    for ax, key, name in zip(axs, ("box_ap", "mask_ap"), ("box AP", "mask AP")):
        pts = [r for r in rows if r[key] is not None]
        for dense, style in ((False, dict(fmt="o", ms=6, color="tab:blue")),
                             (True, dict(fmt="*", ms=14, color="crimson"))):
            group = [r for r in pts if r["dense"] == dense]
            if group:  # one call per group: thousands of points stay fast
                std = [[r.get(k) or 0.0 for r in group] for k in ("latency_full_std", f"{key}_std")]
                ax.errorbar([r["latency_full"] for r in group], [r[key] for r in group], xerr=std[0],
                            yerr=std[1], capsize=2 if report.aggregated else 0, zorder=3, **style)
        front = pareto_front([(r["latency_full"], r[key]) for r in pts])
        on_front = set(front)
        for r in pts:  # label every point, or only the dense runs and the front when crowded
            if len(pts) <= MAX_LABELS or r["dense"] or (r["latency_full"], r[key]) in on_front:
                ax.annotate(r["label"], (r["latency_full"], r[key]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        if front:
            ax.step(*zip(*front), where="post", color="tab:orange", lw=1.5, label="Pareto front", zorder=2)
            ax.legend(handles=[*ax.get_legend_handles_labels()[0],
                               plt.Line2D([], [], marker="*", ls="", color="crimson", ms=12, label="dense")])
        else:
            ax.text(0.5, 0.5, "no finished runs with latency", ha="center", transform=ax.transAxes)
        crowded = " (labels: dense and Pareto front)" if len(pts) > MAX_LABELS else ""
        ax.set(xlabel="full-network latency (ms)", ylabel=f"{name} (COCO AP@[.5:.95])",
               title=f"{name} vs latency{crowded}")
        ax.grid(alpha=0.3)
        ax.margins(x=0.12, y=0.08)
    fig.suptitle(str(report.root))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return len(rows)


# --- command --------------------------------------------------------------------------------

def run_report(root: Path, fmt: str = "table", out: Path | None = None, plot: Path | None = None,
               where: Iterable[str] = (), sort: str | None = None, console=None) -> int:
    """``prunebench report``: print or write the report; returns the exit code (2 on bad input)."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 1000)  # piped output: never squeeze the table
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if fmt not in FORMATS:
        err.print(f"[red]error:[/] --format {fmt!r}: choose one of {', '.join(FORMATS)}")
        return 2
    try:
        report = build_report(Path(root), where, sort)
    except (FileNotFoundError, ValueError) as e:
        err.print(f"[red]error:[/] {escape(str(e))}")
        return 2
    if not report.rows and not report.not_done:
        err.print(f"[yellow]warning:[/] no run folders under {escape(str(root))} (expected <sweep>/<run_id>/status.json)")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            if fmt == "table":
                print_table(report, Console(file=f, width=1000, color_system=None))
            else:
                f.write(render(report, fmt))
        console.print(f"wrote {escape(str(out))}: {len(report.rows)} {'settings' if report.aggregated else 'runs'}, "
                      f"{len(report.not_done)} not done", highlight=False)
    elif fmt == "table":
        print_table(report, console)
    else:
        console.file.write(render(report, fmt))
    if plot is not None:
        n = plot_pareto(report, Path(plot))
        console.print(f"wrote {escape(str(plot))}: {n} points", highlight=False)
    return 0
