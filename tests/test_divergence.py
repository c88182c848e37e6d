"""A non-finite loss stops the run (DivergenceHook, in every written config) and metrics.json is
strict JSON: no NaN, a warning naming each value that was not finite."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config

from prunebench.hooks import DivergenceHook, TrainingDiverged
from prunebench.job import strict_metrics
from prunebench.results import atomic_write_json, metric_warnings, scan_results
from prunebench.sweep import prepare
from test_schedule import GRID


def runner(iteration: int) -> SimpleNamespace:
    lr = SimpleNamespace(get_lr=lambda: {"lr": [0.5]})
    return SimpleNamespace(iter=iteration, max_iters=16, optim_wrapper=lr)


def step(hook: DivergenceHook, iteration: int, **losses: float) -> None:
    hook.after_train_iter(runner(iteration), 0, outputs={k: torch.tensor(v) for k, v in losses.items()})


def test_the_first_non_finite_loss_stops_the_run_naming_the_terms_and_the_fix():
    hook = DivergenceHook()
    step(hook, 0, loss=2.7e30, loss_cls=2.7e30)  # huge but finite: trains on
    with pytest.raises(TrainingDiverged) as e:
        step(hook, 1, loss=float("nan"), loss_cls=float("inf"), loss_bbox=0.3)
    msg = str(e.value)
    assert "diverged at iteration 2 of 16 at lr 0.5" in msg
    assert "loss=nan, loss_cls=inf" in msg and "loss_bbox" not in msg
    assert "lower the stage's lr" in msg and "schedule.clip_grad" in msg


def test_patience_counts_consecutive_non_finite_iterations():
    hook = DivergenceHook(patience=2)
    step(hook, 0, loss=float("nan"))
    step(hook, 1, loss=1.0)  # a finite one starts the count again (AMP's scaler skipped a step)
    step(hook, 2, loss=float("inf"))
    with pytest.raises(TrainingDiverged, match="iteration 4"):
        step(hook, 3, loss=float("nan"))


def test_every_written_config_runs_the_hook(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID.format(cache=tmp_path / "cache", dense="iters: 4", finetune="iters: 2"))
    sweep = prepare(path, tmp_path / "results")
    for spec in sweep.runs:
        cfg = Config.fromfile(str(sweep.sweep_dir / spec.run_id / "config.py"))
        assert dict(type="DivergenceHook", patience=1) in cfg.custom_hooks
        assert "prunebench.hooks" in cfg.custom_imports["imports"]


def test_metrics_are_strict_json_with_a_warning_per_non_finite_value(tmp_path):
    metrics = strict_metrics({"box_ap": 1.5, "mask_ap": float("nan"), "coco": {"segm_mAP": float("inf")}})
    assert metrics["mask_ap"] is None and metrics["coco"]["segm_mAP"] is None
    assert metrics["warnings"] == [
        "mask_ap was not a finite number (written as null)",
        "coco.segm_mAP was not a finite number (written as null)",
    ]
    atomic_write_json(tmp_path / "m.json", {"loss": float("nan"), "x": [float("-inf")]})
    strict = json.loads((tmp_path / "m.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert strict == {"loss": None, "x": [None]}


def test_a_box_ap_that_is_not_a_number_fails_the_run():
    with pytest.raises(RuntimeError, match="COCO box AP is nan: the model made no usable detections"):
        strict_metrics({"box_ap": float("nan"), "coco": {}})


def test_report_warns_about_metrics_that_are_not_numbers(tmp_path):
    from conftest import build_run

    run = build_run(tmp_path / "s", "dense-s0-aaaaaa", box=30.0, mask=20.0)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(mask_ap="n/a", warnings=["coco.segm_mAP was not a finite number (written as null)"])
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert metric_warnings(scan_results(tmp_path / "s")) == [
        "s/dense-s0-aaaaaa: metrics.json mask_ap is 'n/a', not a number (shown as —)",
        "s/dense-s0-aaaaaa: coco.segm_mAP was not a finite number (written as null)",
    ]


def test_status_shows_a_diverged_run_as_failed_with_iteration_and_fix(tmp_path):
    import io

    from rich.console import Console

    from conftest import build_run
    from prunebench.status import print_status

    error = (
        "TrainingDiverged: training diverged at iteration 3 of 450 at lr 1e+06: non-finite loss terms "
        "loss=nan, loss_cls=nan. Fix: lower the stage's lr (schedule.dense.lr / schedule.finetune.lr) "
        "or clip gradients (schedule.clip_grad: 1.0), then re-run the sweep"
    )
    build_run(tmp_path / "s", "dense-s0-aaaaaa", state="failed", error=error, log="train.log")
    out = io.StringIO()
    print_status(tmp_path / "s", Console(file=out, width=1000))
    assert f"failed    {error}  (log: train.log)" in out.getvalue()
