"""The figure a paper would print: box and mask AP against the cost the report's table gives, one
marker shape per (pruned tokens, reactivation) setting, one colour per (rate, selector) setting (a
run of a ``method`` gets its method's own marker and colour), the dense model as a reference
line, error bars over seeds, and the Pareto front.

The x-axis (``X_AXES``) agrees with the table: ``speedup`` (default) is the full-network speed-up
column, paired where the finetune was timed beside its dense parent (dense at 1.0x); ``latency``
is the dense reference's full latency divided by that speed-up (so the ratios are the paired
ones, on a ms scale; dense at its own latency); ``gflops`` the full detector's GFLOPs per image,
mean over the val images. Latencies of different jobs are never compared directly: on a shared
machine they are not comparable.
"""

from __future__ import annotations

import math
from itertools import product
from pathlib import Path

from ..axes import METHOD_AXIS, PRUNING_AXES, impossible, value_label
from ..presets import PRESETS
from .schema import Report

PLOT_SUFFIXES = (".png", ".pdf", ".svg")
# --x value -> (row key, axis label, higher is better)
X_AXES = {
    "speedup": ("speedup_full", "full-network speed-up vs dense (×; paired where timed together)", True),
    "latency": ("latency_full_paired", "full-network latency (ms), dense latency / paired speed-up", False),
    "gflops": ("flops_full", "full detector GFLOPs per image (mean over val images)", False),
}
_SHAPES = "os^vDP"
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")
# Every possible setting gets a fixed style, so a setting looks the same in every report.
SHAPE_OF = {
    k: _SHAPES[i]
    for i, k in enumerate(
        k
        for k in product(PRUNING_AXES["pruned_tokens"], PRUNING_AXES["reactivation"])
        if not impossible(dict(zip(("pruned_tokens", "reactivation"), k)))
    )
}
COLOUR_OF = {k: _COLOURS[i] for i, k in enumerate(product(PRUNING_AXES["rate"], PRUNING_AXES["selector"]))}
_METHOD_COLOURS = (
    "black",
    "tab:red",
    "tab:cyan",
    "tab:olive",
    "tab:gray",
    "navy",
    "darkgoldenrod",
    "darkgreen",
    "magenta",
)
METHOD_STYLE = {
    m: (_SHAPES[i % len(_SHAPES)], _METHOD_COLOURS[i % len(_METHOD_COLOURS)]) for i, m in enumerate(PRESETS)
}


def pareto_front(points: list[tuple[float, float]], higher_x: bool = False) -> list[tuple[float, float]]:
    """Points not beaten by any other (lower x, or higher with ``higher_x``, and higher AP),
    from the best x on."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (-p[0] if higher_x else p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def x_value(row: dict, x: str) -> tuple[float | None, float]:
    """A report row's position on the ``x`` axis and its error (std over seeds, 0 for one)."""
    key = X_AXES[x][0]
    value = 1.0 if x == "speedup" and row["dense"] else row.get(key)
    return value, 0.0 if x == "speedup" and row["dense"] else row.get(f"{key}_std") or 0.0


def _style(row: dict) -> tuple[tuple, tuple]:
    a = row["axes"]
    if a.get(METHOD_AXIS) is not None:
        return (METHOD_AXIS, a[METHOD_AXIS]), (METHOD_AXIS, a[METHOD_AXIS])
    return (a.get("pruned_tokens"), a.get("reactivation")), (a.get("rate"), a.get("selector"))


def _shape(key: tuple) -> str:
    return METHOD_STYLE.get(key[1], ("X",))[0] if key[0] == METHOD_AXIS else SHAPE_OF.get(key, "X")


def _colour(key: tuple) -> str:
    if key[0] == METHOD_AXIS:
        return METHOD_STYLE.get(key[1], ("", "tab:gray"))[1]
    return COLOUR_OF.get(key, "tab:gray")


def _name(axes: tuple[str, str], key: tuple) -> str:
    return " / ".join("any" if v is None else value_label(ax, v) for ax, v in zip(axes, key))


