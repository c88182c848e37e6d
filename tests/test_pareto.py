"""The Pareto plot agrees with the report's table: x is the paired speed-up (or latency rescaled by
it, or GFLOPs over val), never the unpaired latencies of different jobs; FLOP ratios and the
GFLOPs' image counts in the exports."""

import json

import matplotlib.axes
import pytest

from prunebench.report import build_report, plot_pareto
from prunebench.report.plot import x_value
from prunebench.report.render import render

SEL = {"pruned_tokens": "preserve", "reactivation": False, "rate": "dynamic", "selector": "mlp"}


def _run(make_run, sweep, run_id, axes, *, seed, box, full, speedup=None, flops=100.0, images=50):
    run_dir = make_run(sweep, run_id, axes, seed=seed, box=box, mask=box - 1, full=full, bb=full / 2)
    path = run_dir / "metrics.json"
    m = json.loads(path.read_text())
    m["flops_g"] = {
        "backbone": flops / 2,
        "full": flops,
        "vit_blocks": flops / 3,
        "p10": {"backbone": flops / 2 - 1, "full": flops - 2, "vit_blocks": 1.0},
        "p90": {"backbone": flops / 2 + 1, "full": flops + 2, "vit_blocks": 1.0},
        "images": images,
        "sizes": 1,
        "source": "val",
    }
    if speedup is not None:
        m["paired"] = {"dense_run_id": "dense", "speedup": {"backbone": speedup, "full": speedup}}
    path.write_text(json.dumps(m))


@pytest.fixture
def contradicting(tmp_path, make_run):
    """Dense at 52.6 ms; finetunes whose own jobs measured 40-48 ms (1.1-1.3x faster unpaired) but
    whose paired speed-ups are 0.93 and 1.03 (two seeds each)."""
    sweep = tmp_path / "s"
    for seed in (0, 1):
        _run(make_run, sweep, f"dense-s{seed}", None, seed=seed, box=30.0, full=52.6, flops=200.0)
        _run(
            make_run,
            sweep,
            f"a-s{seed}",
            SEL,
            seed=seed,
            box=29.0,
            full=40.0 + seed,
            speedup=0.92 + 0.02 * seed,
        )
        other = {**SEL, "selector": "gating"}
        _run(make_run, sweep, f"b-s{seed}", other, seed=seed, box=29.5, full=48.0, speedup=1.03, flops=150.0)
    return sweep


def _plotted(monkeypatch, report, x, tmp_path) -> dict[float, tuple[float, float]]:
    """box AP -> (x, x error bar) of the points the plot draws in its box AP panel."""
    seen = []
    real = matplotlib.axes.Axes.errorbar

    def spy(self, xs, ys, *args, **kwargs):
        seen.extend(zip(ys, zip(xs, kwargs["xerr"])))
        return real(self, xs, ys, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    plot_pareto(report, tmp_path / f"{x}.svg", x)
    return dict(seen[: len(seen) // 2])  # the mask AP panel repeats the x positions


def test_plot_follows_paired_speedups_not_unpaired_latency(contradicting, tmp_path, monkeypatch):
    report = build_report(contradicting)
    by_label = {r["label"]: r for r in report.rows}
    dense, a, b = (
        by_label["dense"],
        by_label["preserve/no-react/dynamic/mlp"],
        by_label["preserve/no-react/dynamic/gating"],
    )
    points = _plotted(monkeypatch, report, "speedup", tmp_path)
    assert points[30.0] == (1.0, 0.0)  # dense at 1.0x
    assert points[29.0][0] == pytest.approx(0.93) and points[29.5][0] == pytest.approx(1.03)  # not 52.6/40.5
    assert points[29.0][1] == pytest.approx(a["speedup_full_std"]) and a["speedup_full_std"] > 0  # seeds
    assert x_value(a, "speedup") == points[29.0]
    latency = _plotted(monkeypatch, report, "latency", tmp_path)
    assert latency[30.0][0] == pytest.approx(52.6)
    # dense latency / paired speed-up, mean over seeds: slower than dense, as the table says
    assert latency[29.0][0] == pytest.approx((52.6 / 0.92 + 52.6 / 0.94) / 2) and latency[29.0][0] > 52.6
    assert latency[29.5][0] == pytest.approx(52.6 / 1.03)
    gflops = _plotted(monkeypatch, report, "gflops", tmp_path)
    assert [gflops[y][0] for y in (30.0, 29.0, 29.5)] == [200.0, 100.0, 150.0]
    assert b["flop_ratio_full"] == pytest.approx(200 / 150) and dense["flop_ratio_full"] == 1.0


def test_unknown_x_axis(contradicting, tmp_path):
    with pytest.raises(ValueError, match="--x"):
        plot_pareto(build_report(contradicting), tmp_path / "p.png", "ms")


def test_exports_carry_flop_ratio_spread_and_image_count(contradicting):
    report = build_report(contradicting)
    rows = json.loads(render(report, "json"))["rows"]
    row = next(r for r in rows if r["label"] == "preserve/no-react/dynamic/gating")
    assert row["flop_ratio_full"] == pytest.approx(200 / 150) and row["flops_images"] == 50
    assert (row["flops_full_p10"], row["flops_full_p90"]) == (148.0, 152.0)
    csv = render(report, "csv")
    assert "flop_ratio_full" in csv.splitlines()[0] and "flops_full_p90" in csv.splitlines()[0]
    for fmt in ("latex", "markdown"):
        assert "means per image over each run's val images (50 images" in render(report, fmt)


def test_runs_counted_on_their_first_image_are_named(tmp_path, make_run):
    make_run(tmp_path / "old", "dense-s0", None, box=30.0, mask=29.0, full=50.0, bb=20.0)  # flops_g of old
    report = build_report(tmp_path / "old")
    assert report.rows[0]["flops_images"] is None and report.rows[0]["flops_backbone"] == 10.0
    (note,) = [n for n in report.notes() if n.startswith("GFLOPs")]
    assert note == "GFLOPs: 1 row from an earlier prunebench count the first timed image only."
