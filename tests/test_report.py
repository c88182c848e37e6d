"""`prunebench report` on hand-made result folders with known numbers: tables, effects with
t-intervals, verdicts on the paper's findings, exports and the plot."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest
from rich.console import Console

from prunebench.report import (
    build_report,
    pairs_needed,
    pareto_front,
    plot_pareto,
    render,
    run_report,
    t_interval,
    t_quantile,
    to_csv,
)
from prunebench.report.render import effect_cells, verdict_cells


def ax(pt, react, rate, sel):
    return {"pruned_tokens": pt, "reactivation": react, "rate": rate, "selector": sel}


# setting -> (box, mask, full ms, backbone ms, keep); dense of seed 0 is 40/36, 100/60 ms.
SETTINGS = {
    ("discard", False, "fixed", "gating"): (38.0, 34.5, 80.0, 40.0, 0.5),
    ("discard", False, "fixed", "mlp"): (38.2, 34.4, 79.0, 39.0, 0.5),
    ("preserve", False, "fixed", "gating"): (39.0, 35.5, 82.0, 41.0, 0.5),
    ("preserve", False, "fixed", "mlp"): (39.1, 35.4, 81.0, 40.0, 0.5),
    ("preserve", True, "fixed", "gating"): (39.5, 35.8, 84.0, 42.0, 0.55),
    ("preserve", False, "dynamic", "gating"): (39.4, 35.9, 80.0, 40.0, 0.48),
}


@pytest.fixture
def sweep(tmp_path, make_run):
    s = tmp_path / "abl"
    make_run(s, "dense", box=40.0, mask=36.0, full=100.0, bb=60.0, flops=10.0)
    for i, (axes, (box, mask, full, bb, keep)) in enumerate(SETTINGS.items()):
        make_run(s, f"run{i}", ax(*axes), box=box, mask=mask, full=full, bb=bb, keep=keep, flops=6.0)
    make_run(
        s,
        "zz-failed",
        ax("preserve", True, "dynamic", "mlp"),
        state="failed",
        error="Traceback\nRuntimeError: CUDA out of memory [1, 2]",
        log=str(s / "zz-failed" / "train.log"),
    )
    corrupt = make_run(s, "zz-corrupt", ax("preserve", True, "dynamic", "gating"))
    (corrupt / "metrics.json").write_text('{"box_ap": 41')
    make_run(s, "zz-running", ax("preserve", False, "dynamic", "mlp"), state="running", iter=5, max_iters=50)
    return s


SMALL = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 1.3, 0.7]  # mean 1.0, sd 0.2 (sum of squared deviations 0.28 / 7)
HUGE = [6.0, -4.0, 5.0, -3.0, 4.0, -2.0, 7.0, -5.0]  # mean 1.0 again


def planted(make_run, root: Path, axis: str, diffs: list[float]) -> Path:
    """2 seeds x 4 settings of two other axes: pair i along ``axis`` differs by ``diffs[i]`` in box
    and mask AP (the paper's better value minus the other); latencies 80 vs 100 ms."""
    better, other = {
        "pruned_tokens": ("preserve", "discard"),
        "reactivation": (True, False),
        "rate": ("dynamic", "fixed"),
        "selector": ("mlp", "gating"),
    }[axis]
    varied = [a for a in ("rate", "selector", "reactivation") if a != axis][:2]
    choices = {"rate": ("fixed", "dynamic"), "selector": ("mlp", "gating"), "reactivation": (False, True)}
    for seed in (0, 1):
        make_run(root, f"dense-{seed}", seed=seed, box=40.0, mask=36.0, full=120.0, bb=70.0)
        for k, values in enumerate(product(*(choices[a] for a in varied))):
            cell = {
                "pruned_tokens": "preserve",
                "reactivation": False,
                "rate": "fixed",
                "selector": "mlp",
                **dict(zip(varied, values)),
            }
            base, d = 30 + 0.5 * k + 0.1 * seed, diffs[4 * seed + k]
            for value, box, full in ((better, base + d, 80.0), (other, base, 100.0)):
                make_run(
                    root,
                    f"{value}-{k}-{seed}",
                    {**cell, axis: value},
                    seed=seed,
                    box=box,
                    mask=box - 3,
                    full=full,
                    bb=full / 2,
                )
    return root


def verdicts(rep, axis: str) -> dict[str, tuple[str, str]]:
    return {v.metric: (v.verdict, v.reason) for v in rep.paper.verdicts if v.axis == axis}


def effect(rep, axis: str, metric: str = "box_ap"):
    return next(e for e in rep.effects if e.axis == axis and e.metric == metric)


def test_table_values(sweep):
    rep = build_report(sweep)
    assert not rep.aggregated and len(rep.rows) == 7
    dense, first = rep.rows[0], rep.rows[1]  # dense first, then settings sorted by axis values
    assert dense["dense"] and dense["d_box_ap"] == 0 and dense["speedup_full"] == 1.0
    assert first["run_id"] == "run0" and first["axes"] == ax("discard", False, "fixed", "gating")
    assert first["d_box_ap"] == pytest.approx(-2.0) and first["d_mask_ap"] == pytest.approx(-1.5)
    assert first["speedup_full"] == pytest.approx(1.25) and first["speedup_backbone"] == pytest.approx(1.5)
    assert first["keep_ratio"] == 0.5 and first["flops_backbone"] == 6.0
    out = io.StringIO()
    assert run_report(sweep, console=Console(file=out, width=250)) == 0
    text = out.getvalue()
    assert "-2.0" in text and "1.25×" in text and "discard" in text
    assert "RuntimeError: CUDA out of memory [1, 2]" in text  # brackets are not eaten as markup
    for run_id, state in (("zz-failed", "failed"), ("zz-corrupt", "corrupt"), ("zz-running", "running")):
        assert any(run_id in line and state in line for line in text.splitlines())
    assert "metrics.json is not valid JSON" in text
    assert "The paper's findings" not in text  # only with --paper
    narrow = io.StringIO()
    run_report(sweep, console=Console(file=narrow, width=130, force_terminal=True, color_system=None))
    table = narrow.getvalue().split("Per-axis")[0]
    assert (
        "hidden to fit the terminal: FLOP ratio bb, FLOP ratio full, GFLOPs full" in table
        and "…" not in table
    )  # no number cut short
    assert max(map(len, table.splitlines())) <= 130 and "-2.0" in table


def test_effects_pairs_and_hand_interval(sweep):
    rep = build_report(sweep)
    pt = effect(rep, "pruned_tokens")
    assert (pt.first, pt.second, pt.pairs, pt.seeds) == ("preserve", "discard", 2, 1)
    # diffs 1.0 and 0.9: sd = 0.1/sqrt(2); t(0.975, 1 df) = 12.7062; half width 12.7062 * sd / sqrt(2)
    assert pt.mean == pytest.approx(0.95) and pt.sd == pytest.approx(0.0707107, abs=1e-6)
    assert (pt.low, pt.high) == (
        pytest.approx(0.95 - 0.635310, abs=1e-5),
        pytest.approx(0.95 + 0.635310, abs=1e-5),
    )
    assert (pt.first_better, pt.second_better) == (2, 0)
    assert effect(rep, "pruned_tokens", "mask_ap").mean == pytest.approx(1.0)
    lat = effect(rep, "pruned_tokens", "latency_full")
    assert lat.mean == pytest.approx(2.0) and (lat.first_better, lat.second_better) == (0, 2)  # slower: worse
    assert effect(rep, "pruned_tokens", "latency_backbone").mean == pytest.approx(1.0)
    speedups = (100 / 82 - 100 / 80, 100 / 81 - 100 / 79)
    assert effect(rep, "pruned_tokens", "speedup_full").mean == pytest.approx(sum(speedups) / 2)
    react = effect(rep, "reactivation")
    assert (react.first, react.pairs, react.mean, react.low) == (True, 1, pytest.approx(0.5), None)
    assert react.reading == "1 pair" and react.pairs_needed is None
    rate = effect(rep, "rate", "mask_ap")
    assert (rate.first, rate.pairs, rate.mean) == ("dynamic", 1, pytest.approx(0.4))
    sel = effect(rep, "selector")
    assert (sel.first, sel.second, sel.pairs, sel.mean) == ("mlp", "gating", 2, pytest.approx(0.15))
    assert effect(rep, "selector", "latency_full").mean == pytest.approx(-1.0)
    assert [e.metric for e in rep.effects if e.axis == "selector"] == [
        "box_ap",
        "mask_ap",
        "latency_full",
        "latency_backbone",
        "speedup_full",
        "speedup_backbone",
    ]


def test_t_quantile_and_power():
    for df, table in (
        (1, 12.7062),
        (2, 4.3027),
        (3, 3.1824),
        (7, 2.3646),
        (10, 2.2281),
        (30, 2.0423),
        (120, 1.9799),
    ):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=5e-5)
    assert t_quantile(0.995, 5) == pytest.approx(4.0321, abs=5e-5)
    ci = t_interval(SMALL)
    half = 2.364624 * 0.2 / math.sqrt(8)  # t(0.975, 7 df) * sd / sqrt(n)
    assert (ci.mean, ci.sd) == (pytest.approx(1.0), pytest.approx(0.2))
    assert (ci.low, ci.high) == (pytest.approx(1 - half, abs=1e-6), pytest.approx(1 + half, abs=1e-6))
    # ((1.959964 + 0.841621) * 2 / 1)^2 = 31.4 -> 32 pairs
    assert pairs_needed(1.0, 2.0) == 32 and pairs_needed(0.0, 1.0) is None and pairs_needed(1.0, 0.0) == 2


