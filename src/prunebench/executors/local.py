"""Local executor: runs jobs as subprocesses in dependency order on N device slots."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ..results import (
    EXIT_LOCKED,
    LOG_FILE,
    STATUS_FILE,
    LockHolder,
    exit_reason,
    is_finished,
    lock_holder,
    read_json,
    record_failure,
    skip_reason,
    write_status,
)
from .base import DEFAULT_JOB_FN, Executor, load_job_fn
from .entry import DIE_WITH_PARENT, die_with_parent
from .progress import ProgressLines

if TYPE_CHECKING:
    from ..spec import RunSpec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalExecutor(Executor):
    """Runs each job in its own process (``python -m prunebench.executors.entry``), logging to
    ``train.log``.

    ``gpus`` (e.g. ``["0", "1", "2", "3"]``) gives the device slots, ``gpus_per_job`` GPUs per run
    (more than one -> torchrun with MMEngine's ``pytorch`` launcher); on CPU, ``max_parallel``
    runs at once. A failed run is recorded and the others go on; its dependents are skipped.
    A run locked by a live process elsewhere (another sweep) is waited for like a running one.
    Jobs die with this process (Linux), unless ``detach``: then they run on in their own session
    and a later sweep waits for them. On a terminal a live table shows the running jobs; other
    output gets a plain progress line per running job every ``progress_s`` seconds.
    """

    name = "local"

    def __init__(
        self,
        max_parallel: int = 1,
        gpus: Sequence[str] | None = None,
        gpus_per_job: int = 1,
        detach: bool = False,
        job_fn: str = DEFAULT_JOB_FN,
        console: Console | None = None,
        poll_s: float = 1.0,
        progress_s: float = 30.0,
    ):
        gpus = [str(g) for g in gpus or []]
        if gpus and (gpus_per_job < 1 or len(gpus) % gpus_per_job):
            raise ValueError(f"{len(gpus)} GPUs cannot be split into jobs of {gpus_per_job}")
        if job_fn != DEFAULT_JOB_FN:
            load_job_fn(job_fn)  # a bad reference fails here, not in every job
        self.slots = (
            [gpus[i : i + gpus_per_job] for i in range(0, len(gpus), gpus_per_job)]
            if gpus
            else [[] for _ in range(max(1, max_parallel))]
        )
        self.gpus_per_run = len(self.slots[0]) or 1
        self.detach, self.job_fn = detach, job_fn
        self.console = console or Console()
        self.poll_s = poll_s
        self.progress = ProgressLines(self.console, progress_s)

    def _command(self, run_dir: Path, slot: list[str]) -> list[str]:
        job = ["-m", "prunebench.executors.entry", str(run_dir), "--fn", self.job_fn]
        if len(slot) > 1:
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={len(slot)}",
                f"--master_port={_free_port()}",
                *job,
                "--launcher",
                "pytorch",
            ]
        return [sys.executable, *job]

    def run(self, sweep_dir: Path, runs: Sequence[RunSpec]) -> dict[str, str]:
        states: dict[str, str] = {}
        for spec in runs:
            if is_finished(sweep_dir / spec.run_id):
                states[spec.run_id] = "done"
        todo = [s for s in runs if s.run_id not in states]
        if len(todo) < len(runs):
            self.console.print(f"{len(runs) - len(todo)} finished runs skipped")
        free = list(range(len(self.slots)))
        running: dict[str, tuple[subprocess.Popen, int, float]] = {}
        elsewhere: dict[str, LockHolder] = {}  # runs another live process is running
        view = self._view(sweep_dir, runs, states, running, elsewhere)
        live = Live(view, console=self.console, refresh_per_second=2) if self.console.is_terminal else None
        try:
            with live or nullcontext():
                while todo or running or elsewhere:
                    self._reap(sweep_dir, states, running, free, elsewhere)
                    todo += self._check_elsewhere(sweep_dir, states, elsewhere, runs)
                    todo = self._start_ready(sweep_dir, todo, states, running, free, elsewhere)
                    if live:
                        live.update(self._view(sweep_dir, runs, states, running, elsewhere))
                    else:
                        self.progress.report(sweep_dir, [*running, *elsewhere])
                    if running or elsewhere:
                        time.sleep(self.poll_s)
        except KeyboardInterrupt:
            self._stop(sweep_dir, running)
            raise
        return states

    def _start_ready(self, sweep_dir, todo, states, running, free, elsewhere) -> list[RunSpec]:
        waiting, ready = [], []
        for spec in todo:
            run_dir = sweep_dir / spec.run_id
            bad = [d for d in spec.depends_on if states.get(d) in ("failed", "skipped")]
            if bad:
                states[spec.run_id] = "skipped"
                reason = skip_reason(sweep_dir / bad[0], states[bad[0]])
                if not lock_holder(run_dir):
                    write_status(run_dir, "skipped", reason=reason)
                self.console.log(f"[yellow]skipped[/] {spec.run_id}: {reason}")
            elif len(ready) < len(free) and all(states.get(d) == "done" for d in spec.depends_on):
                holder = lock_holder(run_dir)
                if holder:
                    self._wait_elsewhere(spec.run_id, holder, elsewhere)
                else:
                    ready.append(spec)
            else:
                waiting.append(spec)
        # CPU runs side by side share the cores: a run that starts alone gets all of them
        threads = max(1, (os.cpu_count() or 1) // max(1, len(running) + len(ready)))
        for spec in ready:
            slot = free.pop(0)
            run_dir = sweep_dir / spec.run_id
            env = dict(os.environ)
            if self.slots[slot]:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(self.slots[slot])
            else:
                env.setdefault("OMP_NUM_THREADS", str(threads))
            if self.detach:  # its own session: neither this process's end nor Ctrl-C reaches it
                tie = {"start_new_session": True}
                env.pop(DIE_WITH_PARENT, None)
            else:
                tie = {"preexec_fn": functools.partial(die_with_parent, os.getpid())}
                env[DIE_WITH_PARENT] = "1"
            with open(run_dir / LOG_FILE, "a") as log:
                proc = subprocess.Popen(
                    self._command(run_dir, self.slots[slot]),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    **tie,
                )
            running[spec.run_id] = (proc, slot, time.time())
            self.console.log(f"started {spec.run_id}")
        return waiting

    def _wait_elsewhere(self, run_id: str, holder: LockHolder, elsewhere: dict[str, LockHolder]) -> None:
        elsewhere[run_id] = holder
        self.console.log(f"[blue]running elsewhere[/] {run_id}: {holder}; waiting for it")

    def _check_elsewhere(self, sweep_dir, states, elsewhere, runs) -> list[RunSpec]:
        """Runs whose foreign holder let go: done, failed (as it recorded), or back to do here."""
        back = []
        for run_id in list(elsewhere):
            run_dir = sweep_dir / run_id
            if lock_holder(run_dir):
                continue
            del elsewhere[run_id]
            if is_finished(run_dir):
                states[run_id] = "done"
                self.console.log(f"[green]done[/] {run_id} (ran elsewhere)")
            elif (read_json(run_dir / STATUS_FILE) or {}).get("state") == "failed":
                states[run_id] = "failed"
                self.console.log(f"[red]failed[/] {run_id} (ran elsewhere; log: {run_dir / LOG_FILE})")
            else:  # it stopped unfinished: run it here, from its last checkpoint
                back += [s for s in runs if s.run_id == run_id]
        return back

    def _reap(self, sweep_dir, states, running, free, elsewhere) -> None:
        for run_id, (proc, slot, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[run_id]
            free.append(slot)
            run_dir = sweep_dir / run_id
            if proc.returncode == 0 and is_finished(run_dir):
                states[run_id] = "done"
                self.console.log(f"[green]done[/] {run_id} in {time.time() - t0:.0f}s")
                continue
            if proc.returncode == EXIT_LOCKED:  # another process took the run first
                self._wait_elsewhere(run_id, lock_holder(run_dir) or LockHolder(), elsewhere)
                continue
            states[run_id] = "failed"
            status = record_failure(
                run_dir,
                exit_reason(proc.returncode),
                traceback=_log_tail(run_dir / LOG_FILE),
                log=str(run_dir / LOG_FILE),
            )
            self.console.log(
                f"[red]failed[/] {run_id}: {status.get('error', '')} (log: {run_dir / LOG_FILE})"
            )

    def _stop(self, sweep_dir: Path, running) -> None:
        if self.detach:
            self.console.print(
                f"[yellow]interrupted[/]: {len(running)} detached jobs go on; re-run the same "
                "command to follow them and start the runs that wait for them"
            )
            return
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for run_id, (proc, _, _) in running.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if (read_json(sweep_dir / run_id / STATUS_FILE) or {}).get("state") in ("running", "failed"):
                write_status(sweep_dir / run_id, "pending", reason="interrupted; re-run the sweep to resume")
        self.console.print(
            f"[yellow]interrupted[/]: {len(running)} running jobs stopped; re-run the same command to resume"
        )

    def _view(self, sweep_dir, runs, states, running, elsewhere):
        counts = {s: sum(1 for v in states.values() if v == s) for s in ("done", "failed", "skipped")}
        away = f", [bold]{len(elsewhere)}[/] running elsewhere" if elsewhere else ""
        head = (
            f"[bold]{counts['done']}[/] done, [bold]{len(running)}[/] running{away}, "
            f"[red]{counts['failed']}[/] failed, {counts['skipped']} skipped, "
            f"{len(runs) - len(states) - len(running) - len(elsewhere)} waiting  ({len(runs)} runs)"
        )
        table = Table(show_header=True, box=None)
        for col in ("running", "phase", "iter", "ETA"):
            table.add_column(col)
        for run_id in [*running, *elsewhere]:
            st = read_json(sweep_dir / run_id / STATUS_FILE) or {}
            it = f"{st['iter']}/{st['max_iters']}" if "iter" in st else "-"
            eta = f"{st['eta_s']:.0f}s" if "eta_s" in st and st.get("phase") == "train" else "-"
            phase = st.get("phase", "-") + (" (elsewhere)" if run_id in elsewhere else "")
            table.add_row(run_id, phase, it, eta)
        return Group(head, table) if running or elsewhere else head
