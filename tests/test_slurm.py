"""Slurm executor: unit tests (no cluster: option parsing, sbatch parameters, dependency and
skip/resubmit decisions, job wrapper) and integration tests on the local test cluster
(``bash scripts/slurm_cluster.sh start``; marked ``slurm``, skipped when no idle node)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prunebench.executors import get_executor
from prunebench.executors import slurm as S
from prunebench.executors.base import is_finished
from prunebench.grid import RunSpec
from prunebench.results import atomic_write_json, read_json, write_status

ROOT = Path(__file__).resolve().parents[1]
DENSE, FT = "dense-s0-aaaaaa", "preserve-react-dyn-mlp-s0-bbbbbb"
FAKE_FN = f"{__name__}:fake_run_job"


def make_runs(sweep_dir: Path, sleep: float = 0.0) -> list[RunSpec]:
    runs = [RunSpec(DENSE, sweep_dir.name, "dense", "deit-tiny", 0, {"selector": None}),
            RunSpec(FT, sweep_dir.name, "finetune", "deit-tiny", 0, {"selector": "mlp"}, (DENSE,))]
    for spec in runs:
        (sweep_dir / spec.run_id).mkdir(parents=True, exist_ok=True)
        atomic_write_json(sweep_dir / spec.run_id / "run.json", spec.to_json())
        atomic_write_json(sweep_dir / spec.run_id / "fake.json", {"steps": 4, "sleep": sleep})
    return runs


def finish(run_dir: Path) -> None:
    atomic_write_json(run_dir / "metrics.json", {"run_id": run_dir.name, "box_ap": 1.0, "mask_ap": 1.0,
                                                 "latency_ms": {"full": 1.0}})
    write_status(run_dir, "done")


def fake_run_job(run_dir, launcher="none"):
    """Stand-in for prunebench.job.run_job (imported on the node as test_slurm:fake_run_job):
    ``steps`` steps of ``sleep`` s, a "checkpoint" after each, resumes from the last one."""
    run_dir = Path(run_dir)
    cfg = read_json(run_dir / "fake.json") or {}
    ckpt = run_dir / "fake_ckpt.json"
    start = (read_json(ckpt) or {}).get("step", 0)
    t_start = time.time()
    write_status(run_dir, "running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), resumed_from=start)
    if cfg.get("fail"):
        raise RuntimeError("fake failure")
    for step in range(start, cfg.get("steps", 1)):
        time.sleep(cfg.get("sleep", 0))
        atomic_write_json(ckpt, {"step": step + 1})
    metrics = {"run_id": run_dir.name, "box_ap": 1.0, "mask_ap": 1.0, "latency_ms": {"full": 1.0},
               "resumed_from": start, "launcher": launcher, "t_start": t_start, "t_end": time.time()}
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_status(run_dir, "done")
    return metrics


# ============================================================================ option parsing

@pytest.mark.parametrize("value, minutes", [(90, 90), (2.5, 3), ("30", 30), ("1:30", 2), ("24:00:00", 1440),
                                            ("0:00:59", 1), ("1-12", 2160), ("1-00:30", 1470),
                                            ("2-00:00:00", 2880)])
def test_parse_time(value, minutes):
    assert S.parse_time(value) == minutes


@pytest.mark.parametrize("value", ["", "abc", "1:2:3:4", "24h", 0, -5, "0:00:00", True])
def test_parse_time_rejects_bad_values(value):
    with pytest.raises(ValueError, match="Slurm time"):
        S.parse_time(value)


@pytest.mark.parametrize("value, mem", [(64, "64G"), (1.5, "1536M"), ("64G", "64G"), ("64gb", "64G"),
                                        ("16000M", "16000M"), ("16000", "16000M"), (None, None)])
def test_parse_mem(value, mem):
    assert S.parse_mem(value) == mem


@pytest.mark.parametrize("value", ["lots", "0G", 0, "-4G"])
def test_parse_mem_rejects_bad_values(value):
    with pytest.raises(ValueError, match="memory"):
        S.parse_mem(value)


def test_per_gpu_batch_keeps_the_total_batch():
    from prunebench.job import per_gpu_batch

    assert per_gpu_batch(16, 4) == 4
    assert per_gpu_batch(16, 1) == 16
    assert per_gpu_batch(16, 0) == 16
    with pytest.raises(ValueError, match="not divisible by 4 GPUs"):
        per_gpu_batch(10, 4)


def test_parse_sbatch_args():
    assert S.parse_sbatch_args({"constraint": "a100", "exclusive": True}) == {"constraint": "a100",
                                                                           "exclusive": True}
    assert S.parse_sbatch_args({"mail_type": "END"}) == {"mail-type": "END"}
    assert S.parse_sbatch_args(["--constraint=a100", "--exclusive"]) == {"constraint": "a100",
                                                                       "exclusive": True}
    assert S.parse_sbatch_args("--nice=10 --exclusive") == {"nice": "10", "exclusive": True}
    assert S.parse_sbatch_args(None) == {}
    with pytest.raises(ValueError, match="long options"):
        S.parse_sbatch_args(["-C", "a100"])


def test_constructor_rejects_bad_options():
    with pytest.raises(ValueError, match="gpus_per_job"):
        S.SlurmExecutor(gpus_per_job=-1)
    with pytest.raises(ValueError, match="Slurm time"):
        get_executor("slurm", time="tomorrow")
    with pytest.raises(ValueError, match="cpus_per_task"):
        S.SlurmExecutor(cpus_per_task=0)
    assert S.SlurmExecutor(gpus_per_job=None).gpus_per_job == 0  # CLI passes None when unset


# ============================================================================ sbatch parameters

def test_sbatch_parameters_cpu_job():
    p = S.SlurmExecutor().sbatch_parameters(DENSE)
    assert p["job_name"] == DENSE and p["time"] == 1440 and p["ntasks_per_node"] == 1 and p["nodes"] == 1
    assert "gpus_per_node" not in p and "dependency" not in p and "partition" not in p
    assert p["additional_parameters"]["requeue"] is True and p["additional_parameters"]["hold"] is True
    assert S.SlurmExecutor().launcher == "none"


def test_sbatch_parameters_multi_gpu_job_and_dependency():
    ex = S.SlurmExecutor(partition="gpu", gpus_per_job=4, cpus_per_task=8, mem="64G", time=90,
                         account="proj", qos="high", sbatch_args=["--constraint=a100"])
    p = ex.sbatch_parameters(FT, ["11", "12"])
    assert p["gpus_per_node"] == 4 and p["ntasks_per_node"] == 4  # one task per GPU
    assert ex.launcher == "slurm"
    assert p["dependency"] == "afterok:11:12"
    assert (p["partition"], p["cpus_per_task"], p["mem"], p["time"], p["account"], p["qos"]) == (
        "gpu", 8, "64G", 90, "proj", "high")
    assert p["additional_parameters"]["constraint"] == "a100"


def test_sbatch_script_written_by_submitit(tmp_path):
    submitit_slurm = pytest.importorskip("submitit.slurm.slurm")
    ex = S.SlurmExecutor(gpus_per_job=2, time="1-00:00:00", sbatch_args={"constraint": "a100"})
    text = submitit_slurm._make_sbatch_string(command="python -m x", folder=tmp_path,
                                              **ex.sbatch_parameters(FT, ["42"]))
    for line in ("#SBATCH --dependency=afterok:42", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --ntasks-per-node=2", "#SBATCH --time=1440", "#SBATCH --requeue",
                 "#SBATCH --hold", "#SBATCH --signal=USR2@120", "#SBATCH --constraint=a100",
                 f"#SBATCH --job-name={FT}"):
        assert line in text.splitlines(), line
    assert "srun" in text


# ============================================================================ decisions

def live_of(**states):
    return {str(k): v if isinstance(v, tuple) else (v, "None") for k, v in states.items()}


def set_job(run_dir: Path, job: str, state: str = "pending") -> None:
    write_status(run_dir, state, slurm_job_id=job)


def actions(plan):
    return {spec.run_id: action for spec, action, _ in plan}


def test_plan_fresh_sweep_submits_everything_dense_first(tmp_path):
    runs = make_runs(tmp_path)
    plan = S.SlurmExecutor().plan(tmp_path, list(reversed(runs)), {})
    assert [spec.run_id for spec, _, _ in plan] == [DENSE, FT]
    assert actions(plan) == {DENSE: "submit", FT: "submit"}


def test_plan_skips_finished_and_live_runs(tmp_path):
    runs = make_runs(tmp_path)
    finish(tmp_path / DENSE)
    set_job(tmp_path / FT, "7", "running")
    assert actions(S.SlurmExecutor().plan(tmp_path, runs, live_of(**{"7": "RUNNING"}))) == {
        DENSE: "done", FT: "keep"}


def test_plan_resubmits_failed_lost_and_stuck_jobs(tmp_path):
    runs = make_runs(tmp_path)
    set_job(tmp_path / DENSE, "5", "failed")
    set_job(tmp_path / FT, "6")
    plan = S.SlurmExecutor().plan(tmp_path, runs, live_of(**{"5": "FAILED",
                                                             "6": ("PENDING", "DependencyNeverSatisfied")}))
    assert actions(plan) == {DENSE: "submit", FT: "resubmit"}
    # a job left held by a submission cut short before its release is replaced
    plan = S.SlurmExecutor().plan(tmp_path, runs, live_of(**{"5": "FAILED", "6": ("PENDING", "JobHeldUser")}))
    assert actions(plan) == {DENSE: "submit", FT: "resubmit"}
    # a job Slurm no longer knows (lost, purged) is submitted again
    assert actions(S.SlurmExecutor().plan(tmp_path, runs, {}))[DENSE] == "submit"
    # a finetune still waiting on the dense run's old job is moved to the new one
    plan = S.SlurmExecutor().plan(tmp_path, runs, live_of(**{"5": "CANCELLED", "6": ("PENDING", "Dependency")}))
    assert actions(plan) == {DENSE: "submit", FT: "resubmit"}


def test_plan_rejects_a_dependency_outside_the_submission(tmp_path):
    runs = make_runs(tmp_path)
    with pytest.raises(ValueError, match="neither finished nor part of this submission"):
        S.SlurmExecutor().plan(tmp_path, runs[1:], {})
    finish(tmp_path / DENSE)
    assert actions(S.SlurmExecutor().plan(tmp_path, runs[1:], {})) == {FT: "submit"}


class FakeSlurm:
    """Replaces the executor's Slurm calls: records submissions and cancellations."""

    def __init__(self, monkeypatch, live=None, first_id=100):
        self.live, self.next_id = dict(live or {}), first_id
        self.submitted: list[tuple[str, list[str]]] = []
        self.cancelled: list[str] = []
        monkeypatch.setattr(S.shutil, "which", lambda name: f"/usr/bin/{name}")
        monkeypatch.setattr(S, "_squeue", lambda ids: {j: self.live[j] for j in ids if j in self.live})
        monkeypatch.setattr(S, "_sacct", lambda ids: {})
        monkeypatch.setattr(S.SlurmExecutor, "_submit", self._submit)
        monkeypatch.setattr(S.SlurmExecutor, "_cancel", staticmethod(self.cancelled.append))

    def _submit(self, sweep_dir, spec, deps):  # bound to FakeSlurm, patched onto the executor
        job = str(self.next_id)
        self.next_id += 1
        self.submitted.append((spec.run_id, list(deps)))
        write_status(Path(sweep_dir) / spec.run_id, "pending", slurm_job_id=job)
        return job