def test_planted_effects_verdicts(tmp_path, make_run):
    small = build_report(planted(make_run, tmp_path / "small", "pruned_tokens", SMALL), paper=True)
    e = effect(small, "pruned_tokens")
    assert (e.pairs, e.seeds, e.reading) == (8, 2, "")
    assert (e.low, e.high) == (pytest.approx(1 - 0.167203, abs=1e-5), pytest.approx(1 + 0.167203, abs=1e-5))
    assert verdicts(small, "pruned_tokens") == {
        "box_ap": ("reproduced", "interval above 0"),
        "mask_ap": ("reproduced", "interval above 0"),
    }
    assert verdicts(small, "reactivation")["box_ap"][1].startswith("not in this study")
    huge = build_report(planted(make_run, tmp_path / "huge", "rate", HUGE), paper=True)
    assert effect(huge, "rate").mean == pytest.approx(1.0) and effect(huge, "rate").reading == "within noise"
    assert verdicts(huge, "rate")["box_ap"] == ("inconclusive", "interval includes 0 (within noise)")
    rev = build_report(planted(make_run, tmp_path / "rev", "reactivation", [-d for d in SMALL]), paper=True)
    assert verdicts(rev, "reactivation")["mask_ap"] == ("contradicted", "interval below 0")
    assert effect(rev, "reactivation").first is True  # direction: the paper's better value first


