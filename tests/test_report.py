"""`prunebench report` on hand-made result folders with known numbers."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from rich.console import Console
from test_results import make_run

from prunebench.report import build_report, pareto_front, plot_pareto, render, run_report, to_csv


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
def sweep(tmp_path):
    s = tmp_path / "abl"
    make_run(s, "dense", box=40.0, mask=36.0, full=100.0, bb=60.0, flops=10.0)
    for i, (axes, (box, mask, full, bb, keep)) in enumerate(SETTINGS.items()):
        make_run(s, f"run{i}", ax(*axes), box=box, mask=mask, full=full, bb=bb, keep=keep, flops=6.0)
    make_run(s, "zz-failed", ax("preserve", True, "dynamic", "mlp"), state="failed",
             error="Traceback\nRuntimeError: CUDA out of memory [1, 2]", log=str(s / "zz-failed" / "train.log"))
    corrupt = make_run(s, "zz-corrupt", ax("preserve", True, "dynamic", "gating"))
    (corrupt / "metrics.json").write_text('{"box_ap": 41')
    make_run(s, "zz-running", ax("preserve", False, "dynamic", "mlp"), state="running", iter=5, max_iters=50)
    return s


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
    narrow = io.StringIO()
    run_report(sweep, console=Console(file=narrow, width=130, force_terminal=True, color_system=None))
    table = narrow.getvalue().split("Per-axis")[0]
    assert "hidden to fit the terminal: GFLOPs full" in table and "…" not in table  # no number cut short
    assert max(map(len, table.splitlines())) <= 130 and "-2.0" in table


def test_effects_and_pairs(sweep):
    effects = {e.axis: e for e in build_report(sweep).effects}
    pt, react, rate, sel = (effects[a] for a in ("pruned_tokens", "reactivation", "rate", "selector"))
    assert (pt.first, pt.second, pt.pairs) == ("preserve", "discard", 2)
    assert pt.box_ap == pytest.approx((1.0 + 0.9) / 2) and pt.mask_ap == pytest.approx(1.0)
    assert pt.latency_full_ms == pytest.approx(2.0) and pt.latency_backbone_ms == pytest.approx(1.0)
    assert (react.first, react.pairs, react.box_ap) == (True, 1, pytest.approx(0.5))
    assert react.latency_full_pct == pytest.approx(100 * 2 / 82)
    assert (rate.first, rate.pairs, rate.mask_ap) == ("dynamic", 1, pytest.approx(0.4))
    assert (sel.first, sel.second, sel.pairs) == ("mlp", "gating", 2)
    assert sel.box_ap == pytest.approx(0.15) and sel.latency_full_ms == pytest.approx(-1.0)
    assert pt.sentence().startswith("preserve vs discard: +0.9 box AP, +1.0 mask AP, +2.0 ms full")
    assert pt.sentence().endswith("over 2 pairs")
    assert react.sentence().startswith("reactivation vs no reactivation: +0.5 box AP")


def test_csv_contents(sweep):
    rows = list(csv.DictReader(io.StringIO(to_csv(build_report(sweep)))))
    by_id = {r["run_id"]: r for r in rows}
    assert len(rows) == 10  # 7 done + 3 not done, none dropped
    assert by_id["run2"]["box_ap"] == "39.0" and by_id["run2"]["d_box_ap"] == "-1.0"
    assert by_id["run2"]["pruned_tokens"] == "preserve" and by_id["run2"]["state"] == "done"
    assert float(by_id["run2"]["speedup_full"]) == pytest.approx(100 / 82, abs=1e-6)
    assert by_id["zz-failed"]["state"] == "failed" and "CUDA out of memory" in by_id["zz-failed"]["note"]
    assert by_id["zz-failed"]["box_ap"] == "" and by_id["zz-corrupt"]["state"] == "corrupt"


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
    rep = build_report(sweep)
    data = json.loads(render(rep, "json"))
    assert len(data["rows"]) == 10 and data["effects"][0]["pairs"] == 2
    md = render(rep, "markdown")
    assert "| dense | 0 | — |" in md and "| run0 | 0 | discard |" in md and "- preserve vs discard" in md and "| zz-failed |" in md
    tex = render(rep, "latex")
    assert r"\begin{tabular}" in tex and r"$\Delta$ box" in tex and "% not done: zz-failed" in tex
    assert r"preserve vs discard & 2 & +0.9 & +1.0 & +2.0 & +1.0 \\" in tex
    out = tmp_path / "r.csv"
    assert run_report(sweep, fmt="csv", out=out, console=Console(file=io.StringIO())) == 0
    assert out.read_text().startswith("sweep,run_id")


def test_seeds_mean_std(tmp_path):
    s = tmp_path / "seeds"
    for seed, box in ((0, 40.0), (1, 41.0), (2, 42.0)):
        make_run(s, f"dense-{seed}", seed=seed, box=box, mask=36.0, full=100.0, bb=60.0)
        make_run(s, f"p-{seed}", ax("preserve", False, "fixed", "mlp"), seed=seed,
                 box=box - 1 + seed * 0.1, mask=35.0, full=80.0, bb=40.0)
    rep = build_report(s)
    assert rep.aggregated and len(rep.rows) == 2
    pruned = rep.rows[1]
    assert pruned["n"] == 3 and pruned["box_ap"] == pytest.approx(40.1)
    assert pruned["box_ap_std"] == pytest.approx(1.1)  # stdev of 39.0, 40.1, 41.2
    assert pruned["d_box_ap"] == pytest.approx(-0.9) and pruned["d_box_ap_std"] == pytest.approx(0.1)
    assert "40.1 ± 1.1" in render(rep, "markdown")


def test_plot_written(sweep, tmp_path):
    png = tmp_path / "plots" / "pareto.png"
    assert plot_pareto(build_report(sweep), png) == 7
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
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
    code = ("import sys; from typer.testing import CliRunner; from prunebench.cli import app\n"
            f"r = CliRunner().invoke(app, ['report', {str(sweep)!r}, '--format', 'csv'])\n"
            "assert r.exit_code == 0, r.output\n"
            "r = CliRunner().invoke(app, ['status', " + repr(str(sweep)) + "])\n"
            "assert r.exit_code == 0, r.output\n"
            "heavy = sorted(m for m in ('torch', 'mmdet', 'mmengine', 'mmcv', 'matplotlib') if m in sys.modules)\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
