"""The contract every executor keeps, in the way Hydra's LauncherTestSuite holds its launchers to
one behaviour: each backend subclasses ExecutorSuite, says how to build itself, and passes the
same tests. Jobs are conftest's fake_job (steps with checkpoints), so the suite runs in seconds."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from conftest import FAKE_JOB, make_fake_runs, process_alive, read_trace
from prunebench.executors.local import LocalExecutor
from prunebench.executors.slurm.executor import SlurmExecutor
from prunebench.executors.slurm.queue import JobState
from prunebench.results import LOCK_FILE, METRICS_FILE, atomic_write_json, is_finished, read_json

QUIET = Console(quiet=True)


def starts(run_dir: Path) -> list[dict]:
    return [e for e in read_trace(run_dir) if e["event"] == "start"]


def set_fake(run_dir: Path, **fake) -> None:
    atomic_write_json(run_dir / "fake.json", {"steps": 1, **fake})


def finish(run_dir: Path) -> None:
    atomic_write_json(
        run_dir / METRICS_FILE, {"run_id": run_dir.name, "box_ap": 1.0, "latency_ms": {"full": 1.0}}
    )


class ExecutorSuite:
    """Behaviour every executor must have. Subclasses define ``make_executor`` and
    ``LOCKED_ELSEWHERE``: the states of (dense, finetunes) while the dense run is locked by a live
    process elsewhere that finishes it during the sweep."""

    LOCKED_ELSEWHERE: tuple[str, str]

    def make_executor(self):
        raise NotImplementedError

    def run(self, sweep: Path, runs) -> dict[str, str]:
        return self.make_executor().run(sweep, runs)

    def test_runs_dependencies_first(self, tmp_path):
        runs = make_fake_runs(tmp_path / "s", sleep=0.2)
        dense, *fts = (tmp_path / "s" / r.run_id for r in runs)
        assert self.run(tmp_path / "s", list(reversed(runs))) == {r.run_id: "done" for r in runs}
        dense_end = next(e["t"] for e in read_trace(dense) if e["event"] == "end")
        assert all(starts(ft)[0]["t"] >= dense_end for ft in fts)

    def test_skips_finished_runs(self, tmp_path):
        runs = make_fake_runs(tmp_path / "s")
        self.run(tmp_path / "s", runs)
        assert self.run(tmp_path / "s", runs) == {r.run_id: "done" for r in runs}
        assert all(len(starts(tmp_path / "s" / r.run_id)) == 1 for r in runs)

    def test_a_failed_run_does_not_stop_the_others(self, tmp_path):
        dense, ft0, ft1 = make_fake_runs(tmp_path / "s")
        set_fake(tmp_path / "s" / ft0.run_id, fail_at=0)
        assert self.run(tmp_path / "s", [dense, ft0, ft1]) == {
            dense.run_id: "done",
            ft0.run_id: "failed",
            ft1.run_id: "done",
        }
        status = read_json(tmp_path / "s" / ft0.run_id / "status.json")
        assert status["state"] == "failed" and "fake failure at step 0" in status["error"]

    def test_dependents_of_a_failed_run_are_skipped(self, tmp_path):
        runs = make_fake_runs(tmp_path / "s")
        set_fake(tmp_path / "s" / runs[0].run_id, fail_at=0)
        states = self.run(tmp_path / "s", runs)
        assert states == {runs[0].run_id: "failed", **{r.run_id: "skipped" for r in runs[1:]}}
        for ft in runs[1:]:
            status = read_json(tmp_path / "s" / ft.run_id / "status.json")
            assert status["state"] == "skipped" and status["reason"].startswith(
                f"dependency {runs[0].run_id} failed"
            )
            assert "fake failure at step 0" in status["reason"]  # with the parent's error
            assert not starts(tmp_path / "s" / ft.run_id)

    def test_rerun_resumes_from_the_last_checkpoint(self, tmp_path):
        runs = make_fake_runs(tmp_path / "s")
        dense = tmp_path / "s" / runs[0].run_id
        set_fake(dense, steps=4, fail_at=2)
        assert self.run(tmp_path / "s", runs)[runs[0].run_id] == "failed"
        set_fake(dense, steps=4)
        assert self.run(tmp_path / "s", runs) == {r.run_id: "done" for r in runs}
        assert read_json(dense / METRICS_FILE)["resumed_from"] == 2
        assert len(starts(dense)) == 2

    def test_a_run_locked_elsewhere_is_not_started_again(self, tmp_path, hold_lock):
        runs = make_fake_runs(tmp_path / "s")
        dense = tmp_path / "s" / runs[0].run_id
        holder = hold_lock(dense)
        # the other process finishes the run a moment later, while this sweep goes on
        threading.Timer(0.5, lambda: (finish(dense), holder.release())).start()
        states = self.run(tmp_path / "s", runs)
        assert (states[runs[0].run_id], states[runs[1].run_id]) == self.LOCKED_ELSEWHERE
        assert not starts(dense)
        holder.wait(10)
        assert self.run(tmp_path / "s", runs) == {r.run_id: "done" for r in runs}
        assert not starts(dense) and all(len(starts(tmp_path / "s" / r.run_id)) == 1 for r in runs[1:])

    def test_a_lock_left_by_a_dead_process_is_taken_over(self, tmp_path):
        runs = make_fake_runs(tmp_path / "s", finetunes=0)
        dense = tmp_path / "s" / runs[0].run_id
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout.strip()
        (dense / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead)}))
        assert self.run(tmp_path / "s", runs) == {runs[0].run_id: "done"}
        assert json.loads((dense / LOCK_FILE).read_text())["pid"] == starts(dense)[0]["pid"] != int(dead)


@pytest.mark.usefixtures("job_processes_see_tests")
class TestLocal(ExecutorSuite):
    LOCKED_ELSEWHERE = ("done", "done")  # waits for it, then starts its dependents

    def make_executor(self):
        return LocalExecutor(max_parallel=2, job_fn=FAKE_JOB, poll_s=0.05, console=QUIET)


class FakeCluster:
    """An in-process Slurm: submitter and queue query of SlurmExecutor. Jobs are held when
    submitted; a released job runs (in this process, as its Slurm task would) at the next query
    once its ``afterok`` dependencies completed; a job whose dependency ended otherwise is pending
    for ever (DependencyNeverSatisfied)."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}

    def submit(self, run_dir, run_id, job, dependency_job_ids):
        job_id = str(100 + len(self.jobs))
        self.jobs[job_id] = {
            "call": job,
            "run_dir": str(run_dir),
            "deps": list(dependency_job_ids),
            "state": "PENDING",
            "reason": "JobHeldUser",
        }
        return job_id, Path(run_dir) / "slurm" / f"{job_id}_0_log.out"

    def release(self, job_id):
        self.jobs[job_id]["reason"] = "Dependency" if self.jobs[job_id]["deps"] else "Priority"

    def cancel(self, job_id):
        if self.jobs[job_id]["state"] == "PENDING":
            self.jobs[job_id]["state"] = "CANCELLED"

    def query(self, job_ids):
        for job_id, job in self.jobs.items():
            if job["state"] != "PENDING" or job["reason"] == "JobHeldUser":
                continue
            deps = [self.jobs[d]["state"] for d in job["deps"]]
            if any(s not in ("PENDING", "COMPLETED") for s in deps):
                job["reason"] = "DependencyNeverSatisfied"
            elif all(s == "COMPLETED" for s in deps):
                job["state"] = self._run(job_id, job)
        return {
            j: JobState(
                j, self.jobs[j]["state"], self.jobs[j]["reason"] if self.jobs[j]["state"] == "PENDING" else ""
            )
            for j in job_ids
            if j in self.jobs
        }

    @staticmethod
    def _run(job_id: str, job: dict) -> str:
        os.environ["SLURM_JOB_ID"] = job_id
        try:
            job["call"](job["run_dir"])
            return "COMPLETED"
        except Exception:
            return "FAILED"
        finally:
            del os.environ["SLURM_JOB_ID"]