@pytest.mark.parametrize(
    "diffs, margin, expected",
    [
        ([0.1, -0.1, 0.05, -0.05, 0.0, 0.1, -0.1, 0.0], 0.5, ("reproduced", "interval within ±0.5")),
        ([0.1, -0.1, 0.05, -0.05, 0.0, 0.1, -0.1, 0.0], 0.05, ("inconclusive", "interval crosses ±0.05")),
        ([-x for x in SMALL], 0.5, ("contradicted", "interval outside ±0.5")),
        ([0.4, 0.9, -0.1, 0.6, 0.2, 0.7, 0.0, 0.5], 0.5, ("inconclusive", "interval crosses ±0.5")),
    ],
)
def test_equivalence_finding(tmp_path, make_run, diffs, margin, expected):
    rep = build_report(planted(make_run, tmp_path / "s", "selector", diffs), paper=True, margin=margin)
    assert verdicts(rep, "selector")["box_ap"] == expected
    assert (
        next(v for v in rep.paper.verdicts if v.axis == "selector").paper == f"mlp ≈ gating (±{margin:g} AP)"
    )


def test_one_seed_warns(sweep):
    out = io.StringIO()
    assert run_report(sweep, paper=True, console=Console(file=out, width=300)) == 0
    text = " ".join(out.getvalue().split())
    assert "One seed: these effects cannot be told from noise" in text
    assert "preserve vs discard 2 pairs (≈ 2 seeds of this grid)" in text  # sd 0.0707, mean 0.95
    rep = build_report(sweep, paper=True)
    assert {v.verdict for v in rep.paper.verdicts} == {"inconclusive"}
    assert (
        verdicts(rep, "pruned_tokens")["box_ap"][1]
        == "one seed: cannot be told from noise (alone, the interval says reproduced)"
    )
    assert effect(rep, "pruned_tokens").reading == "1 seed"