def quiet_executor(**kw):
    return S.SlurmExecutor(console=type("C", (), {"log": lambda self, *a, **k: None})(), **kw)


def test_run_translates_dependencies_to_afterok_job_ids(tmp_path, monkeypatch):
    runs = make_runs(tmp_path)
    fake = FakeSlurm(monkeypatch)
    states = quiet_executor().run(tmp_path, runs)
    assert fake.submitted == [(DENSE, []), (FT, ["100"])]
    assert states == {DENSE: "submitted", FT: "submitted"}
    assert read_json(tmp_path / FT / "status.json")["slurm_job_id"] == "101"


def test_run_again_skips_queued_and_finished_runs(tmp_path, monkeypatch):
    runs = make_runs(tmp_path)
    set_job(tmp_path / DENSE, "5")
    set_job(tmp_path / FT, "6")
    fake = FakeSlurm(monkeypatch, live_of(**{"5": "RUNNING", "6": ("PENDING", "Dependency")}))
    assert quiet_executor().run(tmp_path, runs) == {DENSE: "running", FT: "pending"}
    assert fake.submitted == [] and fake.cancelled == []
    finish(tmp_path / DENSE)
    finish(tmp_path / FT)
    assert quiet_executor().run(tmp_path, runs) == {DENSE: "done", FT: "done"}
    assert fake.submitted == []


