"""One question to Slurm: in what state are these jobs? ``squeue`` for the jobs slurmctld still
holds, ``sacct`` for older ones; the answer is structured (:class:`JobState`, :class:`Phase`).
Light on purpose: ``prunebench status`` imports it (lazily) for the live Slurm state."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

CMD_TIMEOUT_S = 60
# Slurm job states (squeue %T / sacct State) of a job that has not ended.
RUNNING_STATES = frozenset(
    {"RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"}
)
QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED"})
# Pending reason codes (squeue %r) that need action: the job will never start by itself.
NEVER_REASONS = frozenset({"DependencyNeverSatisfied"})
HELD_REASONS = frozenset({"JobHeldUser"})  # held by its submitter: a submission cut short before release


class Phase(Enum):
    """What a job's state means for a sweep."""

    QUEUED = "queued"  # pending; starts by itself
    HELD = "held"  # pending, held by its submitter
    NEVER = "never"  # pending, can never start (a dependency failed)
    RUNNING = "running"
    ENDED = "ended"  # completed, failed, cancelled, timed out, lost...


@dataclass(frozen=True)
class JobState:
    """One job's state: Slurm's state name and, while pending, its reason code."""

    job_id: str
    state: str  # e.g. PENDING, RUNNING, COMPLETED, TIMEOUT, CANCELLED
    reason: str = ""  # e.g. Dependency, Priority, JobHeldUser, DependencyNeverSatisfied

    @property
    def phase(self) -> Phase:
        if self.state in RUNNING_STATES:
            return Phase.RUNNING
        if self.state not in QUEUED_STATES:
            return Phase.ENDED
        if self.reason in NEVER_REASONS:
            return Phase.NEVER
        return Phase.HELD if self.state == "PENDING" and self.reason in HELD_REASONS else Phase.QUEUED

    @property
    def alive(self) -> bool:
        """The job runs, or waits to and can start."""
        return self.phase not in (Phase.ENDED, Phase.NEVER)


def _run(cmd: list[str]) -> str | None:
    """stdout of ``cmd``, or None when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def query(job_ids: Sequence[str]) -> dict[str, JobState]:
    """State per job id; ids Slurm does not know are left out; {} when the Slurm tools are absent."""
    ids = [str(j) for j in dict.fromkeys(job_ids) if j]
    if not ids:
        return {}
    out: dict[str, JobState] = {}
    # Unknown ids are left out (squeue fails only when it knows none of them).
    for line in (
        _run(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%r"]) or ""
    ).splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in ids:
            reason = parts[2].strip()
            out[parts[0]] = JobState(parts[0], parts[1].upper(), "" if reason == "None" else reason)
    rest = [j for j in ids if j not in out]
    if rest:
        text = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(rest)])
        for line in (text or "").splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 2 and parts[0] in rest and parts[1].strip():
                out[parts[0]] = JobState(parts[0], parts[1].split()[0].upper())  # "CANCELLED by 0"
    return out
