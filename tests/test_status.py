"""`prunebench status`: one line per run, live Slurm state, killed local jobs, exit codes."""

from __future__ import annotations

import io
import sys
import types

import pytest
from rich.console import Console

from prunebench.executors.slurm.queue import JobState
from prunebench.results import fmt_duration, run_lock, write_status
from prunebench.status import print_status

QUERY = "prunebench.executors.slurm.queue"


def status_text(root) -> tuple[int, str]:
    out = io.StringIO()
    code = print_status(root, Console(file=out, width=300))
    return code, out.getvalue()


def line_of(text: str, run_id: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(run_id + " ")]
    return line


@pytest.fixture
def sweep(tmp_path, make_run):
    s = tmp_path / "sw"
    make_run(s, "dense", box=40.04, mask=36.0, full=100.0, bb=60.0)
    make_run(
        s,
        "failed",
        {"pruned_tokens": "discard"},
        state="failed",
        error="RuntimeError: boom\n  at [layer 3]",
        log="/logs/failed.log",
    )
    make_run(
        s,
        "killed",
        {"pruned_tokens": "discard"},
        state="failed",
        error="exit code -9",
        traceback="...\nKilled by OOM killer\n",
        log="/logs/killed.log",
    )
    make_run(
        s,
        "running",
        {"pruned_tokens": "preserve"},
        state="running",
        phase="train",
        iter=250,
        max_iters=1000,
        eta_s=3725,
        slurm_job_id="101",
    )
    make_run(
        s, "queued", {"pruned_tokens": "preserve", "rate": "dynamic"}, state="pending", slurm_job_id="102"
    )
    make_run(
        s,
        "skipped",
        {"pruned_tokens": "discard", "reactivation": True},
        state="skipped",
        reason="discard + reactivation: a discarded token cannot come back",
    )
    (make_run(s, "corrupt", {"pruned_tokens": "preserve"}) / "metrics.json").write_text("{")
    return s


def test_one_line_per_run(sweep):
    code, text = status_text(sweep)
    assert code == 0
    assert line_of(text, "dense").split() == [
        "dense",
        "done",
        "box",
        "40.0",
        "mask",
        "36.0",
        "full",
        "100.0",
        "ms",
        "backbone",
        "60.0",
        "ms",
    ]
    failed = line_of(text, "failed")
    assert "failed" in failed and "at [layer 3]" in failed and "(log: /logs/failed.log)" in failed
    assert "exit code -9: Killed by OOM killer  (log: /logs/killed.log)" in line_of(text, "killed")
    assert "train  iter 250/1000 (25%)  ETA 1h02m" in line_of(text, "running")
    assert "a discarded token cannot come back" in line_of(text, "skipped")
    assert "corrupt" in line_of(text, "corrupt") and "metrics.json is not valid JSON" in text
    assert "7 runs in" in text and "1 done, 1 running, 1 pending, 1 skipped, 2 failed, 1 corrupt" in text


def test_pending_waits_for_dependency(tmp_path, make_run):
    s = tmp_path / "sw"
    make_run(s, "dense", state="running")
    child = make_run(s, "child", {"pruned_tokens": "preserve"}, state="pending")
    (child / "run.json").write_text('{"run_id": "child", "depends_on": ["dense"], "axes": {}}')
    assert "waits for dense" in line_of(status_text(s)[1], "child")


def test_live_slurm_state(sweep, monkeypatch):
    asked = []

    def query(job_ids):
        asked.append(list(job_ids))
        return {"101": JobState("101", "RUNNING"), "102": JobState("102", "TIMEOUT")}

    monkeypatch.setitem(sys.modules, QUERY, types.SimpleNamespace(query=query))
    code, text = status_text(sweep)
    assert code == 0 and asked == [["101", "102"]]  # only the live (pending/running) runs
    assert "[slurm 101 RUNNING]" in line_of(text, "running")
    assert "[slurm 102 TIMEOUT]" in line_of(text, "queued")


def test_slurm_unavailable_is_a_warning(sweep, monkeypatch):
    def broken(job_ids):
        raise FileNotFoundError("squeue")

    monkeypatch.setitem(sys.modules, QUERY, types.SimpleNamespace(query=broken))
    code, text = status_text(sweep)
    assert code == 0 and "live Slurm state unavailable: FileNotFoundError: squeue" in text
    monkeypatch.setitem(sys.modules, QUERY, None)  # import fails
    code, text = status_text(sweep)
    assert code == 0 and "live Slurm state unavailable" in text and "slurm 101" not in text


def test_exit_codes(tmp_path):
    code, text = status_text(tmp_path / "nope")
    assert code == 2 and "no such results folder" in text
    (tmp_path / "empty").mkdir()
    code, text = status_text(tmp_path / "empty")
    assert code == 0 and "no run folders yet" in text


def test_parent_of_sweeps(tmp_path, make_run):
    make_run(tmp_path / "a", "r1", state="pending")
    make_run(tmp_path / "b", "r1", state="done", box=1.0, full=2.0, bb=1.0)
    text = status_text(tmp_path)[1]
    assert line_of(text, "a/r1").split()[1] == "pending" and line_of(text, "b/r1").split()[1] == "done"


def test_fmt_duration():
    assert [fmt_duration(s) for s in (5, 65, 3725, 90000)] == ["5s", "1m05s", "1h02m", "1d01h"]


def test_a_running_run_without_a_live_job_is_shown_killed(tmp_path, make_run, hold_lock):
    run_dir = make_run(tmp_path / "sw", "dense", state="running", phase="train", iter=3, max_iters=9)
    assert "no live job" not in status_text(tmp_path / "sw")[1]  # no lock file: nothing known
    with run_lock(run_dir):  # a job held the lock, then was killed (kill -9) before it said so
        pass
    assert "[no live job: killed; re-run the sweep to resume]" in line_of(
        status_text(tmp_path / "sw")[1], "dense"
    )
    holder = hold_lock(run_dir)
    assert "no live job" not in status_text(tmp_path / "sw")[1]
    holder.release()
    write_status(run_dir, "running", slurm_job_id="5")  # Slurm's state speaks for Slurm runs
    assert "no live job" not in status_text(tmp_path / "sw")[1]


def test_status_does_not_import_the_slurm_backend():
    import subprocess

    code = (
        "import sys, prunebench.status; "
        "assert not [m for m in sys.modules if m.startswith('prunebench.executors')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