def test_run_finetune_of_a_finished_dense_run_has_no_dependency(tmp_path, monkeypatch):
    runs = make_runs(tmp_path)
    finish(tmp_path / DENSE)
    set_job(tmp_path / FT, "6", "failed")
    fake = FakeSlurm(monkeypatch, live_of(**{"6": "FAILED"}))
    assert quiet_executor().run(tmp_path, runs) == {DENSE: "done", FT: "submitted"}
    assert fake.submitted == [(FT, [])]


def test_run_finetune_waits_on_a_still_running_dense_job(tmp_path, monkeypatch):
    runs = make_runs(tmp_path)
    set_job(tmp_path / DENSE, "5", "running")
    fake = FakeSlurm(monkeypatch, live_of(**{"5": "RUNNING"}))
    quiet_executor().run(tmp_path, runs)
    assert fake.submitted == [(FT, ["5"])]


def test_run_resubmits_a_cancelled_dense_run_and_moves_its_finetune(tmp_path, monkeypatch):
    runs = make_runs(tmp_path)
    set_job(tmp_path / DENSE, "5", "running")
    set_job(tmp_path / FT, "6")
    fake = FakeSlurm(monkeypatch, live_of(**{"5": "CANCELLED", "6": ("PENDING", "DependencyNeverSatisfied")}))
    assert quiet_executor().run(tmp_path, runs) == {DENSE: "submitted", FT: "submitted"}
    assert fake.cancelled == ["6"]
    assert fake.submitted == [(DENSE, []), (FT, ["100"])]


