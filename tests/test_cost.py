"""The study's size in ``plan``, the forecast of ``plan --estimate`` and forecast vs actual in ``status``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prunebench.cli import app
from prunebench.cost import FORECAST_FILE, forecast_vs_actual, plan_study
from prunebench.results import scan_results, write_status
from prunebench.sweep import run_sweep

GRID = """\
name: cost
base: mask-rcnn-vit-cpu
backbone: {{embed_dim: 32, depth: 2, num_heads: 2, prune_layers: [1], keep_ratios: [0.5], out_channels: 16}}
data: {{type: synthetic, num_train: 8, num_val: 4, image_size: [64, 64], num_classes: 2, img_scale: [64, 64], batch_size: 2, cache_dir: {cache}}}
schedule: {{dense: {{iters: {dense}}}, finetune: {{epochs: 1}}, warmup_iters: 0, checkpoint_interval: 4}}
bench: {{warmup: 1, repeats: 2}}
axes:
  pruned_tokens: [preserve]
  reactivation: [true]
  rate: [dynamic, fixed]
  selector: [mlp]
"""


def grid(tmp_path: Path, dense: int = 4) -> Path:
    path = tmp_path / "cost.yaml"
    path.write_text(GRID.format(cache=tmp_path / "cache", dense=dense))
    return path


def test_plan_ends_with_the_study_size(tmp_path):
    result = CliRunner().invoke(
        app, ["plan", str(grid(tmp_path)), "--results", str(tmp_path / "r")], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.split("study size")[1].splitlines()
    # dense: 4 iterations of 2 images; finetunes: 1 epoch = 8 images / batch 2 = 4 iterations each
    dense = next(ln for ln in lines if ln.startswith("dense"))
    assert (
        " ".join(dense.split())
        == "dense 1 runs 4 training iterations 8 images seen 1 evaluations (4 val images)"
    )
    fine = next(ln for ln in lines if ln.startswith("finetune"))
    assert (
        " ".join(fine.split())
        == "finetune 2 runs 8 training iterations 16 images seen 2 evaluations (8 val images)"
    )
    assert next(ln for ln in lines if ln.startswith("total")).split()[:4] == ["total", "3", "runs", "12"]
    assert not (tmp_path / "r" / "cost" / FORECAST_FILE).exists()  # no --estimate: nothing timed


def test_status_shows_forecast_vs_actual(tmp_path, make_run):
    sweep = tmp_path / "s"
    fmt = "%Y-%m-%dT%H:%M:%S"
    for run_id, wall in (("dense-s0-a", 120), ("x-s0-b", 60)):
        make_run(sweep, run_id, box=1.0, full=1.0)
        write_status(sweep / run_id, "done", started=time.strftime(fmt, time.localtime(time.time() - wall)))
    make_run(sweep, "y-s0-c", {"selector": "mlp"}, state="pending")
    forecast = {"runs": {"dense-s0-a": 60.0, "x-s0-b": 30.0, "y-s0-c": 30.0}, "total_hours": 2 / 60}
    (sweep / FORECAST_FILE).write_text(json.dumps(forecast))
    line = forecast_vs_actual(sweep, scan_results(sweep))
    assert line.startswith(
        "forecast vs actual over 2 finished runs: 1.5 min forecast, 3.0 min actual (x2.00)"
    )
    result = CliRunner().invoke(app, ["status", str(sweep)], env={"COLUMNS": "250"})
    assert "forecast vs actual over 2 finished runs" in result.output


def test_cost_and_sequential_modules_do_not_import_torch():
    code = (
        "import sys; from prunebench import cost, sequential, parent, status; "
        "print(sorted(m for m in ('torch', 'mmdet', 'mmcv') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_estimate_forecasts_the_sweep_within_a_factor_of_2(tmp_path):
    path = grid(tmp_path, dense=12)
    forecast = plan_study(path, tmp_path / "r", estimate_cost=True)
    assert forecast["device"] == "cpu" and set(forecast["hours"]) == {"dense", "finetune"}
    assert all(m["iter_s"] > 0 and m["test_image_s"] > 0 for m in forecast["models"])
    t0 = time.perf_counter()
    states = run_sweep(path, tmp_path / "r")
    actual = time.perf_counter() - t0
    assert set(states.values()) == {"done"}
    predicted = forecast["total_hours"] * 3600
    print(f"forecast {predicted:.1f} s, actual {actual:.1f} s")
    assert actual / 2 <= predicted <= actual * 2


def test_forecast_lines_give_slurm_gpu_hours_marked_when_timed_on_a_cpu():
    from prunebench.cost import forecast_lines

    forecast = {
        "device": "cpu",
        "threads": 2,
        "startup_s": 5.0,
        "models": [{"run": "dense-s0-a", "iter_s": 1.5, "test_image_s": 0.25}],
        "hours": {"parent": 1.0, "finetune": 7.0},
        "total_hours": 8.0,
        "slurm_gpu_hours": 8.0,
        "gpus_per_job": 8,
    }
    lines = forecast_lines(forecast)
    assert "model of dense-s0-a: 1.500 s per training iteration, 0.250 s per test image" in lines[1]
    assert lines[-2].split() == ["forecast", "total", "8.000", "device-hours", "(cpu,", "2", "threads)"]
    assert lines[-1] == (
        "Slurm: 8.000 GPU-hours, 1.000 hours of jobs at 8 GPU(s) each (timed on a CPU: run "
        "`plan --estimate` on a GPU node)"
    )
