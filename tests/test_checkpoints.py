"""Checkpoints that recover: a finetune whose dense parent's checkpoint does not load fails naming
the parent, the file and ``--redo``; an unreadable latest checkpoint is skipped for the newest
readable one; a copied results folder resumes from its own files; ``--redo`` resets a run and
its dependants."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from prunebench.cli import app
from prunebench.grid import GridError
from prunebench.job import ParentCheckpointError, load_run_config
from prunebench.results import METRICS_FILE, read_json
from prunebench.results.reset import reset_runs
from prunebench.spec import RunSpec
from prunebench.sweep import prepare, run_sweep
from test_schedule import GRID


@pytest.fixture
def sweep(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID.format(cache=tmp_path / "cache", dense="iters: 4", finetune="iters: 2"))
    return prepare(path, tmp_path / "results")


def save(work: Path, iteration: int, marker: Path | None = None) -> Path:
    """An MMEngine-like checkpoint ``iter_N.pth`` in ``work``; ``last_checkpoint`` names it (by
    the absolute path ``marker``, as MMEngine writes it, default its own)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"iter_{iteration}.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"iter": iteration}}, path)
    (work / "last_checkpoint").write_text(str(marker or path))
    return path


def config(sweep_dir: Path, spec: RunSpec):
    return load_run_config(sweep_dir / spec.run_id, spec, "none")


def test_a_parent_checkpoint_that_does_not_load_names_the_parent_file_and_fix(sweep):
    dense, finetune = sweep.runs
    ckpt = save(sweep.sweep_dir / dense.run_id / "work_dir", 4)
    assert config(sweep.sweep_dir, finetune).load_from == str(ckpt)
    ckpt.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(ParentCheckpointError) as e:
        config(sweep.sweep_dir, finetune)
    msg = str(e.value)
    assert f"the checkpoint {ckpt} of the dense parent {dense.run_id} does not load" in msg
    assert f"--redo {dense.run_id}" in msg and "weights_only" not in msg


def test_an_unreadable_latest_checkpoint_resumes_from_the_newest_readable_one(sweep, capsys):
    dense = sweep.runs[0]
    run_dir = sweep.sweep_dir / dense.run_id
    save(run_dir / "work_dir", 1)
    older = save(run_dir / "work_dir", 2)
    latest = save(run_dir / "work_dir", 3)
    latest.write_bytes(latest.read_bytes()[:100])  # truncated: killed while writing
    cfg = config(sweep.sweep_dir, dense)
    assert cfg.resume and cfg.load_from == str(older)
    note = read_json(run_dir / "status.json")["note"]
    assert note.startswith("resuming from iter_2.pth: iter_3.pth unreadable (")
    assert note in capsys.readouterr().out  # in train.log too


def test_a_copied_results_folder_resumes_from_its_own_files(sweep, tmp_path):
    dense, finetune = sweep.runs
    save(sweep.sweep_dir / dense.run_id / "work_dir", 4)
    save(sweep.sweep_dir / finetune.run_id / "work_dir", 1)
    copy = tmp_path / "copy" / sweep.sweep_dir.name
    shutil.copytree(sweep.sweep_dir, copy)
    shutil.rmtree(sweep.sweep_dir)  # the original is gone: only the copy's files can be used
    cfg = config(copy, finetune)
    assert cfg.resume and cfg.load_from == str(copy / finetune.run_id / "work_dir" / "iter_1.pth")
    shutil.rmtree(copy / finetune.run_id / "work_dir")
    assert config(copy, finetune).load_from == str(copy / dense.run_id / "work_dir" / "iter_4.pth")


def test_redo_resets_a_run_and_its_dependants(sweep, tmp_path):
    dense, finetune = sweep.runs
    for spec in sweep.runs:
        run_dir = sweep.sweep_dir / spec.run_id
        save(run_dir / "work_dir", 2)
        (run_dir / METRICS_FILE).write_text('{"box_ap": 1.0, "latency_ms": {}}')
    assert reset_runs(sweep.sweep_dir, [dense.run_id], [s.run_id for s in sweep.runs]) == [
        dense.run_id,
        finetune.run_id,
    ]
    for spec in sweep.runs:
        run_dir = sweep.sweep_dir / spec.run_id
        assert not (run_dir / METRICS_FILE).exists() and not (run_dir / "work_dir").exists()
        assert read_json(run_dir / "status.json")["state"] == "pending"
    with pytest.raises(GridError, match="--redo nope: not a run of this sweep"):
        run_sweep(sweep.grid.path, tmp_path / "results", redo=["nope"])
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            str(sweep.grid.path),
            "--results",
            str(tmp_path / "results"),
            "--dry-run",
            "--redo",
            dense.run_id,
        ],
    )
    assert (
        result.exit_code == 0 and f"--redo: 2 run(s) would reset (dry run): {dense.run_id}, " in result.output
    )