def test_run_without_sbatch_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="sbatch not found"):
        S.SlurmExecutor().run(tmp_path, make_runs(tmp_path))


def test_wait_records_failures_and_skips_dependents(tmp_path, monkeypatch):
    runs = make_runs(tmp_path)
    fake = FakeSlurm(monkeypatch)
    ex = quiet_executor(wait=True, poll_s=0)
    # dense job 100 dies (e.g. scancel, node failure) without metrics; its finetune can never start
    fake.live = live_of(**{"100": "CANCELLED", "101": ("PENDING", "DependencyNeverSatisfied")})
    assert ex.run(tmp_path, runs) == {DENSE: "failed", FT: "skipped"}
    status = read_json(tmp_path / DENSE / "status.json")
    assert status["state"] == "failed" and "100 ended CANCELLED" in status["error"]
    assert read_json(tmp_path / FT / "status.json")["reason"] == f"dependency {DENSE} failed"
    assert fake.cancelled == ["101"]


def test_wait_returns_done_when_jobs_finish(tmp_path, monkeypatch):
    runs = make_runs(tmp_path)
    fake = FakeSlurm(monkeypatch)
    polls = []

    def squeue(ids):  # first poll: running; second: both completed with metrics
        polls.append(ids)
        if len(polls) == 1:
            return live_of(**{"100": "RUNNING", "101": ("PENDING", "Dependency")})
        finish(tmp_path / DENSE)
        finish(tmp_path / FT)
        return live_of(**{"100": "COMPLETED", "101": "COMPLETED"})

    monkeypatch.setattr(S, "_squeue", squeue)
    assert quiet_executor(wait=True, poll_s=0).run(tmp_path, runs) == {DENSE: "done", FT: "done"}
    assert fake.submitted == [(DENSE, []), (FT, ["100"])]


# ============================================================================ query_states

def test_query_states_merges_squeue_and_sacct(monkeypatch):
    calls = []

    def run_cmd(cmd):
        calls.append(cmd[0])
        if cmd[0] == "squeue":
            return "5|RUNNING|None\n6|PENDING|Dependency\n"
        return "3|COMPLETED\n4|CANCELLED by 0\n"

    monkeypatch.setattr(S, "_run_cmd", run_cmd)
    assert S.query_states(["3", "4", "5", "6", "6", ""]) == {
        "3": "COMPLETED", "4": "CANCELLED", "5": "RUNNING", "6": "PENDING"}
    assert calls == ["squeue", "sacct"]


def test_query_states_without_slurm_tools_is_empty(monkeypatch):
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    assert S.query_states(["1", "2"]) == {}
    assert S.query_states([]) == {}


