"""Slurm backend: unit tests (no cluster: options, sbatch parameters, re-run decisions, the queue
query, the job callable) and integration tests on the local test cluster
(``bash scripts/slurm_cluster.sh start``; marked ``slurm``, skipped when no idle node). The
behaviour it shares with every executor is in test_executors.py."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from conftest import FAKE_JOB, make_fake_runs, read_trace
from prunebench.executors.slurm import queue as Q
from prunebench.executors.slurm.executor import SlurmExecutor
from prunebench.executors.slurm.options import SlurmOptions, parse_mem, parse_sbatch_args, parse_time
from prunebench.executors.slurm.queue import JobState, Phase
from prunebench.grid import GridError
from prunebench.results import atomic_write_json, is_finished, read_json, write_status
from prunebench.sweep import make_executor

ROOT = Path(__file__).resolve().parents[1]
QUIET = Console(quiet=True)


def two_runs(sweep_dir: Path, **fake):
    """A dense run and one finetune depending on it; returns (runs, dense dir, finetune dir)."""
    runs = make_fake_runs(sweep_dir, finetunes=1, **fake)
    return runs, sweep_dir / runs[0].run_id, sweep_dir / runs[1].run_id


def finish(run_dir: Path) -> None:
    atomic_write_json(
        run_dir / "metrics.json",
        {"run_id": run_dir.name, "box_ap": 1.0, "mask_ap": 1.0, "latency_ms": {"full": 1.0}},
    )
    write_status(run_dir, "done")


# ============================================================================ options


@pytest.mark.parametrize(
    "value, minutes",
    [
        (90, 90),
        (2.5, 3),
        ("30", 30),
        ("1:30", 2),
        ("24:00:00", 1440),
        ("0:00:59", 1),
        ("1-12", 2160),
        ("1-00:30", 1470),
        ("2-00:00:00", 2880),
    ],
)
def test_parse_time(value, minutes):
    assert parse_time(value) == minutes


@pytest.mark.parametrize("value", ["", "abc", "1:2:3:4", "24h", 0, -5, "0:00:00", True])
def test_parse_time_rejects_bad_values(value):
    with pytest.raises(ValueError, match="Slurm time"):
        parse_time(value)


@pytest.mark.parametrize(
    "value, mem",
    [
        (64, "64G"),
        (1.5, "1536M"),
        ("64G", "64G"),
        ("64gb", "64G"),
        ("16000M", "16000M"),
        ("16000", "16000M"),
        (None, None),
    ],
)
def test_parse_mem(value, mem):
    assert parse_mem(value) == mem


@pytest.mark.parametrize("value", ["lots", "0G", 0, "-4G"])
def test_parse_mem_rejects_bad_values(value):
    with pytest.raises(ValueError, match="memory"):
        parse_mem(value)


def test_parse_sbatch_args():
    assert parse_sbatch_args({"constraint": "a100", "exclusive": True}) == {
        "constraint": "a100",
        "exclusive": True,
    }
    assert parse_sbatch_args({"mail_type": "END"}) == {"mail-type": "END"}
    assert parse_sbatch_args(["--constraint=a100", "--exclusive"]) == {
        "constraint": "a100",
        "exclusive": True,
    }
    assert parse_sbatch_args("--nice=10 --exclusive") == {"nice": "10", "exclusive": True}
    assert parse_sbatch_args(None) == {}
    with pytest.raises(ValueError, match="long options"):
        parse_sbatch_args(["-C", "a100"])


def test_options_reject_bad_values():
    with pytest.raises(ValueError, match="gpus_per_job"):
        SlurmOptions.create(gpus_per_job=-1)
    with pytest.raises(ValueError, match="Slurm time"):
        SlurmOptions.create(time="tomorrow")
    with pytest.raises(ValueError, match="cpus_per_task"):
        SlurmOptions.create(cpus_per_task=0)
    with pytest.raises(ValueError, match="unknown Slurm option.*gpus$|unknown Slurm option"):
        SlurmOptions.create(gpus=2)
    assert SlurmOptions.create(gpus_per_job=None).gpus_per_job == 0  # the CLI passes None when unset


def test_options_merge_grid_section_and_command_line():
    grid = {
        "partition": "gpu",
        "gpus_per_job": 4,
        "time": "1:00:00",
        "mem": 64,
        "sbatch_args": ["--exclusive"],
    }
    opts = SlurmOptions.merge(grid, {"time": "2:00:00", "partition": None, "qos": "high"})
    assert (opts.partition, opts.gpus_per_job, opts.time, opts.mem, opts.qos) == (
        "gpu",
        4,
        120,
        "64G",
        "high",
    )
    assert opts.sbatch_args == {"exclusive": True} and opts.launcher == "slurm"
    assert SlurmOptions.merge(None, {}) == SlurmOptions()


def make_grid(tmp_path: Path, slurm: str):
    from prunebench.grid import load_grid

    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\naxes: {{pruned_tokens: [preserve]}}\nslurm: {slurm}\n")
    return load_grid(path)


def test_sweep_builds_the_executor_from_grid_and_command_line(tmp_path):
    grid = make_grid(tmp_path, "{partition: gpu, time: 90}")
    ex = make_executor("slurm", grid, {"time": None, "mem": "8G", "wait": True, "poll_s": 1})
    assert (ex.options.partition, ex.options.time, ex.options.mem, ex.wait, ex.poll_s) == (
        "gpu",
        90,
        "8G",
        True,
        1,
    )
    with pytest.raises(GridError, match=r"g\.yaml.*slurm.*Slurm time"):
        make_executor("slurm", make_grid(tmp_path, "{time: tomorrow}"))
    with pytest.raises(GridError, match="Slurm option: invalid memory"):
        make_executor("slurm", grid, {"mem": "lots"})
    with pytest.raises(GridError, match="unknown executor"):
        make_executor("cloud", grid)


# ============================================================================ sbatch parameters


def test_sbatch_parameters_cpu_job():
    p = SlurmOptions().sbatch_parameters("dense")
    assert p["job_name"] == "dense" and p["time"] == 1440 and p["ntasks_per_node"] == 1 and p["nodes"] == 1
    assert "gpus_per_node" not in p and "dependency" not in p and "partition" not in p
    assert p["additional_parameters"]["requeue"] is True and p["additional_parameters"]["hold"] is True
    assert SlurmOptions().launcher == "none"


def test_sbatch_parameters_multi_gpu_job_and_dependency():
    opts = SlurmOptions.create(
        partition="gpu",
        gpus_per_job=4,
        cpus_per_task=8,
        mem="64G",
        time=90,
        account="proj",
        qos="high",
        sbatch_args=["--constraint=a100"],
    )
    p = opts.sbatch_parameters("ft", ["11", "12"])
    assert p["gpus_per_node"] == 4 and p["ntasks_per_node"] == 4  # one task per GPU
    assert opts.launcher == "slurm"
    assert p["dependency"] == "afterok:11:12"
    assert (p["partition"], p["cpus_per_task"], p["mem"], p["time"], p["account"], p["qos"]) == (
        "gpu",
        8,
        "64G",
        90,
        "proj",
        "high",
    )
    assert p["additional_parameters"]["constraint"] == "a100"


def test_sbatch_script_written_by_submitit(tmp_path):
    submitit_slurm = pytest.importorskip("submitit.slurm.slurm")
    opts = SlurmOptions.create(gpus_per_job=2, time="1-00:00:00", sbatch_args={"constraint": "a100"})
    text = submitit_slurm._make_sbatch_string(
        command="python -m x", folder=tmp_path, **opts.sbatch_parameters("ft", ["42"])
    )
    for line in (
        "#SBATCH --dependency=afterok:42",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --time=1440",
        "#SBATCH --requeue",
        "#SBATCH --hold",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --constraint=a100",
        "#SBATCH --job-name=ft",
    ):
        assert line in text.splitlines(), line
    assert "srun" in text


# ============================================================================ the queue query


def test_query_asks_squeue_then_sacct_once_each(monkeypatch):
    calls = []

    def run(cmd):
        calls.append(cmd)
        if cmd[0] == "squeue":
            return "5|RUNNING|None\n6|PENDING|Dependency\n7|PENDING|DependencyNeverSatisfied\n8|PENDING|JobHeldUser\n"
        return "3|COMPLETED\n4|CANCELLED by 0\n"

    monkeypatch.setattr(Q, "_run", run)
    got = Q.query(["3", "4", "5", "6", "6", "7", "8", ""])
    assert got == {
        "3": JobState("3", "COMPLETED"),
        "4": JobState("4", "CANCELLED"),
        "5": JobState("5", "RUNNING"),
        "6": JobState("6", "PENDING", "Dependency"),
        "7": JobState("7", "PENDING", "DependencyNeverSatisfied"),
        "8": JobState("8", "PENDING", "JobHeldUser"),
    }
    assert [c[0] for c in calls] == ["squeue", "sacct"] and calls[1][-1] == "3,4"  # sacct: only the rest
    assert [got[j].phase for j in "345678"] == [
        Phase.ENDED,
        Phase.ENDED,
        Phase.RUNNING,
        Phase.QUEUED,
        Phase.NEVER,
        Phase.HELD,
    ]
    assert [got[j].alive for j in "345678"] == [False, False, True, True, False, True]


@pytest.mark.parametrize(
    "state, reason, phase",
    [
        ("REQUEUED", "", Phase.QUEUED),
        ("PREEMPTED", "", Phase.QUEUED),
        ("COMPLETING", "", Phase.RUNNING),
        ("TIMEOUT", "", Phase.ENDED),
        ("NODE_FAIL", "", Phase.ENDED),
        ("OUT_OF_MEMORY", "", Phase.ENDED),
        ("PENDING", "Priority", Phase.QUEUED),
        ("PENDING", "BeginTime", Phase.QUEUED),
        ("PENDING", "DependencyNeverSatisfiedX", Phase.QUEUED),  # reason codes match exactly
    ],
)
def test_phase_of_a_state(state, reason, phase):
    assert JobState("1", state, reason).phase is phase


def test_query_without_slurm_tools_is_empty(monkeypatch):
    monkeypatch.setattr(Q.shutil, "which", lambda name: None)
    assert Q.query(["1", "2"]) == {}
    assert Q.query([]) == {}


# ============================================================================ decisions


def live(**states) -> dict[str, JobState]:
    return {k: JobState(k, *(v if isinstance(v, tuple) else (v,))) for k, v in states.items()}


def set_job(run_dir: Path, job: str, state: str = "pending") -> None:
    write_status(run_dir, state, slurm_job_id=job)


def actions(plan):
    return {spec.run_id: action for spec, action, _ in plan}


def test_plan_fresh_sweep_submits_everything_dense_first(tmp_path):
    runs, dense, ft = two_runs(tmp_path)
    plan = SlurmExecutor().plan(tmp_path, list(reversed(runs)), {})
    assert [spec.run_id for spec, _, _ in plan] == [dense.name, ft.name]
    assert actions(plan) == {dense.name: "submit", ft.name: "submit"}


def test_plan_skips_finished_and_live_runs(tmp_path):
    runs, dense, ft = two_runs(tmp_path)
    finish(dense)
    set_job(ft, "7", "running")
    assert actions(SlurmExecutor().plan(tmp_path, runs, live(**{"7": "RUNNING"}))) == {
        dense.name: "done",
        ft.name: "keep",
    }


def test_plan_resubmits_failed_lost_and_stuck_jobs(tmp_path):
    runs, dense, ft = two_runs(tmp_path)
    set_job(dense, "5", "failed")
    set_job(ft, "6")
    plan = SlurmExecutor().plan(
        tmp_path, runs, live(**{"5": "FAILED", "6": ("PENDING", "DependencyNeverSatisfied")})
    )
    assert actions(plan) == {dense.name: "submit", ft.name: "resubmit"}
    # a job left held by a submission cut short before its release is replaced
    plan = SlurmExecutor().plan(tmp_path, runs, live(**{"5": "FAILED", "6": ("PENDING", "JobHeldUser")}))
    assert actions(plan) == {dense.name: "submit", ft.name: "resubmit"}
    # a job Slurm no longer knows (lost, purged) is submitted again
    assert actions(SlurmExecutor().plan(tmp_path, runs, {}))[dense.name] == "submit"
    # a finetune still waiting on the dense run's old job is moved to the new one
    plan = SlurmExecutor().plan(tmp_path, runs, live(**{"5": "CANCELLED", "6": ("PENDING", "Dependency")}))
    assert actions(plan) == {dense.name: "submit", ft.name: "resubmit"}


def test_plan_leaves_a_run_locked_elsewhere_and_its_dependents(tmp_path, hold_lock):
    runs, dense, ft = two_runs(tmp_path)
    holder = hold_lock(dense)
    plan = SlurmExecutor().plan(tmp_path, runs, {})
    assert actions(plan) == {dense.name: "elsewhere", ft.name: "later"}
    assert f"running elsewhere (pid {holder.pid} on" in plan[0][2]
    set_job(dense, "5", "running")  # its own live Slurm job holds the lock: kept as usual
    assert actions(SlurmExecutor().plan(tmp_path, runs, live(**{"5": "RUNNING"})))[dense.name] == "keep"


def test_plan_rejects_a_dependency_outside_the_submission(tmp_path):
    runs, dense, ft = two_runs(tmp_path)
    with pytest.raises(ValueError, match="neither finished nor part of this submission"):
        SlurmExecutor().plan(tmp_path, runs[1:], {})
    finish(dense)
    assert actions(SlurmExecutor().plan(tmp_path, runs[1:], {})) == {ft.name: "submit"}


class FakeQueue:
    """Submitter and query for SlurmExecutor that record what it asks and run nothing."""

    def __init__(self, states=None, first_id=100):
        self.states, self.next_id = states if callable(states) else dict(states or {}), first_id
        self.submitted: list[tuple[str, list[str]]] = []
        self.cancelled: list[str] = []
        self.released: list[str] = []
        self.queries = 0

    def submit(self, run_dir, run_id, job, deps):
        job_id = str(self.next_id)
        self.next_id += 1
        self.submitted.append((run_id, list(deps)))
        return job_id, Path(run_dir) / "slurm" / f"{job_id}_0_log.out"

    def release(self, job_id):
        self.released.append(job_id)

    def cancel(self, job_id):
        self.cancelled.append(job_id)

    def query(self, ids):
        self.queries += 1
        states = self.states(self.queries) if callable(self.states) else self.states
        return {j: states[j] for j in ids if j in states}

    def executor(self, **kw):
        return SlurmExecutor(console=QUIET, query=self.query, submitter=self, **kw)


def test_run_translates_dependencies_to_afterok_job_ids(tmp_path):
    runs, dense, ft = two_runs(tmp_path)
    fake = FakeQueue()
    assert fake.executor().run(tmp_path, runs) == {dense.name: "submitted", ft.name: "submitted"}
    assert fake.submitted == [(dense.name, []), (ft.name, ["100"])] and fake.released == ["100", "101"]
    status = read_json(ft / "status.json")
    assert (
        status["state"] == "pending" and status["slurm_job_id"] == "101" and "after 100" in status["reason"]
    )


def test_run_again_skips_queued_and_finished_runs(tmp_path):
    runs, dense, ft = two_runs(tmp_path)
    set_job(dense, "5")
    set_job(ft, "6")
    fake = FakeQueue(live(**{"5": "RUNNING", "6": ("PENDING", "Dependency")}))
    assert fake.executor().run(tmp_path, runs) == {dense.name: "running", ft.name: "pending"}
    assert fake.submitted == [] and fake.cancelled == []
    finish(dense)
    finish(ft)
    assert fake.executor().run(tmp_path, runs) == {dense.name: "done", ft.name: "done"}
    assert fake.submitted == []


def test_run_finetune_of_a_finished_dense_run_has_no_dependency(tmp_path):
    runs, dense, ft = two_runs(tmp_path)
    finish(dense)
    set_job(ft, "6", "failed")
    fake = FakeQueue(live(**{"6": "FAILED"}))
    assert fake.executor().run(tmp_path, runs) == {dense.name: "done", ft.name: "submitted"}
    assert fake.submitted == [(ft.name, [])]


def test_run_finetune_waits_on_a_still_running_dense_job(tmp_path):
    runs, dense, ft = two_runs(tmp_path)
    set_job(dense, "5", "running")
    fake = FakeQueue(live(**{"5": "RUNNING"}))
    fake.executor().run(tmp_path, runs)
    assert fake.submitted == [(ft.name, ["5"])]


def test_run_resubmits_a_cancelled_dense_run_and_moves_its_finetune(tmp_path):
    runs, dense, ft = two_runs(tmp_path)
    set_job(dense, "5", "running")
    set_job(ft, "6")
    fake = FakeQueue(live(**{"5": "CANCELLED", "6": ("PENDING", "DependencyNeverSatisfied")}))
    assert fake.executor().run(tmp_path, runs) == {dense.name: "submitted", ft.name: "submitted"}
    assert fake.cancelled == ["6"]
    assert fake.submitted == [(dense.name, []), (ft.name, ["100"])]


def test_a_job_that_cannot_be_released_is_cancelled(tmp_path):
    runs, dense, ft = two_runs(tmp_path)
    fake = FakeQueue()

    def refuse(job_id):
        raise RuntimeError(f"could not release Slurm job {job_id}: denied")

    fake.release = refuse
    with pytest.raises(RuntimeError, match=f"run {dense.name}: could not release Slurm job 100"):
        fake.executor().run(tmp_path, runs)
    assert fake.cancelled == ["100"]


def test_run_without_sbatch_says_so(tmp_path, monkeypatch):
    from prunebench.executors.slurm import executor as E

    monkeypatch.setattr(E.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="sbatch not found"):
        SlurmExecutor().run(tmp_path, two_runs(tmp_path)[0])


def test_wait_records_a_job_killed_before_it_could_say_why(tmp_path):
    runs, dense, ft = two_runs(tmp_path)
    # dense job 100 dies (e.g. scancel, node failure) without metrics; its finetune can never start
    fake = FakeQueue(live(**{"100": "CANCELLED", "101": ("PENDING", "DependencyNeverSatisfied")}))
    assert fake.executor(wait=True, poll_s=0).run(tmp_path, runs) == {
        dense.name: "failed",
        ft.name: "skipped",
    }
    status = read_json(dense / "status.json")
    assert status["state"] == "failed" and "100 ended CANCELLED" in status["error"]
    assert status["slurm_state"] == "CANCELLED"
    assert read_json(ft / "status.json")["reason"].startswith(f"dependency {dense.name} failed")
    assert fake.cancelled == ["101"]


def test_wait_keeps_the_error_a_job_recorded(tmp_path):
    runs, dense, ft = two_runs(tmp_path)

    def states(n):
        if n > 1:  # the job wrote why it failed before it ended
            write_status(dense, "failed", error="CUDA out of memory")
        return live(**{"100": "FAILED", "101": ("PENDING", "DependencyNeverSatisfied")})

    assert FakeQueue(states).executor(wait=True, poll_s=0).run(tmp_path, runs) == {
        dense.name: "failed",
        ft.name: "skipped",
    }
    assert read_json(dense / "status.json")["error"] == "CUDA out of memory"


def test_wait_returns_done_when_jobs_finish(tmp_path):
    runs, dense, ft = two_runs(tmp_path)

    def states(n):  # first poll: running; then both completed with metrics
        if n <= 2:
            return live(**{"100": "RUNNING", "101": ("PENDING", "Dependency")})
        finish(dense)
        finish(ft)
        return live(**{"100": "COMPLETED", "101": "COMPLETED"})

    fake = FakeQueue(states)
    assert fake.executor(wait=True, poll_s=0).run(tmp_path, runs) == {dense.name: "done", ft.name: "done"}
    assert fake.submitted == [(dense.name, []), (ft.name, ["100"])]


def test_wait_prints_a_progress_line_per_running_job(tmp_path):
    runs, dense, ft = two_runs(tmp_path)

    def states(n):  # queries 2..4: the dense job trains (its status.json says how far); then all done
        if n <= 4:
            write_status(dense, "running", phase="train", iter=n - 1, max_iters=3, loss=0.5, eta_s=60.0)
            return live(**{"100": "RUNNING", "101": ("PENDING", "Dependency")})
        finish(dense)
        finish(ft)
        return live(**{"100": "COMPLETED", "101": "COMPLETED"})

    fake, out = FakeQueue(states), io.StringIO()
    console = Console(file=out, width=200)
    executor = SlurmExecutor(
        wait=True, poll_s=0, progress_s=0, console=console, query=fake.query, submitter=fake
    )
    assert executor.run(tmp_path, runs) == {dense.name: "done", ft.name: "done"}
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines() if "  train  " in line]
    assert lines == [
        f"{dense.name}  dense  train  iter {i}/3 ({100 * i / 3:.0f}%)  ETA 1m00s  loss 0.5000"
        for i in (1, 2, 3)
    ]


# ============================================================================ the job callable


def test_job_is_checkpointable_and_resubmits_the_same_run(tmp_path):
    from submitit.helpers import Checkpointable

    from prunebench.executors.slurm.job import SlurmRunJob

    job = SlurmRunJob(FAKE_JOB, launcher="slurm")
    assert isinstance(job, Checkpointable)
    delayed = job.checkpoint(str(tmp_path))
    assert delayed.function is job and delayed.args == (str(tmp_path),)
    copy = pickle.loads(pickle.dumps(delayed.function))
    assert (copy.fn, copy.launcher) == (FAKE_JOB, "slurm")


def test_job_runs_the_job_function_under_submitit(tmp_path):
    submitit = pytest.importorskip("submitit")
    from prunebench.executors.slurm.job import SlurmRunJob

    runs, dense, _ = two_runs(tmp_path)
    job = submitit.DebugExecutor(folder=tmp_path / "logs").submit(SlurmRunJob(FAKE_JOB), str(dense))
    assert job.result()["box_ap"] == 1.0 and is_finished(dense)


def test_job_records_the_slurm_job_and_a_failure(tmp_path, monkeypatch):
    from prunebench.executors.slurm.job import SlurmRunJob

    runs, dense, _ = two_runs(tmp_path, fail_at=0)
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="fake failure"):
        SlurmRunJob(FAKE_JOB, launcher="slurm")(str(dense))
    status = read_json(dense / "status.json")
    assert status["state"] == "failed" and status["slurm_job_id"] == "1234" and status["attempts"] == 1
    assert os.environ["MASTER_PORT"] == str(20000 + 1234)  # one port per job (multi-GPU)


def test_job_records_a_failure_the_function_did_not(tmp_path, monkeypatch):
    from prunebench.executors.slurm import job as J

    runs, dense, _ = two_runs(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "55")

    def dies(run_dir, launcher):
        raise MemoryError("host out of memory")

    monkeypatch.setattr(J, "load_job_fn", lambda ref: dies)
    with pytest.raises(MemoryError):
        J.SlurmRunJob(FAKE_JOB)(str(dense))
    assert read_json(dense / "status.json")["error"] == "MemoryError: host out of memory"


def test_job_other_ranks_write_nothing(tmp_path, monkeypatch):
    from prunebench.executors.slurm import job as J

    runs, dense, _ = two_runs(tmp_path)
    before = (dense / "status.json").read_bytes()
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setattr(J, "load_job_fn", lambda ref: lambda run_dir, launcher: launcher)
    assert J.SlurmRunJob(FAKE_JOB, launcher="slurm")(str(dense)) == "slurm"
    assert (dense / "status.json").read_bytes() == before and not (dense / "run.lock").exists()


def test_job_on_a_run_locked_elsewhere_fails_leaving_the_run_alone(tmp_path, monkeypatch, hold_lock):
    from prunebench.executors.slurm.job import SlurmRunJob
    from prunebench.results import RunLocked

    runs, dense, _ = two_runs(tmp_path)
    hold_lock(dense)
    before = (dense / "status.json").read_bytes()
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with pytest.raises(RunLocked, match="running elsewhere"):
        SlurmRunJob(FAKE_JOB)(str(dense))
    assert (dense / "status.json").read_bytes() == before and not read_trace(dense)


@pytest.mark.parametrize("exit_error", [SystemExit(-1), subprocess.CalledProcessError(-15, ["scontrol"])])
def test_requeue_exit_leaves_the_run_pending(tmp_path, monkeypatch, exit_error):
    from prunebench.executors.slurm import job as J

    runs, dense, _ = two_runs(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    job = J.SlurmRunJob(FAKE_JOB)

    def preempted(run_dir, launcher):  # submitit's signal handler mid-training: checkpoint,
        job.checkpoint(run_dir)  # `scontrol requeue` (may be killed by the requeue), sys.exit
        write_status(run_dir, "failed", error="what run_job records for any exception")
        raise exit_error

    monkeypatch.setattr(J, "load_job_fn", lambda ref: preempted)
    with pytest.raises(type(exit_error)):
        job(str(dense))
    status = read_json(dense / "status.json")
    assert status["state"] == "pending" and "requeued" in status["reason"]


# ============================================================================ integration (cluster)


def _idle_node() -> str | None:
    """None when a node is idle, else why the integration tests cannot run."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm tools not installed (start the test cluster: bash scripts/slurm_cluster.sh start)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo failed: {e}"
    if out.returncode:
        return f"sinfo failed: {out.stderr.strip()} (start it: bash scripts/slurm_cluster.sh start)"
    if not any(s.startswith(("idle", "mixed")) for s in out.stdout.split()):
        return f"no idle Slurm node (sinfo: {out.stdout.split()})"
    return None


