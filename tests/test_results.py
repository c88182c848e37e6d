"""Reading run folders: states, tolerance of missing/partial/corrupt files, folder layouts.

``make_run`` is the hand-made run folder builder that test_report/test_status import too."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunebench.results import (CORRUPT, METRICS_FILE, MISSING, STATUS_FILE, load_run, read_json,
                                scan_results, write_status)

DENSE_AXES = {"pruned_tokens": None, "reactivation": None, "rate": None, "selector": None}


def make_run(sweep_dir: Path, run_id: str, axes: dict | None = None, *, state: str = "done", seed: int = 0,
             box: float | None = None, mask: float | None = None, full: float | None = None,
             bb: float | None = None, keep: float = 1.0, flops: float = 10.0, backbone: str = "deit-small",
             **status) -> Path:
    """Write a run folder as the job runner would; ``metrics.json`` only when ``box`` is given."""
    axes = dict(DENSE_AXES if axes is None else axes)
    stage = "dense" if all(axes.get(a) is None for a in DENSE_AXES) else "finetune"
    run_dir = Path(sweep_dir) / run_id
    run_dir.mkdir(parents=True)
    ident = {"run_id": run_id, "sweep": Path(sweep_dir).name, "stage": stage, "backbone": backbone,
             "seed": seed, "axes": axes}
    (run_dir / "run.json").write_text(json.dumps({**ident, "depends_on": [], "overrides": {}}))
    (run_dir / "config.py").write_text("model = dict()\n")
    write_status(run_dir, state, **status)
    if box is not None:
        metrics = {**ident, "box_ap": box, "mask_ap": mask, "coco": {"bbox_mAP": box / 100},
                   "latency_ms": {"backbone": bb, "full": full, "device": "cpu", "input_size": [512, 512],
                                  "batch": 1, "repeats": 10},
                   "flops_g": {"backbone": flops, "full": None},
                   "keep_ratio": {"mean": keep, "per_layer": [keep]}, "env": {}, "train_time_s": 1.0}
        (run_dir / METRICS_FILE).write_text(json.dumps(metrics))
    return run_dir


def test_states_and_problems(tmp_path):
    sweep = tmp_path / "s"
    make_run(sweep, "a-dense", box=40.0, mask=36.0, full=100.0, bb=60.0)
    make_run(sweep, "b-failed", {"pruned_tokens": "discard"}, state="failed", error="x\nCUDA out of memory",
             log="/r/b/train.log")
    bad = make_run(sweep, "c-corrupt", {"pruned_tokens": "preserve"}, state="done")
    (bad / METRICS_FILE).write_text('{"box_ap": 39.')
    partial = make_run(sweep, "d-partial", {"pruned_tokens": "preserve"}, state="done")
    (partial / METRICS_FILE).write_text('{"run_id": "d-partial", "mask_ap": 30.0}')
    make_run(sweep, "e-nometrics", {"pruned_tokens": "preserve"}, state="done")
    make_run(sweep, "f-running", {"pruned_tokens": "preserve"}, state="running", iter=10, max_iters=100)
    (sweep / "g-bare").mkdir()
    (sweep / "g-bare" / "config.py").write_text("")
    badstatus = make_run(sweep, "h-badstatus", {"pruned_tokens": "preserve"})
    (badstatus / STATUS_FILE).write_text("[1, 2]")
    make_run(sweep, "i-nan", {"pruned_tokens": "preserve"}, box=39.0, mask=float("nan"), full=80.0, bb=40.0)
    (sweep / "slurm_logs").mkdir()  # not a run folder: ignored
    (sweep / "pareto.png").write_bytes(b"x")

    runs = {r.run_id: r for r in scan_results(sweep)}
    assert list(runs) == ["a-dense", "b-failed", "c-corrupt", "d-partial", "e-nometrics", "f-running",
                          "g-bare", "h-badstatus", "i-nan"]
    got = {k: r.state for k, r in runs.items()}
    assert got == {"a-dense": "done", "b-failed": "failed", "c-corrupt": CORRUPT, "d-partial": CORRUPT,
                   "e-nometrics": MISSING, "f-running": "running", "g-bare": MISSING, "h-badstatus": CORRUPT,
                   "i-nan": "done"}
    assert "not valid JSON" in runs["c-corrupt"].problem and "metrics.json" in runs["c-corrupt"].problem
    assert "lacks box_ap, latency_ms" in runs["d-partial"].problem
    assert "says done" in runs["e-nometrics"].problem
    assert "status.json holds a list" in runs["h-badstatus"].problem
    assert runs["i-nan"].metric("mask_ap") is None and runs["i-nan"].metric("box_ap") == 39.0
    assert runs["g-bare"].sweep == "s" and runs["g-bare"].axes == {}
    dense = runs["a-dense"]
    assert dense.is_dense and dense.metric("box_ap") == 40.0 and dense.metric("latency_backbone") == 60.0
    assert dense.metric("keep_ratio") == 1.0 and dense.metric("flops_full") is None
    assert not runs["b-failed"].is_dense and runs["b-failed"].status["log"] == "/r/b/train.log"


def test_layouts(tmp_path):
    for sweep in ("s1", "s2"):
        make_run(tmp_path / sweep, "dense", box=40.0, mask=36.0, full=100.0, bb=60.0)
    (tmp_path / "empty-sweep").mkdir()
    assert [(r.sweep, r.run_id) for r in scan_results(tmp_path)] == [("s1", "dense"), ("s2", "dense")]
    assert [r.run_id for r in scan_results(tmp_path / "s1")] == ["dense"]
    assert [r.run_id for r in scan_results(tmp_path / "s1" / "dense")] == ["dense"]
    assert scan_results(tmp_path / "empty-sweep") == []
    with pytest.raises(FileNotFoundError, match="no such results folder"):
        scan_results(tmp_path / "nope")


def test_writer_side_unchanged(tmp_path):
    write_status(tmp_path, "running", slurm_job_id="42")
    write_status(tmp_path, "done")
    assert read_json(tmp_path / STATUS_FILE)["slurm_job_id"] == "42"
    with pytest.raises(ValueError):
        write_status(tmp_path, "bogus")
    assert load_run(tmp_path).state == MISSING  # status done, no metrics
