"""``sweep --until-decided`` on planted results: a fake job writes metrics with a planted effect
of the ``rate`` axis and seeded noise (no training)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunebench.results import atomic_write_json, is_finished, read_json, write_status
from prunebench.sequential import LOG_FILE, Comparison, judge, report_lines, run_until_decided

PLANTED_JOB = "test_sequential:planted_job"
GRID = """\
name: planted
base: mask-rcnn-vit-cpu
backbone: {{embed_dim: 32, depth: 2, num_heads: 2, prune_layers: [1], keep_ratios: [0.5], out_channels: 16}}
data: {{type: synthetic, num_train: 4, num_val: 2, image_size: [64, 64], num_classes: 2, img_scale: [64, 64], cache_dir: {cache}}}
schedule: {{dense: {{iters: 2}}, finetune: {{iters: 1}}}}
axes:
  pruned_tokens: [preserve]
  reactivation: [true]
  rate: [dynamic, fixed]
  selector: [mlp]
seeds: [0, 1]
"""


def planted_job(run_dir, launcher="none"):
    """Metrics with box/mask AP = 40 + the planted effect (dynamic rate) + seeded noise; the run
    reports ``duration`` seconds of wall time and sleeps ``sleep`` seconds. ``starts.txt`` counts calls."""
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        return read_json(run_dir / "metrics.json")
    with open(run_dir / "starts.txt", "a") as f:
        f.write(f"{os.getpid()}\n")
    plant = json.loads((run_dir.parent / "planted.json").read_text())
    spec = read_json(run_dir / "run.json")
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - plant.get("duration", 0)))
    write_status(run_dir, "running", started=start)
    time.sleep(plant.get("sleep", 0))
    rng = random.Random(run_dir.name)
    ap = 40.0 + (plant["effect"] if spec["axes"].get("rate") == "dynamic" else 0.0)
    metrics = {
        "run_id": spec["run_id"],
        "sweep": spec["sweep"],
        "stage": spec["stage"],
        "backbone": spec["backbone"],
        "seed": spec["seed"],
        "axes": spec["axes"],
        "box_ap": ap + rng.gauss(0, plant["noise"]),
        "mask_ap": ap + rng.gauss(0, plant["noise"]),
        "latency_ms": {"full": 1.0, "backbone": 1.0},
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_status(run_dir, "done")
    return metrics


def setup(tmp_path: Path, **plant) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(GRID.format(cache=tmp_path / "cache"))
    sweep = tmp_path / "results" / "planted"
    sweep.mkdir(parents=True)
    (sweep / "planted.json").write_text(json.dumps(plant))
    return path


def until(tmp_path, grid, **kw):
    return run_until_decided(grid, tmp_path / "results", executor_options={"job_fn": PLANTED_JOB}, **kw)


def starts(sweep: Path) -> dict[str, int]:
    return {p.parent.name: len(p.read_text().split()) for p in sweep.glob("*/starts.txt")}


def test_judge_uses_the_spent_level_and_the_margin():
    c = Comparison("x", "better", {0: 1.0, 1: 1.2, 2: 0.9}, lambda a: True)
    assert judge(c, 0.05, 0.5)["verdict"] == "reproduced"
    assert judge(c, 0.0005, 0.5)["verdict"] == "inconclusive"  # a stricter look: wider interval
    small = Comparison("x", "better", {0: 0.01, 1: -0.01, 2: 0.0}, lambda a: True)
    assert judge(small, 0.05, 0.5)["verdict"] == "equivalent"
    assert judge(Comparison("x", "better", {0: 3.0}, lambda a: True), 0.05, 0.5)["verdict"] == "inconclusive"


def test_large_effect_stops_after_the_first_round(tmp_path, job_processes_see_tests):
    log = until(tmp_path, setup(tmp_path, effect=5.0, noise=0.01))
    assert len(log["rounds"]) == 1 and log["stopped"] == "every comparison decided"
    assert {v["verdict"] for v in log["rounds"][0]["verdicts"]} == {"reproduced"}
    assert all(v["seeds"] == 2 for v in log["rounds"][0]["verdicts"])
    assert read_json(tmp_path / "results" / "planted" / LOG_FILE) == log
    lines = report_lines(tmp_path / "results")  # what `prunebench report` prints below its tables
    assert lines[0].startswith("planted: --until-decided: 1 round(s), stopped: every comparison decided")
    assert lines[1].startswith("  rate: dynamic vs fixed (box_ap): reproduced on 2 seed(s), interval [+")


def test_effect_near_the_noise_adds_seeds_until_max(tmp_path, job_processes_see_tests):
    log = until(tmp_path, setup(tmp_path, effect=0.6, noise=2.0), max_seeds=4)
    assert log["stopped"] == "--max-seeds 4 reached" and len(log["rounds"]) == 3
    added = [r["added"] for r in log["rounds"][:-1]]
    assert [a["seed"] for a in added] == [2, 3]
    assert all(len(a["runs"]) == 3 for a in added)  # a dense parent and the two rate cells
    assert log["rounds"][-1]["seeds"] == [0, 1, 2, 3] and log["level"] == pytest.approx(1 - 0.05 / 3)
    sweep = tmp_path / "results" / "planted"
    assert set(starts(sweep).values()) == {1}  # each run ran once


def test_budget_stop(tmp_path, job_processes_see_tests):
    log = until(tmp_path, setup(tmp_path, effect=0.6, noise=2.0, duration=60), budget_hours=0.06)
    last = log["rounds"][-1]
    assert log["stopped"].startswith("budget:") and len(log["rounds"]) == 1
    assert last["spent_h"] == pytest.approx(6 * 60 / 3600, abs=2e-3)  # 6 runs of ~60 s
    assert last["spent_h"] + last["forecast_next_h"] > 0.06
    assert len(list((tmp_path / "results" / "planted").glob("*-s2-*"))) == 0  # nothing of seed 2 left


@pytest.mark.slow
def test_kill_9_mid_round_then_rerun_continues(tmp_path, job_processes_see_tests):
    grid = setup(tmp_path, effect=0.6, noise=2.0, sleep=0)
    sweep = tmp_path / "results" / "planted"
    until(tmp_path, grid, max_seeds=2)  # the grid's seeds, finished
    (sweep / "planted.json").write_text(json.dumps({"effect": 0.6, "noise": 2.0, "sleep": 30}))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from prunebench.sequential import run_until_decided; "
        "run_until_decided(sys.argv[2], sys.argv[3], executor_options={'job_fn': 'test_sequential:planted_job'}, "
        "max_seeds=3)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(grid), str(tmp_path / "results")],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(sweep.glob("*-s2-*/starts.txt")):
        time.sleep(0.5)
    assert list(sweep.glob("*-s2-*/starts.txt")), "round 2 never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = starts(sweep)
    finished = {r for r in before if is_finished(sweep / r)}
    assert any("-s2-" in r and r not in finished for r in before)  # killed mid-round
    (sweep / "planted.json").write_text(json.dumps({"effect": 0.6, "noise": 2.0}))
    log = until(tmp_path, grid, max_seeds=3)
    after = starts(sweep)
    assert log["stopped"] == "--max-seeds 3 reached"
    assert sum("added" in r for r in log["rounds"]) == 1  # the killed round went on, no second one
    for run_id, n in after.items():  # finished runs were not redone; the others ran once more
        assert n == before.get(run_id, 0) + (run_id not in finished), run_id
    added = next(r["added"]["runs"] for r in log["rounds"] if "added" in r)
    assert all(is_finished(sweep / r) for r in added)