@pytest.fixture
def cluster(monkeypatch):
    reason = _idle_node()
    if reason:
        pytest.skip(reason)
    # the node is this machine: let its Python import conftest (for fake_job)
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
    )


def sacct_times(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (Start, End) from accounting; {} when sacct does not work (no slurmdbd)."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
    )
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 2]
    return {r[0]: (r[1], r[2]) for r in rows} if out.returncode == 0 else {}


def wait_for(predicate, timeout: float, what: str, every: float = 1.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_fake_jobs_run_in_dependency_order(cluster, tmp_path):
    runs, dense_dir, ft_dir = two_runs(tmp_path / "fake", steps=2, sleep=0.5)
    states = SlurmExecutor(
        SlurmOptions.create(time=10), wait=True, poll_s=1, job_fn=FAKE_JOB, console=QUIET
    ).run(tmp_path / "fake", runs)
    assert states == {dense_dir.name: "done", ft_dir.name: "done"}
    dense, ft = (read_json(d / "status.json") for d in (dense_dir, ft_dir))
    dense_end = next(e["t"] for e in read_trace(dense_dir) if e["event"] == "end")
    assert read_trace(ft_dir)[0]["t"] >= dense_end  # the finetune started after the dense run ended
    times = sacct_times([dense["slurm_job_id"], ft["slurm_job_id"]])
    if times:
        assert times[ft["slurm_job_id"]][0] >= times[dense["slurm_job_id"]][1], times
    assert (dense_dir / "train.log").resolve().name == f"{dense['slurm_job_id']}_0_log.out"
    assert read_json(dense_dir / "run.lock")["slurm_job_id"] == dense["slurm_job_id"]


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_preempted_job_is_requeued_and_resumes(cluster, tmp_path):
    runs = make_fake_runs(tmp_path / "preempt", finetunes=0, steps=8, sleep=2)
    run_dir = tmp_path / "preempt" / runs[0].run_id
    SlurmExecutor(SlurmOptions.create(time=60), job_fn=FAKE_JOB, console=QUIET).run(
        tmp_path / "preempt", runs
    )
    job = read_json(run_dir / "status.json")["slurm_job_id"]
    wait_for(lambda: (read_json(run_dir / "fake_ckpt.json") or {}).get("step", 0) >= 2, 60, "2 steps")
    # what Slurm does on preemption (submitit's own test hook): SIGTERM, then the USR2 warning
    subprocess.run(["scancel", job, "--signal", "SIGTERM"], check=True)
    subprocess.run(["scancel", job, "--signal", "USR2"], check=True)
    wait_for(lambda: getattr(Q.query([job]).get(job), "state", "") == "PENDING", 30, "the job to be requeued")
    assert read_json(run_dir / "status.json")["state"] == "pending"
    # Slurm holds a requeued job back for ~2 minutes; let it start now
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    wait_for(lambda: is_finished(run_dir), 120, "the requeued job to finish")
    status, metrics = read_json(run_dir / "status.json"), read_json(run_dir / "metrics.json")
    assert status["slurm_job_id"] == job and status["attempts"] == 2
    assert metrics["resumed_from"] >= 2  # continued from its checkpoint, not from scratch


def smoke_grid(tmp_path: Path, name: str, dense_iters: int, ckpt_every: int) -> Path:
    """ablations/smoke-plain.yaml cut to 2 points (dense + one pruned finetune), tiny and short."""
    grid = yaml.safe_load((ROOT / "ablations" / "smoke-plain.yaml").read_text())
    grid["name"] = name
    grid["axes"] = {
        "pruned_tokens": ["preserve"],
        "reactivation": [True],
        "rate": ["dynamic"],
        "selector": ["mlp"],
    }
    grid["backbone"].update(
        embed_dim=32, depth=2, num_heads=2, out_channels=16, prune_layers=[1], keep_ratios=[0.5]
    )
    grid["data"].update(
        num_train=8,
        num_val=4,
        image_size=[64, 64],
        img_scale=[64, 64],
        batch_size=2,
        cache_dir=str(tmp_path / "cache"),
    )
    grid["schedule"].update(
        dense={"iters": dense_iters},
        finetune={"iters": 2},
        warmup_iters=1,
        log_interval=1,
        checkpoint_interval=ckpt_every,
    )
    grid["bench"] = {"images": 4, "warmup": 1, "repeats": 2}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def check_metrics(run_dir: Path) -> dict:
    m = read_json(run_dir / "metrics.json")
    assert is_finished(run_dir), run_dir
    for key in ("run_id", "axes", "box_ap", "mask_ap", "coco", "latency_ms", "keep_ratio", "flops_g", "env"):
        assert key in m, (run_dir.name, key)
    return m


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_sweep_on_slurm_holds_the_dependency(cluster, tmp_path):
    from rich.console import Console

    from prunebench.sweep import run_sweep

    states = run_sweep(
        smoke_grid(tmp_path, "slurm-smoke", dense_iters=4, ckpt_every=2),
        tmp_path / "results",
        executor="slurm",
        console=Console(quiet=True),
        executor_options={"wait": True, "poll_s": 2, "time": 30, "console": Console(quiet=True)},
    )
    assert sorted(states.values()) == ["done", "done"], states
    sweep = tmp_path / "results" / "slurm-smoke"
    runs = {read_json(d / "run.json")["stage"]: d for d in sweep.iterdir() if (d / "run.json").exists()}
    for d in runs.values():
        check_metrics(d)
    dense, ft = (read_json(runs[s] / "status.json") for s in ("dense", "finetune"))
    assert ft["started"] >= dense["updated"]  # run_job of the finetune began after the dense one ended
    times = sacct_times([dense["slurm_job_id"], ft["slurm_job_id"]])
    if times:  # accounting on (the test cluster's default)
        print("sacct:", times)
        assert times[ft["slurm_job_id"]][0] >= times[dense["slurm_job_id"]][1], times


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cancelled_run_completes_on_rerun(cluster, tmp_path):
    from rich.console import Console

    from prunebench.sweep import run_sweep

    grid = smoke_grid(tmp_path, "slurm-cancel", dense_iters=20, ckpt_every=2)
    quiet = Console(quiet=True)
    options = {"poll_s": 2, "time": 30, "console": quiet}
    states = run_sweep(grid, tmp_path / "results", executor="slurm", executor_options=options, console=quiet)
    assert sorted(states.values()) == ["submitted", "submitted"]
    sweep = tmp_path / "results" / "slurm-cancel"
    dense_dir = next(d for d in sweep.iterdir() if d.name.startswith("dense-"))
    ft_dir = next(d for d in sweep.iterdir() if d.name.startswith("preserve-"))
    old = {d: read_json(d / "status.json")["slurm_job_id"] for d in (dense_dir, ft_dir)}
    wait_for(
        lambda: list((dense_dir / "work_dir").glob("iter_*.pth")),
        300,
        "the dense run's first checkpoint",
        every=0.5,
    )
    subprocess.run(["scancel", old[dense_dir]], check=True)
    wait_for(
        lambda: getattr(Q.query([old[dense_dir]]).get(old[dense_dir]), "state", "") == "CANCELLED",
        60,
        "the cancel",
    )
    assert not is_finished(dense_dir)
    # the same command again: resubmits the cancelled run, moves the finetune onto the new job
    states = run_sweep(
        grid,
        tmp_path / "results",
        executor="slurm",
        executor_options={**options, "wait": True},
        console=quiet,
    )
    assert sorted(states.values()) == ["done", "done"], states
    new = {d: read_json(d / "status.json")["slurm_job_id"] for d in (dense_dir, ft_dir)}
    assert all(new[d] != old[d] for d in new), (old, new)
    check_metrics(dense_dir)
    check_metrics(ft_dir)
    log = (dense_dir / "slurm" / f"{new[dense_dir]}_0_log.out").read_text()
    assert "resumed epoch" in log  # MMEngine continued from the cancelled job's last checkpoint
    print("cancelled", old, "-> resubmitted", new, "sacct:", sacct_times([*old.values(), *new.values()]))
