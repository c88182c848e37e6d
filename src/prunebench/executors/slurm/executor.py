"""Slurm executor (submitit): one Slurm job per run; dense -> finetune as ``afterok`` dependencies.

Decisions on every call of :meth:`SlurmExecutor.run` (so re-running a sweep is always safe):

- a finished run is skipped;
- a run whose recorded Slurm job (``status.json: slurm_job_id``) has not ended is left alone,
  unless it can never start (a dependency failed; held by a submission cut short) or waits on a
  dependency that is resubmitted now: then it is cancelled and resubmitted;
- a run locked by a live process elsewhere (e.g. a local sweep) is left alone, and so are the
  runs that depend on it (until a later sweep);
- anything else (never submitted, failed, cancelled, lost) is submitted; a finetune whose dense
  run is finished is submitted without a dependency.
"""

from __future__ import annotations

import os
import shutil
import time as _time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...results import (
    LOG_FILE,
    STATUS_FILE,
    is_finished,
    lock_holder,
    read_json,
    record_failure,
    skip_reason,
    write_status,
)
from ..base import DEFAULT_JOB_FN, Executor, load_job_fn
from ..progress import ProgressLines
from . import queue
from .options import SlurmOptions
from .queue import JobState, Phase
from .submitter import SubmititSubmitter, Submitter

if TYPE_CHECKING:
    from ...spec import RunSpec


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


def _job_of(run_dir: Path) -> str:
    return str((read_json(Path(run_dir) / STATUS_FILE) or {}).get("slurm_job_id") or "")