def test_module_import_stays_light():
    code = ("import sys, prunebench.executors.slurm as s; s.query_states([]);"
            "heavy = [m for m in ('torch', 'submitit', 'mmengine', 'mmdet', 'rich') if m in sys.modules];"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# ============================================================================ the job wrapper

def test_job_wrapper_runs_the_job_function(tmp_path):
    make_runs(tmp_path)
    run_dir = tmp_path / DENSE
    result = S.SlurmRunJob(FAKE_FN)(str(run_dir))
    assert result["launcher"] == "none" and is_finished(run_dir)


def test_job_wrapper_runs_under_submitit_debug_executor(tmp_path):
    submitit = pytest.importorskip("submitit")
    make_runs(tmp_path)
    job = submitit.DebugExecutor(folder=tmp_path / "logs").submit(S.SlurmRunJob(FAKE_FN), str(tmp_path / DENSE))
    assert job.result()["box_ap"] == 1.0


def test_job_wrapper_records_the_slurm_job_and_a_failure(tmp_path, monkeypatch):
    make_runs(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    atomic_write_json(tmp_path / DENSE / "fake.json", {"fail": True})
    with pytest.raises(RuntimeError, match="fake failure"):
        S.SlurmRunJob(FAKE_FN, launcher="slurm")(str(tmp_path / DENSE))
    status = read_json(tmp_path / DENSE / "status.json")
    assert status["state"] == "failed" and status["slurm_job_id"] == "1234" and status["attempts"] == 1
    assert os.environ["MASTER_PORT"] == str(20000 + 1234)  # one port per job (multi-GPU)


def test_job_wrapper_other_ranks_write_nothing(tmp_path, monkeypatch):
    make_runs(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setattr(S, "_import", lambda ref: lambda run_dir, launcher: launcher)
    assert S.SlurmRunJob(FAKE_FN, launcher="slurm")(str(tmp_path / DENSE)) == "slurm"
    assert not (tmp_path / DENSE / "status.json").exists()


def test_checkpoint_resubmits_the_same_run(tmp_path):
    pytest.importorskip("submitit")
    job = S.SlurmRunJob(FAKE_FN, launcher="slurm")
    delayed = job.checkpoint(str(tmp_path))
    assert isinstance(delayed.function, S.SlurmRunJob) and delayed.args == (str(tmp_path),)
    assert (delayed.function.fn, delayed.function.launcher) == (FAKE_FN, "slurm")
    assert pickle.loads(pickle.dumps(delayed.function)).fn == FAKE_FN


@pytest.mark.parametrize("exit_error", [SystemExit(-1), subprocess.CalledProcessError(-15, ["scontrol"])])
def test_requeue_exit_leaves_the_run_pending(tmp_path, monkeypatch, exit_error):
    pytest.importorskip("submitit")
    make_runs(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    run_dir = str(tmp_path / DENSE)
    job = S.SlurmRunJob(FAKE_FN)

    def preempted(run_dir, launcher):  # submitit's signal handler mid-training: checkpoint,
        job.checkpoint(run_dir)  # `scontrol requeue` (may be killed by the requeue), sys.exit
        write_status(run_dir, "failed", error="what run_job records for any exception")
        raise exit_error

    monkeypatch.setattr(S, "_import", lambda ref: preempted)
    with pytest.raises(type(exit_error)):
        job(run_dir)
    status = read_json(Path(run_dir) / "status.json")
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
    # the node is this machine: let its Python import this module (for fake_run_job)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                   os.environ.get("PYTHONPATH")])))


def sacct_times(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (Start, End) from accounting; {} when sacct does not work (no slurmdbd)."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", ",".join(job_ids)],
                         capture_output=True, text=True)
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
    runs = make_runs(tmp_path / "fake", sleep=1)
    states = S.SlurmExecutor(wait=True, poll_s=1, time=10, job_fn=FAKE_FN).run(tmp_path / "fake", runs)
    assert states == {DENSE: "done", FT: "done"}
    dense, ft = (read_json(tmp_path / "fake" / r / "status.json") for r in (DENSE, FT))
    dense_m, ft_m = (read_json(tmp_path / "fake" / r / "metrics.json") for r in (DENSE, FT))
    assert ft_m["t_start"] >= dense_m["t_end"]  # the finetune started after the dense run ended
    times = sacct_times([dense["slurm_job_id"], ft["slurm_job_id"]])
    if times:
        assert times[ft["slurm_job_id"]][0] >= times[dense["slurm_job_id"]][1], times
    assert (tmp_path / "fake" / DENSE / "train.log").resolve().name == f"{dense['slurm_job_id']}_0_log.out"


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_preempted_job_is_requeued_and_resumes(cluster, tmp_path):
    sweep = tmp_path / "preempt"
    runs = make_runs(sweep, sleep=2)[:1]
    atomic_write_json(sweep / DENSE / "fake.json", {"steps": 8, "sleep": 2})
    S.SlurmExecutor(time=60, job_fn=FAKE_FN).run(sweep, runs)
    job = read_json(sweep / DENSE / "status.json")["slurm_job_id"]
    wait_for(lambda: (read_json(sweep / DENSE / "fake_ckpt.json") or {}).get("step", 0) >= 2, 60, "2 steps")
    # what Slurm does on preemption (submitit's own test hook): SIGTERM, then the USR2 warning
    subprocess.run(["scancel", job, "--signal", "SIGTERM"], check=True)
    subprocess.run(["scancel", job, "--signal", "USR2"], check=True)
    wait_for(lambda: S.query_states([job]).get(job) == "PENDING", 30, "the job to be requeued")
    assert read_json(sweep / DENSE / "status.json")["state"] == "pending"
    # Slurm holds a requeued job back for ~2 minutes; let it start now
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    wait_for(lambda: is_finished(sweep / DENSE), 120, "the requeued job to finish")
    status, metrics = read_json(sweep / DENSE / "status.json"), read_json(sweep / DENSE / "metrics.json")
    assert status["slurm_job_id"] == job and status["attempts"] == 2
    assert metrics["resumed_from"] >= 2  # continued from its checkpoint, not from scratch


def smoke_grid(tmp_path: Path, name: str, dense_iters: int, ckpt_every: int) -> Path:
    """ablations/smoke.yaml cut to 2 points (dense + one pruned finetune), tiny and short."""
    grid = yaml.safe_load((ROOT / "ablations" / "smoke.yaml").read_text())
    grid["name"] = name
    grid["axes"] = {"pruned_tokens": ["preserve"], "reactivation": [True], "rate": ["dynamic"],
                    "selector": ["mlp"]}
    grid["backbone"].update(embed_dim=32, depth=2, num_heads=2, out_channels=16, prune_layers=[1],
                            keep_ratios=[0.5])
    grid["data"].update(num_train=8, num_val=4, image_size=[64, 64], img_scale=[64, 64], batch_size=2,
                        cache_dir=str(tmp_path / "cache"))
    grid["schedule"].update(dense={"iters": dense_iters}, finetune={"iters": 2}, warmup_iters=1,
                            log_interval=1, checkpoint_interval=ckpt_every)
    grid["bench"] = {"input_size": [64, 64], "warmup": 1, "repeats": 2}
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

    states = run_sweep(smoke_grid(tmp_path, "slurm-smoke", dense_iters=4, ckpt_every=2), tmp_path / "results",
                       executor="slurm", console=Console(quiet=True),
                       executor_options={"wait": True, "poll_s": 2, "time": 30, "console": Console(quiet=True)})
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
    wait_for(lambda: list((dense_dir / "work_dir").glob("iter_*.pth")), 300, "the dense run's first checkpoint",
             every=0.5)
    subprocess.run(["scancel", old[dense_dir]], check=True)
    wait_for(lambda: S.query_states([old[dense_dir]]).get(old[dense_dir]) == "CANCELLED", 60, "the cancel")
    assert not is_finished(dense_dir)
    # the same command again: resubmits the cancelled run, moves the finetune onto the new job
    states = run_sweep(grid, tmp_path / "results", executor="slurm",
                       executor_options={**options, "wait": True}, console=quiet)
    assert sorted(states.values()) == ["done", "done"], states
    new = {d: read_json(d / "status.json")["slurm_job_id"] for d in (dense_dir, ft_dir)}
    assert all(new[d] != old[d] for d in new), (old, new)
    check_metrics(dense_dir)
    check_metrics(ft_dir)
    log = (dense_dir / "slurm" / f"{new[dense_dir]}_0_log.out").read_text()
    assert "resumed epoch" in log  # MMEngine continued from the cancelled job's last checkpoint
    print("cancelled", old, "-> resubmitted", new, "sacct:", sacct_times([*old.values(), *new.values()]))