def test_headline_vs_paper(tmp_path, make_run):
    rep = build_report(planted(make_run, tmp_path / "s", "pruned_tokens", SMALL), paper=True)
    paper, prior, best = rep.paper.headline
    assert paper["d_box_ap"] == pytest.approx(-0.3) and paper["d_mask_ap"] == pytest.approx(-0.3)
    assert paper["speedup_full"] == pytest.approx(15.75 / 11.70) and paper["speedup_backbone"] == 1.46
    assert prior["d_box_ap"] == -1.5
    # best cell: preserve / mlp / gating... highest mean Δ box over the 2 seeds
    assert best["label"].startswith("this study: best cell") and best["d_box_ap"] == pytest.approx(
        max((30 + 0.5 * k + 0.05 + (SMALL[k] + SMALL[4 + k]) / 2) - 40 for k in range(4))
    )
    assert best["speedup_full"] == pytest.approx(1.5)


def test_paired_speedup_preferred(tmp_path, make_run):
    s = tmp_path / "s"
    make_run(s, "dense", box=40.0, mask=36.0, full=100.0, bb=60.0)
    make_run(s, "old", ax("preserve", False, "fixed", "mlp"), box=39.0, mask=35.0, full=80.0, bb=40.0)
    new = make_run(s, "new", ax("discard", False, "fixed", "mlp"), box=38.0, mask=34.0, full=80.0, bb=40.0)
    metrics = json.loads((new / "metrics.json").read_text())
    metrics["latency_ms"].update(
        dtype="float32",
        threads=2,
        source="val images",
        full_stats={"median": 80.0, "mid50_mean": 80.1, "p90": 83.0, "n": 20},
    )
    metrics["paired"] = {
        "dense_run_id": "dense",
        "dense_latency_ms": {"backbone": 62.0, "full": 112.0},
        "speedup": {"backbone": 1.55, "full": 1.4},
        "rounds": 5,
    }
    (new / "metrics.json").write_text(json.dumps(metrics))
    rep = build_report(s)
    rows = {r["run_id"]: r for r in rep.rows}
    assert rows["new"]["speedup_full"] == 1.4 and rows["new"]["speedup_backbone"] == 1.55
    assert rows["new"]["speedup_paired"] and not rows["old"]["speedup_paired"]
    assert rows["old"]["speedup_full"] == pytest.approx(1.25)  # no paired field: ratio to the dense median
    assert effect(rep, "pruned_tokens", "speedup_full").mean == pytest.approx(1.25 - 1.4)
    notes = " ".join(rep.notes())
    assert "1 of 2 finetunes timed beside their dense parent" in notes
    assert "different setups: cpu (2 runs), cpu, float32, 2 threads (1 run)" in notes
    paired = {
        r["run_id"]: r["speedup_paired"]
        for r in csv.DictReader(io.StringIO(to_csv(rep)))
        if r["table"] == "run"
    }
    assert paired == {"dense": "False", "old": "False", "new": "True"}


def _table_rows(text: str, title: str) -> list[list[str]]:
    """Cells of the Rich table whose title starts with ``title`` (continuation lines dropped)."""
    lines = text.split(title, 1)[1].splitlines()
    rows, started = [], False
    for line in lines:
        if line.startswith("┡"):
            started = True
        elif started and line.startswith("└"):
            break
        elif started and line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return rows