class SlurmExecutor(Executor):
    """Submits each run as one Slurm job (:class:`~.job.SlurmRunJob`) with ``options``' resources.

    Logs: ``<run_dir>/slurm/<jobid>_0_log.out`` (or under ``options.log_dir``), linked as
    ``<run_dir>/train.log``; submission scripts and pickles sit next to it. ``wait=True`` blocks
    until every submitted job has ended (printing a progress line per running job every
    ``progress_s``) and returns final states. ``query`` (job ids -> state)
    and ``submitter`` replace the real cluster (tests).
    """

    name = "slurm"

    def __init__(
        self,
        options: SlurmOptions | None = None,
        wait: bool = False,
        poll_s: float = 10.0,
        progress_s: float = 30.0,
        job_fn: str = DEFAULT_JOB_FN,
        console: Any = None,
        query: Callable[[Sequence[str]], Mapping[str, JobState]] | None = None,
        submitter: Submitter | None = None,
    ):
        if job_fn != DEFAULT_JOB_FN:
            load_job_fn(job_fn)  # a bad reference fails here, not on the node
        self.options = options or SlurmOptions()
        self.gpus_per_run = self.options.tasks
        self.wait, self.poll_s, self.progress_s, self.job_fn = wait, poll_s, progress_s, job_fn
        self._console, self._query, self._submitter = console, query or queue.query, submitter

    def plan(
        self, sweep_dir: Path, runs: Sequence[RunSpec], live: Mapping[str, JobState]
    ) -> list[tuple[RunSpec, str, str]]:
        """(spec, action, why) per run, dependencies first. ``live``: job id -> state. Actions:
        ``done`` (finished), ``keep`` (its job has not ended), ``elsewhere`` (locked by a live
        process elsewhere), ``later`` (depends on such a run), ``submit``, ``resubmit`` (cancel
        its queued job, submit again)."""
        sweep_dir = Path(sweep_dir)
        ordered = _order(runs)
        ids = {r.run_id for r in ordered}
        out: list[tuple[RunSpec, str, str]] = []
        fresh: set[str] = set()  # runs that get a new job now
        away: set[str] = set()  # runs left to a process elsewhere, and their dependents
        for spec in ordered:
            run_dir = sweep_dir / spec.run_id
            if is_finished(run_dir):
                out.append((spec, "done", "finished"))
                continue
            for dep in spec.depends_on:
                if dep not in ids and not is_finished(sweep_dir / dep):
                    raise ValueError(
                        f"run {spec.run_id} depends on {dep}, which is neither finished "
                        "nor part of this submission; run the whole sweep"
                    )
            job = _job_of(run_dir)
            state = live.get(job) if job else None
            phase = state.phase if state else Phase.ENDED
            holder = lock_holder(run_dir) if phase is Phase.ENDED else None
            blocked = [d for d in spec.depends_on if d in away]
            if holder:
                out.append((spec, "elsewhere", f"running elsewhere ({holder})"))
                away.add(spec.run_id)
                continue
            if blocked:
                out.append(
                    (
                        spec,
                        "later",
                        f"waits for {blocked[0]}, running elsewhere; re-run the sweep once it has finished",
                    )
                )
                away.add(spec.run_id)
                continue
            if phase is Phase.NEVER:
                out.append((spec, "resubmit", f"job {job} can never start ({state.reason})"))
            elif phase is Phase.HELD:  # a submission cut short before its release
                out.append((spec, "resubmit", f"job {job} held"))
            elif phase is not Phase.ENDED:
                renewed = [d for d in spec.depends_on if d in fresh]
                if state.state == "PENDING" and renewed:
                    out.append((spec, "resubmit", f"job {job} waits on the old job of {renewed[0]}"))
                else:
                    out.append((spec, "keep", f"job {job} {state.state.lower()}"))
                    continue
            else:
                why = (
                    f"job {job} ended {state.state if state else 'unknown to Slurm'}"
                    if job
                    else "not submitted yet"
                )
                out.append((spec, "submit", why))
            fresh.add(spec.run_id)
        return out

    # --- Slurm side effects

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console()
        return self._console

    def _log(self, msg: str) -> None:
        self.console.log(msg)

    def _submit(self, submitter: Submitter, sweep_dir: Path, spec: RunSpec, deps: Sequence[str]) -> str:
        """Submit one run (held), record its job id in status.json, release it; returns the id."""
        from .job import SlurmRunJob

        run_dir = Path(sweep_dir) / spec.run_id
        job_id, log = submitter.submit(
            run_dir, spec.run_id, SlurmRunJob(self.job_fn, self.options.launcher), deps
        )
        _link_log(run_dir, log)
        after = f" after {','.join(deps)}" if deps else ""
        write_status(
            run_dir,
            "pending",
            slurm_job_id=job_id,
            attempts=0,
            reason=f"queued as Slurm job {job_id}{after}",
            slurm_log=str(log),
        )
        try:
            submitter.release(job_id)
        except RuntimeError as e:
            submitter.cancel(job_id)
            raise RuntimeError(f"run {spec.run_id}: {e}") from e
        return job_id

    def run(self, sweep_dir: Path, runs: Sequence[RunSpec]) -> dict[str, str]:
        """Submit what is left to do; with ``wait`` block until it has ended. Returns run id ->
        ``done``/``submitted``/``pending``/``running`` (``done``/``failed``/``skipped`` with wait)."""
        sweep_dir = Path(sweep_dir)
        submitter = self._submitter
        if submitter is None:
            if shutil.which("sbatch") is None:
                raise RuntimeError(
                    "sbatch not found: the Slurm executor must run on a Slurm login node "
                    "(or start the local test cluster: bash scripts/slurm_cluster.sh start)"
                )
            submitter = SubmititSubmitter(self.options, sweep_dir)
        states: dict[str, str] = {}
        job_of: dict[str, str] = {}
        live = self._query([j for r in runs if (j := _job_of(sweep_dir / r.run_id))])
        for spec, action, why in self.plan(sweep_dir, runs, live):
            rid = spec.run_id
            if action == "done":
                states[rid] = "done"
            elif action in ("elsewhere", "later"):
                states[rid] = "running" if action == "elsewhere" else "pending"
                self._log(f"{rid}: {why}, left alone")
            elif action == "keep":
                job_of[rid] = _job_of(sweep_dir / rid)
                states[rid] = "running" if live[job_of[rid]].phase is Phase.RUNNING else "pending"
                self._log(f"{rid}: {why}, left alone")
            else:
                if action == "resubmit":
                    submitter.cancel(_job_of(sweep_dir / rid))
                deps = [job_of[d] for d in spec.depends_on if d in job_of]
                job_of[rid] = self._submit(submitter, sweep_dir, spec, deps)
                states[rid] = "submitted"
                self._log(
                    f"{rid}: submitted as Slurm job {job_of[rid]}"
                    f"{' (afterok ' + ','.join(deps) + ')' if deps else ''} -- {why}"
                )
        if self.wait and job_of:
            try:
                states.update(self._wait(sweep_dir, job_of, runs, submitter))
            except KeyboardInterrupt:
                self._log(
                    f"stopped waiting; the {len(job_of)} Slurm jobs go on (prunebench status "
                    f"{sweep_dir} follows them; re-running the sweep does not submit them twice)"
                )
                raise
        return states

    def _wait(
        self, sweep_dir: Path, job_of: dict[str, str], runs: Sequence[RunSpec], submitter: Submitter
    ) -> dict[str, str]:
        """Poll until every job has ended, with a progress line per running job every
        ``progress_s``; returns final run states and records failures."""
        deps = {r.run_id: r.depends_on for r in runs}
        final: dict[str, str] = {}
        unseen: dict[str, int] = {}
        progress = ProgressLines(self.console, self.progress_s)
        self._log(f"waiting for {len(job_of)} Slurm jobs (poll every {self.poll_s:g}s)")
        while len(final) < len(job_of):
            live = self._query([j for r, j in job_of.items() if r not in final])
            for rid, jid in job_of.items():
                if rid in final:
                    continue
                run_dir = sweep_dir / rid
                state = live.get(jid)
                if state is not None and state.alive:
                    unseen.pop(rid, None)
                    continue
                if state is None and not is_finished(run_dir):
                    unseen[rid] = unseen.get(rid, 0) + 1
                    if unseen[rid] < 3:  # not visible yet, or purged without accounting
                        continue
                final[rid] = self._finish(run_dir, rid, jid, state, deps.get(rid, ()), final, submitter)
            if len(final) < len(job_of):
                progress.report(sweep_dir, [r for r in job_of if r not in final])
                _time.sleep(self.poll_s)
        return final

    def _finish(
        self,
        run_dir: Path,
        rid: str,
        jid: str,
        state: JobState | None,
        deps: Sequence[str],
        final: Mapping[str, str],
        submitter: Submitter,
    ) -> str:
        if is_finished(run_dir):
            self._log(f"[green]done[/] {rid} (Slurm job {jid})")
            return "done"
        if state is not None and state.phase is Phase.NEVER:  # a dependency failed: it would wait forever
            submitter.cancel(jid)
            bad = [d for d in deps if final.get(d) in ("failed", "skipped")]
            why = skip_reason(run_dir.parent / bad[0], final[bad[0]]) if bad else f"Slurm: {state.reason}"
            write_status(run_dir, "skipped", reason=why)
            self._log(f"[yellow]skipped[/] {rid}: {why}")
            return "skipped"
        name = state.state if state else None
        status = record_failure(
            run_dir, f"Slurm job {jid} ended {name or 'unknown'} without metrics.json", slurm_state=name
        )
        log = status.get("slurm_log") or str(run_dir / "slurm")
        self._log(f"[red]failed[/] {rid}: Slurm job {jid} {name or 'gone'} (log: {log})")
        return "failed"
