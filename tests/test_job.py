"""The job trains its config.py as written (batch per GPU) on the world size the file was written
for, and mirrors its progress into status.json."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from prunebench.job import _StatusHook, load_run_config
from prunebench.results import read_json
from prunebench.sweep import prepare
from test_mmdet_config import write_grid


@pytest.fixture
def dense_for_2_gpus(tmp_path):
    """(run folder, RunSpec) of a dense run whose config.py is written for 2 GPUs (8 images each)."""
    sweep = prepare(write_grid(tmp_path, "mask-rcnn-vit-cpu"), tmp_path / "results", gpus=2)
    spec = sweep.runs[0]
    return sweep.sweep_dir / spec.run_id, spec


def test_the_job_trains_the_file_as_written(dense_for_2_gpus, monkeypatch):
    run_dir, spec = dense_for_2_gpus
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_run_config(run_dir, spec, "pytorch")
    assert cfg.train_dataloader.batch_size == 2 and cfg.launcher == "pytorch"  # the CPU template's 4, per GPU


@pytest.mark.parametrize("launcher, world", [("pytorch", "4"), ("none", "2")])
def test_a_world_size_other_than_the_files_is_refused(dense_for_2_gpus, monkeypatch, launcher, world):
    run_dir, spec = dense_for_2_gpus
    monkeypatch.setenv("WORLD_SIZE", world)
    processes = int(world) if launcher != "none" else 1
    with pytest.raises(RuntimeError) as err:
        load_run_config(run_dir, spec, launcher)
    msg = str(err.value)
    assert f"{run_dir / 'config.py'} is written for 2 GPU(s)" in msg and f"runs {processes} training" in msg
    assert f"total batch of {2 * processes}, not 4" in msg and "--gpus-per-job" in msg


def test_the_status_hook_records_iteration_loss_and_eta(tmp_path):
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("test_status_hook")
    hub.update_scalar("train/loss", 0.75)
    hook = _StatusHook(tmp_path, every_s=0)
    hook.after_train_iter(SimpleNamespace(iter=4, max_iters=10, message_hub=hub), batch_idx=4)
    status = read_json(tmp_path / "status.json")
    assert (status["state"], status["phase"], status["iter"], status["max_iters"]) == (
        "running",
        "train",
        5,
        10,
    )
    assert status["loss"] == 0.75 and status["eta_s"] >= 0