class TestSlurm(ExecutorSuite):
    LOCKED_ELSEWHERE = ("running", "pending")  # left alone; its dependents go at the next sweep

    @pytest.fixture(autouse=True)
    def cluster(self, monkeypatch):
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        self.cluster = FakeCluster()

    def make_executor(self):
        return SlurmExecutor(
            wait=True,
            poll_s=0,
            job_fn=FAKE_JOB,
            console=QUIET,
            query=self.cluster.query,
            submitter=self.cluster,
        )

    def test_the_job_records_its_slurm_job(self, tmp_path):
        runs = make_fake_runs(tmp_path / "s", finetunes=1)
        self.run(tmp_path / "s", runs)
        jobs = [read_json(tmp_path / "s" / r.run_id / "status.json")["slurm_job_id"] for r in runs]
        assert jobs == ["100", "101"] and self.cluster.jobs["101"]["deps"] == ["100"]
        assert (tmp_path / "s" / runs[0].run_id / "train.log").readlink() == Path("slurm/100_0_log.out")


# --- local only: a run locked elsewhere, the job process, dying with the sweep ------------------


@pytest.mark.usefixtures("job_processes_see_tests")
def test_a_job_that_finds_its_run_locked_exits_without_writing(tmp_path, hold_lock):
    (dense,) = make_fake_runs(tmp_path / "s", finetunes=0)
    run_dir = tmp_path / "s" / dense.run_id
    holder = hold_lock(run_dir)
    before = (run_dir / "status.json").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "prunebench.executors.entry", str(run_dir), "--fn", FAKE_JOB],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 75, proc.stderr
    assert f"running elsewhere (pid {holder.pid} on {socket.gethostname()}" in proc.stderr
    assert (run_dir / "status.json").read_bytes() == before and not starts(run_dir)


