"""Slurm executor (submitit): one Slurm job per run; dense -> finetune as ``afterok`` dependencies.

Decisions on every call of :meth:`SlurmExecutor.run` (so re-running a sweep is always safe):

- a finished run (complete ``metrics.json``) is skipped;
- a run whose recorded Slurm job (``status.json: slurm_job_id``) is still PENDING/RUNNING is left
  alone, unless it waits on a dependency that can never be satisfied, or on a dependency that
  is resubmitted now: then it is cancelled and resubmitted;
- anything else (never submitted, failed, cancelled, lost) is submitted; a finetune whose dense
  run is finished is submitted without a dependency.

Preemption and time limits: the job is a checkpointable callable (:class:`SlurmRunJob`);
submitit catches Slurm's warning signal, calls ``checkpoint()`` and requeues the job, which then
resumes from the run's last MMEngine checkpoint (``run_job`` does that by itself).

Nothing heavy is imported at module import: ``prunebench status`` calls :func:`query_states`.
"""
from __future__ import annotations

import importlib
import math
import os
import re
import shutil
import subprocess
import time as _time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..grid import RunSpec
from ..results import LOG_FILE, STATUS_FILE, read_json, write_status
from .base import Executor, is_finished

# Slurm states in which a job may still run (everything else has ended).
ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED",
})
# Pending reasons after which a job will never start by itself.
DEAD_REASONS = ("DependencyNeverSatisfied",)
DEFAULT_JOB_FN = "prunebench.job:run_job"
_CMD_TIMEOUT_S = 60


# ----------------------------------------------------------------------------- option parsing

