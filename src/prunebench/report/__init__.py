"""``prunebench report``: a results folder -> which design choices matter, and how sure that is.

- ``schema``: what a report holds (columns, ``Effect``, ``Report``, ``Verdict``) and its labels;
- ``rows``: runs -> rows (per run, or mean ± std per setting over seeds), change and speed-up
  vs the dense run; ``effects``: per-axis effects over matched pairs with 95 % t-intervals;
- ``build``: ``build_report``, filters and sorting; ``stats``: Student-t quantiles,
  t-intervals, the power estimate (no scipy);
- ``paper`` + ``paper.json``: the paper's reference values and the verdict on each finding;
- ``cells``: the strings every text format shares; ``render``: CSV, Markdown, JSON, LaTeX;
  ``terminal``: the terminal table; ``plot``: the figure;
- ``command``: ``run_report``, what ``prunebench report`` calls.
"""

from __future__ import annotations

from .build import build_report
from .command import run_report
from .plot import pareto_front, plot_pareto
from .render import FORMATS, render, to_csv
from .schema import Effect, Report
from .stats import pairs_needed, t_interval, t_quantile
from .terminal import print_table

__all__ = [
    "FORMATS",
    "Effect",
    "Report",
    "build_report",
    "pairs_needed",
    "pareto_front",
    "plot_pareto",
    "print_table",
    "render",
    "run_report",
    "t_interval",
    "t_quantile",
    "to_csv",
]