@pytest.mark.usefixtures("job_processes_see_tests")
def test_a_run_taken_between_check_and_start_is_waited_for(tmp_path, hold_lock, monkeypatch):
    from prunebench.executors import local

    runs = make_fake_runs(tmp_path / "s", finetunes=1)
    dense = tmp_path / "s" / runs[0].run_id
    holder = hold_lock(dense)
    checks = []

    def racy(run_dir):  # the sweep's first check misses the holder (it took the lock just after)
        checks.append(run_dir)
        return None if len(checks) == 1 else real(run_dir)

    real = local.lock_holder
    monkeypatch.setattr(local, "lock_holder", racy)
    threading.Timer(2.0, lambda: (finish(dense), holder.release())).start()  # after the job gave up
    assert TestLocal().make_executor().run(tmp_path / "s", runs) == {r.run_id: "done" for r in runs}
    assert not starts(dense) and "running elsewhere" in (dense / "train.log").read_text()


def run_with_output(tmp_path: Path, console: Console, **executor) -> str:
    """A dense run of 8 progress steps (2 s) and a finetune, run locally; returns what it printed."""
    runs = make_fake_runs(tmp_path / "s", finetunes=1)
    set_fake(tmp_path / "s" / runs[0].run_id, steps=8, sleep=0.25)
    LocalExecutor(job_fn=FAKE_JOB, poll_s=0.05, console=console, **executor).run(tmp_path / "s", runs)
    return console.file.getvalue()


PROGRESS_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] dense-s0-aaaaaa  dense  (.*)$", re.M)


@pytest.mark.usefixtures("job_processes_see_tests")
@pytest.mark.parametrize("progress_s, lines", [(0.3, range(4, 99)), (60.0, range(1, 3))])
def test_progress_lines_when_the_output_is_not_a_terminal(tmp_path, progress_s, lines):
    """One plain line per running job on start, on a phase change and every ``progress_s``."""
    out = run_with_output(tmp_path, Console(file=io.StringIO(), force_terminal=False), progress_s=progress_s)
    dense = PROGRESS_LINE.findall(out)
    assert len(dense) in lines, out
    assert re.fullmatch(r"train  iter [1-8]/8 \(\d+%\)  ETA \d+s  loss [01]\.\d{4}", dense[-1]), dense
    assert "\x1b[" not in out  # no live display: no cursor movement, no colour


@pytest.mark.usefixtures("job_processes_see_tests")
def test_a_terminal_gets_the_live_table_and_no_progress_lines(tmp_path):
    out = run_with_output(
        tmp_path, Console(file=io.StringIO(), force_terminal=True, width=120), progress_s=0.1
    )
    assert not PROGRESS_LINE.search(out)
    assert "\x1b[" in out and "phase" in out and "ETA" in out  # the live table, redrawn in place


SWEEP = """
import sys
from pathlib import Path
from rich.console import Console
from prunebench.executors.local import LocalExecutor
from prunebench.results import read_json
from prunebench.spec import RunSpec

sweep, detach = Path(sys.argv[1]), sys.argv[2] == "detach"
runs = [RunSpec.from_json(read_json(d / "run.json")) for d in sorted(sweep.iterdir())]
states = LocalExecutor(max_parallel=2, detach=detach, job_fn="conftest:fake_job", poll_s=0.05,
                       console=Console(quiet=True)).run(sweep, runs)
sys.exit(0 if set(states.values()) == {"done"} else 1)
"""


def start_sweep(sweep: Path, detach: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SWEEP, str(sweep), "detach" if detach else "tied"])


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kill_sweep_mid_run(tmp_path: Path, detach: bool) -> tuple[Path, int, list]:
    """Start a sweep (dense of 20 steps, then a finetune), kill -9 it after 2 checkpoints."""
    runs = make_fake_runs(tmp_path / "s", finetunes=1)
    dense = tmp_path / "s" / runs[0].run_id
    set_fake(dense, steps=20, sleep=0.1)
    sweep = start_sweep(tmp_path / "s", detach)
    wait_for(lambda: (read_json(dense / "fake_ckpt.json") or {}).get("step", 0) >= 2, 60, "2 checkpoints")
    job = read_json(dense / "status.json")["pid"]
    sweep.kill()
    sweep.wait()
    return dense, job, runs