def plot_pareto(report: Report, path: Path, x: str = "speedup") -> int:
    """Draw the figure to ``path`` (.png, .pdf or .svg) against ``x`` (``X_AXES``); returns the
    number of points plotted. Raises ValueError for another suffix or x."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"--plot {path}: the file name must end in {', '.join(PLOT_SUFFIXES)}")
    if x not in X_AXES:
        raise ValueError(f"--x {x}: expected one of {', '.join(X_AXES)}")
    _, xlabel, higher_x = X_AXES[x]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = [r for r in report.rows if x_value(r, x)[0] is not None]
    panels = [("box_ap", "box AP")] + [("mask_ap", "mask AP")] * any(r["mask_ap"] is not None for r in rows)
    fig, axs = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 5.6), layout="constrained", squeeze=False
    )
    shapes, colours = {}, {}
    for ax, (key, name) in zip(axs[0], panels):  # box-only detectors: no mask panel
        pts = [r for r in rows if r[key] is not None]
        groups: dict[tuple, list[dict]] = {}
        for r in pts:
            if not r["dense"]:
                groups.setdefault(_style(r), []).append(r)
        for (shape_key, colour_key), group in groups.items():  # one call per style: fast for many points
            shapes[shape_key] = shape = _shape(shape_key)
            colours[colour_key] = colour = _colour(colour_key)
            ax.errorbar(
                [x_value(r, x)[0] for r in group],
                [r[key] for r in group],
                xerr=[x_value(r, x)[1] for r in group],
                yerr=[r.get(f"{key}_std") or 0.0 for r in group],
                fmt=shape,
                ms=7,
                color=colour,
                mec="black",
                mew=0.5,
                ecolor=colour,
                elinewidth=0.8,
                capsize=2,
                zorder=3,
                ls="none",
            )
        dense = [r for r in pts if r["dense"]]
        if dense:
            ax.errorbar(
                [x_value(r, x)[0] for r in dense],
                [r[key] for r in dense],
                xerr=[x_value(r, x)[1] for r in dense],
                yerr=[r.get(f"{key}_std") or 0.0 for r in dense],
                fmt="*",
                ms=14,
                color="black",
                capsize=2,
                zorder=4,
                ls="none",
            )
            for r in dense[:4]:  # a reference line per dense model (a few at most)
                ax.axhline(r[key], color="black", ls="--", lw=0.9, zorder=1)
        front = pareto_front([(x_value(r, x)[0], r[key]) for r in pts], higher_x)
        if front:
            ax.step(*zip(*front), where="post", color="crimson", lw=1.6, alpha=0.85, zorder=5)
        else:
            ax.text(0.5, 0.5, f"no finished runs with {x}", ha="center", transform=ax.transAxes)
        ax.set(xlabel=xlabel, ylabel=f"{name} (COCO AP@[.5:.95])", title=f"{name} vs {x}")
        ax.grid(alpha=0.3)
        ax.margins(x=0.08, y=0.08)
    legend = dict(fontsize=8, title_fontsize=8, frameon=False)
    order = list(SHAPE_OF) + list(COLOUR_OF) + [(METHOD_AXIS, m) for m in PRESETS]
    methods = [k for k in shapes if k[0] == METHOD_AXIS]
    shapes = {k: v for k, v in shapes.items() if k[0] != METHOD_AXIS}
    colours = {k: v for k, v in colours.items() if k[0] != METHOD_AXIS}
    rank = lambda k: order.index(k) if k in order else len(order)  # noqa: E731
    if methods:
        handles = [
            Line2D([], [], marker=_shape(k), ls="none", color=_colour(k), mec="black", ms=8, label=k[1])
            for k in sorted(methods, key=rank)
        ]
        fig.legend(handles=handles, loc="outside lower left", ncol=3, title="method", **legend)
    if shapes:
        fig.legend(
            handles=[
                Line2D(
                    [],
                    [],
                    marker=shapes[k],
                    ls="none",
                    color="lightgray",
                    mec="black",
                    ms=8,
                    label=_name(("pruned_tokens", "reactivation"), k),
                )
                for k in sorted(shapes, key=rank)
            ],
            loc="outside lower center" if methods else "outside lower left",
            title="marker: pruned tokens / reactivation",
            **legend,
        )
    if colours:
        fig.legend(
            handles=[
                Line2D(
                    [],
                    [],
                    marker="o",
                    ls="none",
                    color=colours[k],
                    ms=8,
                    label=_name(("rate", "selector"), k),
                )
                for k in sorted(colours, key=rank)
            ],
            loc="outside right upper" if methods else "outside lower center",
            ncol=1 if methods else 2,
            title="colour: rate / selector",
            **legend,
        )
    refs = [
        Line2D([], [], marker="*", ls="--", color="black", ms=12, label="dense (reference line)"),
        Line2D([], [], color="crimson", lw=1.4, label="Pareto front"),
    ]
    fig.legend(
        handles=refs,
        loc="outside lower right",
        title="error bars: std over seeds" if report.aggregated else None,
        **legend,
    )
    fig.suptitle(str(report.root))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return len(rows)
