"""Cluster resources of a sweep's Slurm jobs: one dataclass, filled from the grid's ``slurm:``
section and the command line (which wins), checked before anything is submitted."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


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
        raise ValueError(
            f"invalid Slurm time {value!r}; use minutes or one of MM, MM:SS, HH:MM:SS, "
            "D-HH, D-HH:MM, D-HH:MM:SS (e.g. 24:00:00 or 1-12:00:00)"
        )
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
            raise ValueError(
                f"invalid sbatch argument {arg!r}; give long options such as "
                "--constraint=a100 or --exclusive (or a dict)"
            )
        out[m.group(1)] = True if m.group(2) is None else m.group(2)
    return out


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of every job of a sweep. ``gpus_per_job`` GPUs on one node (0: a CPU job with one
    task; N > 0: N tasks of one GPU each); ``time`` in minutes; ``mem`` per node in Slurm's
    units; ``sbatch_args`` extra sbatch options; ``log_dir`` moves the Slurm logs out of the run
    folders. Build it with :meth:`create` (raw values, checked) or :meth:`merge`."""

    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None
    time: int = 1440
    account: str | None = None
    qos: str | None = None
    sbatch_args: dict[str, Any] = field(default_factory=dict)
    log_dir: Path | None = None
    signal_delay_s: int = 120
    max_num_timeout: int = 3

    @classmethod
    def create(cls, **raw: Any) -> SlurmOptions:
        """Options from raw values (YAML or command line); None means the default. Raises
        ValueError naming the option at fault."""
        unknown = sorted(set(raw) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown Slurm option(s) {', '.join(unknown)}; known: {', '.join(cls.names())}")
        raw = {k: v for k, v in raw.items() if v is not None}
        out: dict[str, Any] = dict(raw)
        out["gpus_per_job"] = _count("gpus_per_job", raw.get("gpus_per_job", 0), 0)
        if "cpus_per_task" in raw:
            out["cpus_per_task"] = _count("cpus_per_task", raw["cpus_per_task"], 1)
        for key in ("signal_delay_s", "max_num_timeout"):
            if key in raw:
                out[key] = _count(key, raw[key], 0)
        out["time"] = parse_time(raw.get("time", "24:00:00"))
        out["mem"] = parse_mem(raw.get("mem"))
        out["sbatch_args"] = parse_sbatch_args(raw.get("sbatch_args"))
        if "log_dir" in raw:
            out["log_dir"] = Path(raw["log_dir"])
        for key in ("partition", "account", "qos"):
            if key in raw:
                out[key] = str(raw[key])
        return cls(**out)

    @classmethod
    def merge(cls, grid_section: Mapping[str, Any] | None, command_line: Mapping[str, Any]) -> SlurmOptions:
        """The grid's ``slurm:`` section with the command line's set (non-None) values on top."""
        given = {k: v for k, v in command_line.items() if v is not None}
        return cls.create(**{**(grid_section or {}), **given})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def tasks(self) -> int:
        """Processes of one job: one per GPU; a CPU job is one."""
        return max(1, self.gpus_per_job)

    @property
    def launcher(self) -> str:
        """MMEngine launcher of each task: ``slurm`` (distributed, one task per GPU) or ``none``."""
        return "slurm" if self.gpus_per_job > 0 else "none"

    def sbatch_parameters(self, run_id: str, dependency_job_ids: Sequence[str] = ()) -> dict[str, Any]:
        """Keyword arguments for ``submitit.SlurmExecutor.update_parameters`` of one run."""
        params: dict[str, Any] = {
            "job_name": run_id,
            "time": self.time,
            "nodes": 1,
            "ntasks_per_node": self.tasks,
            "signal_delay_s": self.signal_delay_s,
            "stderr_to_stdout": True,
            # --requeue: preempted jobs go back to the queue; --hold: released once status.json
            # records the job id (so the submitter never overwrites what the job wrote).
            "additional_parameters": {"requeue": True, "hold": True, **self.sbatch_args},
        }
        if self.gpus_per_job:
            params["gpus_per_node"] = self.gpus_per_job
        optional = {
            "partition": self.partition,
            "cpus_per_task": self.cpus_per_task,
            "mem": self.mem,
            "account": self.account,
            "qos": self.qos,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        if dependency_job_ids:
            params["dependency"] = "afterok:" + ":".join(map(str, dependency_job_ids))
        return params

    def log_folder(self, sweep_dir: Path, run_id: str) -> Path:
        """Where a run's Slurm logs, submission scripts and pickles go."""
        return (self.log_dir / run_id) if self.log_dir else Path(sweep_dir) / run_id / "slurm"