@pytest.mark.usefixtures("job_processes_see_tests")
def test_kill_9_of_the_sweep_ends_its_jobs_and_a_rerun_resumes(tmp_path):
    dense, job, runs = kill_sweep_mid_run(tmp_path, detach=False)
    wait_for(lambda: not process_alive(job), 5, f"job {job} to die with its sweep")
    assert not is_finished(dense)
    assert start_sweep(tmp_path / "s").wait(60) == 0
    (first, second) = starts(dense)
    assert second["alive"] == [] and first["pid"] != second["pid"]  # never two job processes at once
    assert read_json(dense / METRICS_FILE)["resumed_from"] >= 2  # from its last checkpoint
    assert [e["event"] for e in read_trace(dense)].count("end") == 1  # finished once


@pytest.mark.usefixtures("job_processes_see_tests")
def test_a_detached_job_outlives_its_sweep_and_the_rerun_waits_for_it(tmp_path):
    dense, job, runs = kill_sweep_mid_run(tmp_path, detach=True)
    assert process_alive(job)
    assert start_sweep(tmp_path / "s").wait(60) == 0  # waits for the detached job, then the finetune
    assert [e["pid"] for e in starts(dense)] == [job]  # not started a second time
    assert is_finished(dense) and is_finished(tmp_path / "s" / runs[1].run_id)


@pytest.mark.usefixtures("job_processes_see_tests")
def test_sigterm_to_a_job_names_the_signal_and_a_rerun_resumes(tmp_path):
    runs = make_fake_runs(tmp_path / "s", finetunes=1)
    dense, ft = (tmp_path / "s" / r.run_id for r in runs)
    set_fake(dense, steps=20, sleep=0.1)
    sweep = start_sweep(tmp_path / "s")
    wait_for(lambda: (read_json(dense / "fake_ckpt.json") or {}).get("step", 0) >= 2, 60, "2 checkpoints")
    os.kill(read_json(dense / "status.json")["pid"], signal.SIGTERM)
    assert sweep.wait(60) == 1
    status = read_json(dense / "status.json")
    assert status["state"] == "failed" and status["error"].startswith("killed by SIGTERM (signal 15)")
    assert read_json(ft / "status.json")["reason"].startswith(
        f"dependency {dense.name} failed (killed by SIGTERM"
    )
    set_fake(dense, steps=20)
    assert start_sweep(tmp_path / "s").wait(60) == 0
    assert read_json(dense / METRICS_FILE)["resumed_from"] >= 2 and is_finished(ft)


@pytest.mark.usefixtures("job_processes_see_tests")
def test_ctrl_c_of_the_sweep_leaves_its_job_pending_without_an_error_and_a_rerun_resumes(tmp_path):
    runs = make_fake_runs(tmp_path / "s", finetunes=1)
    dense = tmp_path / "s" / runs[0].run_id
    set_fake(dense, steps=20, sleep=0.1)
    sweep = start_sweep(tmp_path / "s")
    wait_for(lambda: (read_json(dense / "fake_ckpt.json") or {}).get("step", 0) >= 2, 60, "2 checkpoints")
    sweep.send_signal(signal.SIGINT)
    sweep.wait(60)
    status = read_json(dense / "status.json")
    assert status["state"] == "pending" and "error" not in status and "interrupted" in status["reason"]
    set_fake(dense, steps=20)
    assert start_sweep(tmp_path / "s").wait(60) == 0
    assert read_json(dense / METRICS_FILE)["resumed_from"] >= 2


@pytest.mark.usefixtures("job_processes_see_tests")
def test_two_sweeps_on_one_folder_run_each_run_once(tmp_path):
    runs = make_fake_runs(tmp_path / "s", finetunes=3, steps=3, sleep=0.1)
    sweeps = [start_sweep(tmp_path / "s") for _ in range(2)]
    assert [s.wait(120) for s in sweeps] == [0, 0]
    for spec in runs:
        events = read_trace(tmp_path / "s" / spec.run_id)
        assert [e["event"] for e in events] == ["start", "end"], (spec.run_id, events)


# --- layers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, banned",
    [
        ("prunebench.status", ("torch", "submitit", "prunebench.executors")),
        ("prunebench.report", ("torch", "submitit", "prunebench.executors")),
        (
            "prunebench.executors.slurm.queue",
            ("torch", "submitit", "rich", "prunebench.executors.slurm.executor"),
        ),
        ("prunebench.executors.entry", ("torch", "submitit", "mmengine", "rich")),
    ],
)
def test_light_modules_import_nothing_heavy(module, banned):
    code = (
        f"import sys, {module}; loaded = [m for m in {banned!r} if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_job_does_not_import_executors():
    code = "import sys, prunebench.job; assert 'prunebench.executors' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
