"""Run folders: states, tolerance of missing/partial/corrupt files, folder layouts, the one rule
of "finished", recording failures, and the lock that makes one writer per run."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from prunebench import results
from prunebench.results import (
    CORRUPT,
    LOCK_FILE,
    METRICS_FILE,
    MISSING,
    STATUS_FILE,
    RunLocked,
    is_finished,
    load_run,
    lock_holder,
    read_json,
    record_failure,
    run_lock,
    scan_results,
    write_status,
)


def test_states_and_problems(tmp_path, make_run):
    sweep = tmp_path / "s"
    make_run(sweep, "a-dense", box=40.0, mask=36.0, full=100.0, bb=60.0)
    make_run(
        sweep,
        "b-failed",
        {"pruned_tokens": "discard"},
        state="failed",
        error="x\nCUDA out of memory",
        log="/r/b/train.log",
    )
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
    assert list(runs) == [
        "a-dense",
        "b-failed",
        "c-corrupt",
        "d-partial",
        "e-nometrics",
        "f-running",
        "g-bare",
        "h-badstatus",
        "i-nan",
    ]
    got = {k: r.state for k, r in runs.items()}
    assert got == {
        "a-dense": "done",
        "b-failed": "failed",
        "c-corrupt": CORRUPT,
        "d-partial": CORRUPT,
        "e-nometrics": MISSING,
        "f-running": "running",
        "g-bare": MISSING,
        "h-badstatus": CORRUPT,
        "i-nan": "done",
    }
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


def test_layouts(tmp_path, make_run):
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


@pytest.mark.parametrize(
    "metrics, finished",
    [
        ({"box_ap": 40.0, "latency_ms": {"full": 1.0}}, True),
        ({"box_ap": 40.0, "latency_ms": None}, False),  # the key is there, the value is not
        ({"latency_ms": {"full": 1.0}}, False),
        ("[1]", False),
        ('{"box_ap": 4', False),
        (None, False),
    ],
)
def test_one_rule_of_finished(tmp_path, make_run, metrics, finished):
    run_dir = make_run(tmp_path / "s", "r", state="running")
    if metrics is not None:
        (run_dir / METRICS_FILE).write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    assert is_finished(run_dir) is finished
    assert (load_run(run_dir).state == "done") is finished  # the reader applies the same rule


def test_record_failure_only_when_the_process_did_not(tmp_path, make_run, hold_lock):
    run_dir = make_run(tmp_path / "s", "r", state="running")
    assert record_failure(run_dir, "exit code -9", log="x.log")["state"] == "failed"
    assert read_json(run_dir / STATUS_FILE)["error"] == "exit code -9"
    write_status(run_dir, "failed", error="CUDA out of memory")  # the job said why
    assert record_failure(run_dir, "exit code 1")["error"] == "CUDA out of memory"
    write_status(run_dir, "pending", reason="requeued")
    assert record_failure(run_dir, "SystemExit", keep=("failed", "pending"))["state"] == "pending"
    assert record_failure(run_dir, "exit code 1")["state"] == "failed"  # a pending run that died
    write_status(run_dir, "running")
    holder = hold_lock(run_dir)  # someone else is running it now: not ours to mark
    assert record_failure(run_dir, "exit code 75")["state"] == "running"
    holder.release()
    (run_dir / METRICS_FILE).write_text(json.dumps({"box_ap": 1.0, "latency_ms": {"full": 1.0}}))
    assert record_failure(run_dir, "exit code 1")["state"] == "running"  # finished: nothing failed


def test_lock_names_its_holder_and_keeps_others_out(tmp_path, hold_lock):
    assert lock_holder(tmp_path) is None
    holder = hold_lock(tmp_path)
    seen = lock_holder(tmp_path)
    assert (seen.pid, seen.host) == (holder.pid, socket.gethostname())
    with (
        pytest.raises(RunLocked, match=f"running elsewhere \\(pid {holder.pid} on "),
        run_lock(tmp_path, wait_s=0.2),
    ):
        pass
    holder.release()
    assert lock_holder(tmp_path) is None
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert lock_holder(tmp_path) is None  # this process is not "elsewhere"
        with run_lock(tmp_path):  # re-entrant: run_job inside the job process's lock
            pass
        code = f"from prunebench.results import lock_holder; print(lock_holder({str(tmp_path)!r}).pid)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
        assert int(out) == os.getpid()  # still held after the inner block
    assert lock_holder(tmp_path) is None


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    code = (
        "import os, sys; from prunebench.results import run_lock\n"
        "with run_lock(sys.argv[1]):\n    os.kill(os.getpid(), 9)"
    )
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == -9
    dead = json.loads((tmp_path / LOCK_FILE).read_text())["pid"]
    assert lock_holder(tmp_path) is None
    with run_lock(tmp_path, wait_s=0):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid() != dead


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(results.lock.fcntl, "flock", no_locks)
    with run_lock(tmp_path):
        pass
    assert "no locks" in caplog.text
    assert lock_holder(tmp_path) is None


def test_ctrl_c_leaves_a_pending_run_without_a_stale_error(tmp_path):
    from prunebench.results import record_exception

    record_exception(tmp_path, RuntimeError("boom"), "x.log")
    status = record_exception(tmp_path, KeyboardInterrupt(), "x.log")
    assert status["state"] == "pending" and "error" not in status and "traceback" not in status
    assert status["reason"] == "interrupted (Ctrl-C); re-run the sweep to resume"


def test_a_job_killed_by_a_signal_says_which():
    from prunebench.results import exit_reason

    assert exit_reason(1) == "exit code 1"
    assert exit_reason(-15).startswith("killed by SIGTERM (signal 15); a re-run of the sweep resumes it")
    assert exit_reason(-9).startswith("killed by SIGKILL (signal 9)")


def test_report_on_an_empty_folder_is_an_error_and_bad_metrics_warn(tmp_path):
    from typer.testing import CliRunner

    from conftest import build_run
    from prunebench.cli import app

    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "empty"), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and "no run folders under" in result.output
    assert not (tmp_path / "p.png").exists()
    run = build_run(tmp_path / "s", "dense-s0-aaaaaa", box=30.0, mask=20.0)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "mask_ap": "NaN"}))
    result = CliRunner().invoke(app, ["report", str(tmp_path / "s")], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    assert "warning: s/dense-s0-aaaaaa: metrics.json mask_ap is 'NaN', not a number" in " ".join(
        result.output.split()
    )