def test_exports_carry_the_table_numbers(tmp_path, make_run):
    s = planted(make_run, tmp_path / "s", "pruned_tokens", SMALL)
    rep = build_report(s, paper=True)
    out = io.StringIO()
    run_report(s, paper=True, console=Console(file=out, width=400))
    text = out.getvalue()
    shown = [r for r in _table_rows(text, "Per-axis effects") if r[1]]
    assert len(shown) == len(rep.effects) == 6 * 3  # pruned_tokens, rate, selector
    data = json.loads(render(rep, "json"))
    csv_rows = list(csv.DictReader(io.StringIO(render(rep, "csv"))))
    csv_effects = [r for r in csv_rows if r["table"] == "effect"]
    md, tex = render(rep, "markdown"), render(rep, "latex")
    for row, e, rec, crow in zip(shown, rep.effects, data["effects"], csv_effects):
        fmt = {
            "box_ap": "{:+.2f}",
            "mask_ap": "{:+.2f}",
            "latency_full": "{:+.1f}",
            "latency_backbone": "{:+.1f}",
            "speedup_full": "{:+.3f}",
            "speedup_backbone": "{:+.3f}",
        }[rec["metric"]]
        assert row[2:6] == [
            fmt.format(rec["mean"]),
            f"[{fmt.format(rec['ci_low'])}, {fmt.format(rec['ci_high'])}]",
            str(rec["pairs"]),
            f"{rec['first_better']}:{rec['second_better']}",
        ]
        assert (float(crow["mean"]), float(crow["ci_low"]), float(crow["ci_high"])) == (
            rec["mean"],
            rec["ci_low"],
            rec["ci_high"],
        )
        cells = effect_cells(e)
        assert "| " + " | ".join(cells) + " |" in md
        assert " & ".join(cells[2:6]).replace("−", "-") in tex
    verdict_rows = _table_rows(text, "The paper's findings")
    shown_verdicts = [r for r in verdict_rows if r[3]]
    assert [r[7] for r in shown_verdicts] == [v["verdict"] for v in data["paper"]["verdicts"]]
    for row, v, rec in zip(shown_verdicts, rep.paper.verdicts, data["paper"]["verdicts"]):
        if rec["mean"] is not None:
            assert (
                row[4] == f"{rec['mean']:+.2f}" and row[5] == f"[{rec['ci_low']:+.2f}, {rec['ci_high']:+.2f}]"
            )
        assert "| " + " | ".join(verdict_cells(v)) + " |" in md
    in_csv = [r["verdict"] for r in csv_rows if r["table"] == "verdict"]
    assert in_csv == [v["verdict"] for v in data["paper"]["verdicts"]]
    assert (
        r"reproduced & interval above 0 \\" in tex and "Liu et al., WACV 2024" in md and "Liu et al." in tex
    )


def test_csv_contents(sweep):
    rows = list(csv.DictReader(io.StringIO(to_csv(build_report(sweep)))))
    by_id = {r["run_id"]: r for r in rows if r["table"] == "run"}
    assert len(by_id) == 10  # 7 done + 3 not done, none dropped
    assert by_id["run2"]["box_ap"] == "39.0" and by_id["run2"]["d_box_ap"] == "-1.0"
    assert by_id["run2"]["pruned_tokens"] == "preserve" and by_id["run2"]["state"] == "done"
    assert float(by_id["run2"]["speedup_full"]) == pytest.approx(100 / 82, abs=1e-6)
    assert by_id["zz-failed"]["state"] == "failed" and "CUDA out of memory" in by_id["zz-failed"]["note"]
    assert by_id["zz-failed"]["box_ap"] == "" and by_id["zz-corrupt"]["state"] == "corrupt"
    effects = [r for r in rows if r["table"] == "effect"]
    assert effects[0]["axis"] == "pruned_tokens" and float(effects[0]["mean"]) == pytest.approx(0.95)
    assert not [r for r in rows if r["table"] == "verdict"]  # verdicts only with --paper


def test_where_sort_and_formats(sweep, tmp_path):
    rep = build_report(sweep, where=["pruned_tokens=preserve", "reactivation=false"], sort="box_ap")
    assert [r["box_ap"] for r in rep.rows] == [39.4, 39.1, 39.0]
    assert rep.rows[0]["d_box_ap"] == pytest.approx(-0.6)  # dense reference kept despite the filter
    assert {r.run_id for r in rep.not_done} == {"zz-running"}
    assert [r["latency_full"] for r in build_report(sweep, sort="latency_full").rows][:2] == [79.0, 80.0]
    assert build_report(sweep, sort="-latency_full").rows[0]["dense"]
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        build_report(sweep, where=["nope=1"])
    with pytest.raises(ValueError, match="unknown column"):
        build_report(sweep, sort="speed")
    with pytest.raises(ValueError, match="--margin"):
        build_report(sweep, paper=True, margin=0)
    rep = build_report(sweep)
    data = json.loads(render(rep, "json"))
    assert len(data["rows"]) == 10 and data["effects"][0]["pairs"] == 2 and "paper" not in data
    assert data["interval"] == "95 % t-interval over pairs, n-1 df" and data["notes"][0].startswith(
        "One seed"
    )
    md = render(rep, "markdown")
    assert "| dense | 0 | — |" in md and "| run0 | 0 | discard |" in md and "| zz-failed |" in md
    assert "| preserve vs discard | box AP | +0.95 | [+0.31, +1.59] | 2 | 2:0 |" in md and "> One seed" in md
    tex = render(rep, "latex")
    assert r"\begin{tabular}" in tex and r"$\Delta$ box" in tex and "% not done: zz-failed" in tex
    assert r"preserve vs discard & box AP & +0.95 & [+0.31, +1.59] & 2 & 2:0" in tex
    out = tmp_path / "r.csv"
    assert run_report(sweep, fmt="csv", out=out, console=Console(file=io.StringIO())) == 0
    assert out.read_text().startswith("table,sweep,run_id")