def parse_time(value: int | float | str) -> int:
    """Slurm time limit -> whole minutes. Accepts minutes (int) or Slurm's formats
    ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``."""
    if isinstance(value, bool):
        raise ValueError(f"invalid Slurm time {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"invalid Slurm time {value!r}: must be positive minutes")
        return math.ceil(value)
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(f"invalid Slurm time {value!r}; use minutes or one of MM, MM:SS, HH:MM:SS, "
                         "D-HH, D-HH:MM, D-HH:MM:SS (e.g. 24:00:00 or 1-12:00:00)")
    days, a, b, c = m.groups()
    a, b, c = int(a), int(b or 0), int(c or 0)
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + a * 3600 + b * 60 + c
    elif m.group(4) is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    else:  # MM or MM:SS
        seconds = a * 60 + b
    if seconds <= 0:
        raise ValueError(f"invalid Slurm time {value!r}: must be positive")
    return math.ceil(seconds / 60)


def parse_mem(value: int | float | str | None) -> str | None:
    """Memory per node for ``--mem``: a number is GB; a string keeps Slurm's units (K, M, G, T)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"invalid memory {value!r}: must be positive")
        return f"{int(value)}G" if value == int(value) else f"{math.ceil(value * 1024)}M"
    text = str(value).strip().upper()
    m = re.fullmatch(r"(\d+)\s*([KMGT])?B?", text)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"invalid memory {value!r}; use e.g. 64G, 16000M or a number of GB")
    return m.group(1) + (m.group(2) or "M")


def parse_sbatch_args(args: Mapping[str, Any] | Sequence[str] | str | None) -> dict[str, Any]:
    """Extra sbatch options as a dict for submitit's ``additional_parameters``. Accepts a dict
    (``{"constraint": "a100", "exclusive": True}``) or long options
    (``["--constraint=a100", "--exclusive"]``)."""
    if not args:
        return {}
    if isinstance(args, Mapping):
        out = {}
        for key, val in args.items():
            key = str(key).lstrip("-").replace("_", "-")
            if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
                raise ValueError(f"invalid sbatch option name {key!r} in sbatch_args")
            out[key] = val
        return out
    if isinstance(args, str):
        args = args.split()
    out = {}
    for arg in args:
        m = re.fullmatch(r"--([a-z][a-z0-9-]*)(?:=(.*))?", str(arg))
        if not m:
            raise ValueError(f"invalid sbatch argument {arg!r}; give long options such as "
                             "--constraint=a100 or --exclusive (or a dict)")
        out[m.group(1)] = True if m.group(2) is None else m.group(2)
    return out


# ----------------------------------------------------------------------------- Slurm queries

def _run_cmd(cmd: list[str]) -> str | None:
    """stdout of ``cmd``, or None when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _squeue(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state, pending reason) for the jobs slurmctld still knows."""
    if not job_ids:
        return {}
    # Unknown ids are left out (squeue fails only when it knows none of them).
    text = _run_cmd(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"])
    out: dict[str, tuple[str, str]] = {}
    for line in (text or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in job_ids:
            out[parts[0]] = (parts[1].upper(), parts[2])
    return out


def _sacct(job_ids: Sequence[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    text = _run_cmd(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)])
    out = {}
    for line in (text or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0] in job_ids:
            out[parts[0]] = parts[1].split()[0].upper()  # "CANCELLED by 0" -> CANCELLED
    return out


def query_states(job_ids: Sequence[str]) -> dict[str, str]:
    """Slurm state (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED...) per job id: ``squeue`` for
    the jobs slurmctld still holds, ``sacct`` for older ones. Ids Slurm does not know are left
    out; {} when the Slurm tools are absent."""
    ids = [str(j) for j in dict.fromkeys(job_ids) if j]
    states = {jid: st for jid, (st, _) in _squeue(ids).items()}
    states.update(_sacct([j for j in ids if j not in states]))
    return states


# ----------------------------------------------------------------------------- the job

def _import(ref: str) -> Callable:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr or "run_job")


class SlurmRunJob:
    """What one Slurm task runs: ``fn(run_dir, launcher=...)`` (default ``prunebench.job:run_job``).

    Checkpointable for submitit: on preemption or time-out submitit calls :meth:`checkpoint`,
    pickles the returned submission and requeues the job; the requeued job calls ``run_job``
    again, which resumes from the run's last checkpoint.
    """

    def __init__(self, fn: str = DEFAULT_JOB_FN, launcher: str = "none"):
        self.fn, self.launcher = fn, launcher

    def __call__(self, run_dir: str) -> Any:
        rank0 = os.environ.get("SLURM_PROCID", "0") == "0"
        job_id = os.environ.get("SLURM_JOB_ID", "")
        if self.launcher == "slurm" and job_id.isdigit():
            # A port per job: two multi-GPU jobs sharing a node must not both use 29500.
            os.environ.setdefault("MASTER_PORT", str(20000 + int(job_id) % 20000))
        if rank0 and job_id:  # attempts survive requeues: write_status keeps the field
            old = read_json(Path(run_dir) / STATUS_FILE) or {}
            write_status(run_dir, "running", slurm_job_id=job_id, attempts=int(old.get("attempts", 0)) + 1,
                         phase="start", node=os.uname().nodename)
        self._requeued = False
        try:
            result = _import(self.fn)(run_dir, launcher=self.launcher)
            if rank0 and is_finished(Path(run_dir)) and \
                    (read_json(Path(run_dir) / STATUS_FILE) or {}).get("state") == "running":
                write_status(run_dir, "done")  # e.g. run_job found the run already finished
            return result
        except BaseException as e:
            if not rank0:
                raise
            if self._requeued:  # submitit requeued the job and exits (SystemExit), or Slurm's
                # requeue kill hit its `scontrol requeue` first (CalledProcessError): back in the queue
                write_status(run_dir, "pending", reason=f"preempted or timed out: Slurm job {job_id} "
                             "requeued; it resumes from the last checkpoint")
            elif (read_json(Path(run_dir) / STATUS_FILE) or {}).get("state") not in ("failed", "pending"):
                write_status(run_dir, "failed", error=f"{type(e).__name__}: {e}")  # died before run_job said why
            raise

    def checkpoint(self, run_dir: str) -> Any:
        """Called by submitit on preemption/time-out, just before it requeues the job: resubmit
        the same call (the training state lives in the run folder's checkpoints)."""
        from submitit.helpers import DelayedSubmission

        self._requeued = True
        return DelayedSubmission(SlurmRunJob(self.fn, self.launcher), run_dir)

    def __repr__(self) -> str:
        return f"SlurmRunJob({self.fn!r}, launcher={self.launcher!r})"


# ----------------------------------------------------------------------------- the executor

def _link_log(run_dir: Path, target: Path) -> None:
    """Point ``<run_dir>/train.log`` at the Slurm job's log (as the local executor's log file)."""
    link = Path(run_dir) / LOG_FILE
    if link.exists() and not link.is_symlink():
        link.replace(link.with_name(LOG_FILE + ".prev"))  # an earlier local run's log
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def _order(runs: Sequence[RunSpec]) -> list[RunSpec]:
    """Dependencies before dependents (stable otherwise); raises on a cycle."""
    by_id = {r.run_id: r for r in runs}
    done: dict[str, bool] = {}
    out: list[RunSpec] = []

    def visit(spec: RunSpec, path: tuple[str, ...]) -> None:
        if done.get(spec.run_id):
            return
        if spec.run_id in path:
            raise ValueError(f"dependency cycle: {' -> '.join(path + (spec.run_id,))}")
        for dep in spec.depends_on:
            if dep in by_id:
                visit(by_id[dep], path + (spec.run_id,))
        done[spec.run_id] = True
        out.append(spec)

    for spec in runs:
        visit(spec, ())
    return out


class SlurmExecutor(Executor):
    """Submits each run as one Slurm job through submitit.

    Resources: ``gpus_per_job`` GPUs on one node (0: a CPU job with one task). With N > 0 GPUs the
    job has N tasks of one GPU each, and every task calls ``run_job(run_dir, launcher="slurm")``
    (MMEngine's distributed training; rank 0 writes the files). The config's batch size is the
    total batch: each GPU gets ``total / N`` (see :func:`prunebench.job.per_gpu_batch`).
    ``time`` is minutes or a Slurm time (``24:00:00``); ``mem`` per node (``64G`` or GB);
    ``sbatch_args`` extra sbatch options (dict or ``["--constraint=a100"]``).
    Logs: ``<run_dir>/slurm/<jobid>_0_log.out`` (or ``<log_dir>/<run_id>/``), linked as
    ``<run_dir>/train.log``; submission scripts and pickles sit next to it.
    ``wait=True`` blocks until every submitted job has ended and returns final states.
    """

    name = "slurm"

    def __init__(self, partition: str | None = None, gpus_per_job: int | None = 0,
                 cpus_per_task: int | None = None, mem: int | float | str | None = None,
                 time: int | float | str = "24:00:00", account: str | None = None,
                 qos: str | None = None, sbatch_args: Mapping[str, Any] | Sequence[str] | None = None,
                 wait: bool = False, log_dir: str | Path | None = None, signal_delay_s: int = 120,
                 max_num_timeout: int = 3, poll_s: float = 10.0, job_fn: str = DEFAULT_JOB_FN,
                 console: Any = None):
        gpus = 0 if gpus_per_job is None else gpus_per_job
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
            raise ValueError(f"gpus_per_job must be an integer >= 0, got {gpus_per_job!r}")
        if cpus_per_task is not None and (not isinstance(cpus_per_task, int) or cpus_per_task < 1):
            raise ValueError(f"cpus_per_task must be a positive integer, got {cpus_per_task!r}")
        if ":" not in job_fn:
            raise ValueError(f"job_fn must be 'module:function', got {job_fn!r}")
        self.partition, self.gpus_per_job, self.cpus_per_task = partition, gpus, cpus_per_task
        self.mem, self.time_min = parse_mem(mem), parse_time(time)
        self.account, self.qos = account, qos
        self.sbatch_args = parse_sbatch_args(sbatch_args)
        self.wait, self.log_dir = wait, Path(log_dir) if log_dir else None
        self.signal_delay_s, self.max_num_timeout, self.poll_s = signal_delay_s, max_num_timeout, poll_s
        self.job_fn, self._console = job_fn, console

    # --- pieces (each testable without a cluster)

    @property
    def launcher(self) -> str:
        return "slurm" if self.gpus_per_job > 0 else "none"

    def sbatch_parameters(self, run_id: str, dependency_job_ids: Sequence[str] = ()) -> dict[str, Any]:
        """Keyword arguments for ``submitit.SlurmExecutor.update_parameters`` of one run."""
        tasks = max(1, self.gpus_per_job)
        params: dict[str, Any] = {
            "job_name": run_id, "time": self.time_min, "nodes": 1, "ntasks_per_node": tasks,
            "signal_delay_s": self.signal_delay_s, "stderr_to_stdout": True,
            # --requeue: preempted jobs go back to the queue; --hold: released once status.json
            # records the job id (so the submitter never overwrites what the job wrote).
            "additional_parameters": {"requeue": True, "hold": True, **self.sbatch_args},
        }
        if self.gpus_per_job:
            params["gpus_per_node"] = self.gpus_per_job
        optional = {"partition": self.partition, "cpus_per_task": self.cpus_per_task, "mem": self.mem,
                    "account": self.account, "qos": self.qos}
        params.update({k: v for k, v in optional.items() if v is not None})
        if dependency_job_ids:
            params["dependency"] = "afterok:" + ":".join(map(str, dependency_job_ids))
        return params

    def log_folder(self, sweep_dir: Path, run_id: str) -> Path:
        return (self.log_dir / run_id) if self.log_dir else Path(sweep_dir) / run_id / "slurm"

    def plan(self, sweep_dir: Path, runs: Sequence[RunSpec],
             live: Mapping[str, tuple[str, str]]) -> list[tuple[RunSpec, str, str]]:
        """(spec, action, why) per run, dependencies first. ``live``: job id -> (Slurm state,
        pending reason). Actions: ``done`` (finished, skipped), ``keep`` (its job is still
        queued or running), ``submit``, ``resubmit`` (cancel its queued job, submit again)."""
        sweep_dir = Path(sweep_dir)
        ordered = _order(runs)
        ids = {r.run_id for r in ordered}
        out: list[tuple[RunSpec, str, str]] = []
        fresh: set[str] = set()  # runs that get a new job now
        for spec in ordered:
            run_dir = sweep_dir / spec.run_id
            if is_finished(run_dir):
                out.append((spec, "done", "finished"))
                continue
            for dep in spec.depends_on:
                if dep not in ids and not is_finished(sweep_dir / dep):
                    raise ValueError(f"run {spec.run_id} depends on {dep}, which is neither finished "
                                     "nor part of this submission; run the whole sweep")
            job = str((read_json(run_dir / STATUS_FILE) or {}).get("slurm_job_id") or "")
            state, reason = live.get(job, ("", "")) if job else ("", "")
            if state in ACTIVE_STATES:
                renewed = [d for d in spec.depends_on if d in fresh]
                if state == "PENDING" and any(r in reason for r in DEAD_REASONS):
                    out.append((spec, "resubmit", f"job {job} can never start ({reason})"))
                elif state == "PENDING" and reason == "JobHeldUser":  # a submission cut short before release
                    out.append((spec, "resubmit", f"job {job} held"))
                elif state == "PENDING" and renewed:
                    out.append((spec, "resubmit", f"job {job} waits on the old job of {renewed[0]}"))
                else:
                    out.append((spec, "keep", f"job {job} {state.lower()}"))
                    continue
            else:
                why = f"job {job} ended {state or 'unknown to Slurm'}" if job else "not submitted yet"
                out.append((spec, "submit", why))
            fresh.add(spec.run_id)
        return out

    # --- Slurm side effects

    def _console_log(self, msg: str) -> None:
        if self._console is None:
            from rich.console import Console

            self._console = Console()
        self._console.log(msg)

    def _submit(self, sweep_dir: Path, spec: RunSpec, dependency_job_ids: Sequence[str]) -> str:
        """Submit one run (held), record its job id in status.json, release it; returns the id."""
        try:
            import submitit
        except ImportError as e:
            raise RuntimeError("the Slurm executor needs submitit (pip install submitit)") from e
        run_dir = Path(sweep_dir) / spec.run_id
        folder = self.log_folder(sweep_dir, spec.run_id)
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.max_num_timeout)
        ex.update_parameters(**self.sbatch_parameters(spec.run_id, dependency_job_ids))
        try:
            job = ex.submit(SlurmRunJob(self.job_fn, self.launcher), str(run_dir))
        except Exception as e:
            raise RuntimeError(f"sbatch refused run {spec.run_id}: {e}\n(submission script: "
                               f"{folder}/*_submission.sh; check partition/gpus/time/account)") from e
        job_id = str(job.job_id)
        log = Path(str(job.paths.stdout).replace("%t", "0"))  # task 0 (rank 0): stdout + stderr
        _link_log(run_dir, log)
        deps = f" after {','.join(dependency_job_ids)}" if dependency_job_ids else ""
        write_status(run_dir, "pending", slurm_job_id=job_id, attempts=0,
                     reason=f"queued as Slurm job {job_id}{deps}", slurm_log=str(log))
        try:
            subprocess.run(["scontrol", "release", job_id], check=True, capture_output=True, text=True,
                           timeout=_CMD_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            subprocess.run(["scancel", job_id], capture_output=True, timeout=_CMD_TIMEOUT_S)
            raise RuntimeError(f"could not release Slurm job {job_id} of run {spec.run_id}: "
                               f"{getattr(e, 'stderr', '') or e}") from e
        return job_id

    @staticmethod
    def _cancel(job_id: str) -> None:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=_CMD_TIMEOUT_S)

    def _live(self, sweep_dir: Path, runs: Sequence[RunSpec]) -> dict[str, tuple[str, str]]:
        jobs = [str(s.get("slurm_job_id")) for r in runs
                if (s := read_json(Path(sweep_dir) / r.run_id / STATUS_FILE) or {}).get("slurm_job_id")]
        live = _squeue(jobs)
        live.update({j: (st, "") for j, st in _sacct([j for j in jobs if j not in live]).items()})
        return live

    def run(self, sweep_dir: Path, runs: Sequence[RunSpec]) -> dict[str, str]:
        """Submit what is left to do; with ``wait`` block until it has ended. Returns run id ->
        ``done``/``submitted``/``pending``/``running`` (``done``/``failed``/``skipped`` with wait)."""
        sweep_dir = Path(sweep_dir)
        if shutil.which("sbatch") is None:
            raise RuntimeError("sbatch not found: the Slurm executor must run on a Slurm login node "
                               "(or start the local test cluster: bash scripts/slurm_cluster.sh start)")
        states: dict[str, str] = {}
        job_of: dict[str, str] = {}
        for spec, action, why in self.plan(sweep_dir, runs, self._live(sweep_dir, runs)):
            rid, run_dir = spec.run_id, sweep_dir / spec.run_id
            if action == "done":
                states[rid] = "done"
                continue
            old = str((read_json(run_dir / STATUS_FILE) or {}).get("slurm_job_id") or "")
            if action == "keep":
                job_of[rid] = old
                states[rid] = "running" if "running" in why else "pending"
                self._console_log(f"{rid}: {why}, left alone")
                continue
            if action == "resubmit":
                self._cancel(old)
            deps = [job_of[d] for d in spec.depends_on if d in job_of]
            job_of[rid] = self._submit(sweep_dir, spec, deps)
            states[rid] = "submitted"
            self._console_log(f"{rid}: submitted as Slurm job {job_of[rid]}"
                              f"{' (afterok ' + ','.join(deps) + ')' if deps else ''} -- {why}")
        if self.wait and job_of:
            try:
                states.update(self._wait(sweep_dir, job_of, runs))
            except KeyboardInterrupt:
                self._console_log(f"stopped waiting; the {len(job_of)} Slurm jobs go on (prunebench status "
                                  f"{sweep_dir} follows them; re-running the sweep does not submit them twice)")
                raise
        return states

    def _wait(self, sweep_dir: Path, job_of: dict[str, str], runs: Sequence[RunSpec]) -> dict[str, str]:
        """Poll until every job has ended; returns final run states and records failures."""
        deps = {r.run_id: r.depends_on for r in runs}
        final: dict[str, str] = {}
        unseen: dict[str, int] = {}
        self._console_log(f"waiting for {len(job_of)} Slurm jobs (poll every {self.poll_s:g}s)")
        while len(final) < len(job_of):
            live = _squeue([j for r, j in job_of.items() if r not in final])
            live.update({j: (st, "") for j, st in
                         _sacct([j for r, j in job_of.items() if r not in final and j not in live]).items()})
            for rid, jid in job_of.items():
                if rid in final:
                    continue
                run_dir = sweep_dir / rid
                state, reason = live.get(jid, ("", ""))
                if state in ACTIVE_STATES and not any(r in reason for r in DEAD_REASONS):
                    unseen.pop(rid, None)
                    continue
                if not state and not is_finished(run_dir):
                    unseen[rid] = unseen.get(rid, 0) + 1
                    if unseen[rid] < 3:  # not visible yet, or purged without accounting
                        continue
                final[rid] = self._finish(run_dir, rid, jid, state, reason, deps.get(rid, ()), final)
            if len(final) < len(job_of):
                _time.sleep(self.poll_s)
        return final

    def _finish(self, run_dir: Path, rid: str, jid: str, state: str, reason: str,
                deps: Sequence[str], final: Mapping[str, str]) -> str:
        if is_finished(run_dir):
            self._console_log(f"[green]done[/] {rid} (Slurm job {jid})")
            return "done"
        if state == "PENDING":  # a dependency failed: this job would wait forever
            self._cancel(jid)
            bad = [d for d in deps if final.get(d) in ("failed", "skipped")]
            why = f"dependency {bad[0]} {final[bad[0]]}" if bad else f"Slurm: {reason}"
            write_status(run_dir, "skipped", reason=why)
            self._console_log(f"[yellow]skipped[/] {rid}: {why}")
            return "skipped"
        status = read_json(run_dir / STATUS_FILE) or {}
        log = status.get("slurm_log") or str(run_dir / "slurm")
        if status.get("state") != "failed":  # killed (cancel, time-out, node failure) before it could say why
            write_status(run_dir, "failed", error=f"Slurm job {jid} ended {state or 'unknown'} without "
                         "metrics.json", slurm_state=state or None)
        self._console_log(f"[red]failed[/] {rid}: Slurm job {jid} {state or 'gone'} (log: {log})")
        return "failed"
