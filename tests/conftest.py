"""Shared test builders, as fixtures."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

# Before any MMEngine logger exists, as in a Slurm task: importing submitit runs
# logging.config.dictConfig, which closes every logging handler already made (MMEngine's
# log-file handlers included, after which init_weights fails writing to them).
import submitit  # noqa: F401

from prunebench.results import (
    METRICS_FILE,
    atomic_write_json,
    is_finished,
    read_json,
    record_exception,
    write_status,
)

DENSE_AXES = {"pruned_tokens": None, "reactivation": None, "rate": None, "selector": None}


def build_run(
    sweep_dir: Path,
    run_id: str,
    axes: dict | None = None,
    *,
    state: str = "done",
    seed: int = 0,
    box: float | None = None,
    mask: float | None = None,
    full: float | None = None,
    bb: float | None = None,
    keep: float = 1.0,
    flops: float = 10.0,
    backbone: str = "deit-small",
    **status,
) -> Path:
    """Write a run folder as the job runner would; ``metrics.json`` only when ``box`` is given."""
    axes = dict(DENSE_AXES if axes is None else axes)
    stage = "dense" if all(axes.get(a) is None for a in DENSE_AXES) else "finetune"
    run_dir = Path(sweep_dir) / run_id
    run_dir.mkdir(parents=True)
    ident = {
        "run_id": run_id,
        "sweep": Path(sweep_dir).name,
        "stage": stage,
        "backbone": backbone,
        "seed": seed,
        "axes": axes,
    }
    (run_dir / "run.json").write_text(json.dumps({**ident, "depends_on": [], "overrides": {}}))
    (run_dir / "config.py").write_text("model = dict()\n")
    write_status(run_dir, state, **status)
    if box is not None:
        metrics = {
            **ident,
            "box_ap": box,
            "mask_ap": mask,
            "coco": {"bbox_mAP": box / 100},
            "latency_ms": {
                "backbone": bb,
                "full": full,
                "device": "cpu",
                "input_size": [512, 512],
                "batch": 1,
                "repeats": 10,
            },
            "flops_g": {"backbone": flops, "full": None},
            "keep_ratio": {"mean": keep, "per_layer": [keep]},
            "env": {},
            "train_time_s": 1.0,
        }
        (run_dir / METRICS_FILE).write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture
def make_run():
    """``make_run(sweep_dir, run_id, axes, state=..., box=..., ...)``: a hand-made run folder."""
    return build_run


# --- a cheap job function, for executor tests (job processes import it as ``conftest:fake_job``) ---

FAKE_JOB = "conftest:fake_job"
TRACE = "trace.jsonl"


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _trace(run_dir: Path, **event) -> None:
    with open(run_dir / TRACE, "a") as f:
        f.write(json.dumps({**event, "pid": os.getpid(), "t": time.time()}) + "\n")


def read_trace(run_dir: Path) -> list[dict]:
    """The events fake_job wrote for a run: start (with ``alive``: earlier job processes of the run
    still alive) and end."""
    path = Path(run_dir) / TRACE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def fake_job(run_dir, launcher="none"):
    """Stand-in for prunebench.job:run_job. ``fake.json`` holds ``steps``, ``sleep`` (s per step)
    and ``fail_at`` (raise before that step); a checkpoint follows each step and a new call
    resumes from the last one. Writes metrics.json and status (progress per step: iteration,
    loss 1 / iteration, ETA) as run_job does."""
    run_dir = Path(run_dir)
    if is_finished(run_dir):  # as run_job: a finished run is not run again
        return read_json(run_dir / METRICS_FILE)
    cfg = read_json(run_dir / "fake.json") or {}
    earlier = {e["pid"] for e in read_trace(run_dir)} - {os.getpid()}
    _trace(run_dir, event="start", alive=sorted(p for p in earlier if process_alive(p)))
    ckpt = run_dir / "fake_ckpt.json"
    start = (read_json(ckpt) or {}).get("step", 0)
    write_status(run_dir, "running", pid=os.getpid(), resumed_from=start)
    steps, sleep = cfg.get("steps", 1), cfg.get("sleep", 0)
    try:
        for step in range(start, steps):
            if step == cfg.get("fail_at"):
                raise RuntimeError(f"fake failure at step {step}")
            time.sleep(sleep)
            atomic_write_json(ckpt, {"step": step + 1})
            progress = dict(phase="train", iter=step + 1, max_iters=steps, loss=1 / (step + 1))
            eta_s = sleep * (steps - step - 1)
            write_status(run_dir, "running", pid=os.getpid(), resumed_from=start, eta_s=eta_s, **progress)
    except BaseException as e:  # as run_job: Ctrl-C leaves the run pending, an error fails it
        record_exception(run_dir, e, str(run_dir / "train.log"))
        raise
    metrics = {
        "run_id": run_dir.name,
        "box_ap": 1.0,
        "mask_ap": 1.0,
        "latency_ms": {"full": 1.0},
        "resumed_from": start,
        "launcher": launcher,
    }
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    write_status(run_dir, "done")
    _trace(run_dir, event="end")
    return metrics


def make_fake_runs(sweep_dir: Path, finetunes: int = 2, **fake) -> list:
    """A dense run and ``finetunes`` runs that depend on it, as RunSpecs with their folders
    (run.json, status pending, ``fake.json`` = ``fake``, default one quick step)."""
    from prunebench.spec import RunSpec

    sweep_dir = Path(sweep_dir)
    dense = RunSpec("dense-s0-aaaaaa", sweep_dir.name, "dense", "deit-tiny", 0, {"selector": None})
    runs = [dense] + [
        RunSpec(
            f"preserve-{i}-s0-bbbbbb",
            sweep_dir.name,
            "finetune",
            "deit-tiny",
            0,
            {"selector": "mlp", "i": i},
            (dense.run_id,),
        )
        for i in range(finetunes)
    ]
    for spec in runs:
        run_dir = sweep_dir / spec.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "run.json", spec.to_json())
        atomic_write_json(run_dir / "fake.json", {"steps": 1, **fake})
        write_status(run_dir, "pending")
    return runs


@pytest.fixture
def job_processes_see_tests(monkeypatch):
    """Job processes started by an executor can import this file (``conftest:fake_job``)."""
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


_HOLD = """
import sys, time
from prunebench.results import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


@pytest.fixture
def hold_lock():
    """``hold_lock(run_dir)``: another live process holds the run's lock until the test ends (or
    ``.release()`` on the returned process)."""
    import subprocess
    import sys

    procs = []

    def hold(run_dir: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(run_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        proc.release = lambda: (proc.stdin.close(), proc.wait(10))
        return proc

    yield hold
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