def test_seeds_mean_std(tmp_path, make_run):
    s = tmp_path / "seeds"
    for seed, box in ((0, 40.0), (1, 41.0), (2, 42.0)):
        make_run(s, f"dense-{seed}", seed=seed, box=box, mask=36.0, full=100.0, bb=60.0)
        make_run(
            s,
            f"p-{seed}",
            ax("preserve", False, "fixed", "mlp"),
            seed=seed,
            box=box - 1 + seed * 0.1,
            mask=35.0,
            full=80.0,
            bb=40.0,
        )
    rep = build_report(s)
    assert rep.aggregated and len(rep.rows) == 2
    pruned = rep.rows[1]
    assert pruned["n"] == 3 and pruned["box_ap"] == pytest.approx(40.1)
    assert pruned["box_ap_std"] == pytest.approx(1.1)  # stdev of 39.0, 40.1, 41.2
    assert pruned["d_box_ap"] == pytest.approx(-0.9) and pruned["d_box_ap_std"] == pytest.approx(0.1)
    assert "40.1 ± 1.1" in render(rep, "markdown")


def test_plot_written(sweep, tmp_path, make_run):
    png = tmp_path / "plots" / "pareto.png"
    assert plot_pareto(build_report(sweep), png) == 7
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    seeds = planted(make_run, tmp_path / "seeds", "rate", SMALL)
    pdf = tmp_path / "pareto.pdf"
    out = io.StringIO()
    assert run_report(seeds, plot=pdf, console=Console(file=out, width=300)) == 0
    assert pdf.read_bytes()[:5] == b"%PDF-" and f"wrote {pdf}: 9 points" in out.getvalue()
    assert run_report(seeds, plot=tmp_path / "x.jpg", console=Console(file=io.StringIO())) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    plot_pareto(build_report(empty), tmp_path / "empty.png")  # no runs: still a figure, no crash
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_pareto_front():
    pts = [(80, 38.0), (82, 39.0), (81, 37.0), (84, 39.5), (100, 40.0), (90, 39.2)]
    assert pareto_front(pts) == [(80, 38.0), (82, 39.0), (84, 39.5), (100, 40.0)]


def test_missing_folder_exit_code(tmp_path, capsys):
    assert run_report(tmp_path / "nope", console=Console(file=io.StringIO())) == 2
    assert "no such results folder" in capsys.readouterr().err


def test_cli_report_imports_no_torch(sweep):
    code = (
        "import sys; from typer.testing import CliRunner; from prunebench.cli import app\n"
        f"r = CliRunner().invoke(app, ['report', {str(sweep)!r}, '--format', 'csv', '--paper', "
        "'--margin', '0.3'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert '±0.3 AP' in r.output and 'table,sweep' in r.output, r.output\n"
        "heavy = sorted(m for m in ('torch', 'mmdet', 'mmengine', 'mmcv', 'matplotlib', 'submitit', 'numpy')\n"
        "               if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "r = CliRunner().invoke(app, ['status', " + repr(str(sweep)) + "])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = sorted(m for m in ('torch', 'mmdet', 'mmengine', 'mmcv', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import prunebench.report"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()}
    assert proc.returncode == 0 and "prunebench" in imported
    assert not imported & {"torch", "submitit", "numpy", "matplotlib", "mmdet"}, sorted(imported)
