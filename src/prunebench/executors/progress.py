"""Progress as plain lines, for output that is not a terminal (CI, ``nohup``, a Slurm log): one
line per running job at least every ``every_s`` seconds and whenever its phase changes."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..results import Run, detail, load_run


def progress_line(run: Run) -> str:
    """``run id  stage  phase  iter i/n (p%)  ETA t  loss x`` of a running job, from its
    status.json: what ``prunebench status`` shows, plus the latest training loss."""
    loss = run.status.get("loss")
    parts = [run.run_id, run.stage or "-", detail(run)]
    if isinstance(loss, (int, float)) and run.status.get("phase") == "train":
        parts.append(f"loss {loss:.4f}")
    return "  ".join(parts)


class ProgressLines:
    """Prints (``console.print``, no markup) a timed :func:`progress_line` for each job passed to
    :meth:`report` whose status is ``running``: when it is first seen so, when its phase changed
    and when ``every_s`` seconds have passed since its last line."""

    def __init__(self, console: Any, every_s: float = 30.0):
        self.console, self.every_s = console, every_s
        self._last: dict[str, tuple[float, Any]] = {}  # run id -> (time of its last line, its phase)

    def report(self, sweep_dir: Path, run_ids: Iterable[str]) -> None:
        now, shown = time.monotonic(), {}
        for run_id in run_ids:
            run = load_run(Path(sweep_dir) / run_id)
            if run.state != "running":  # still starting, or just ended (the executor says so)
                continue
            phase = run.status.get("phase")
            last = self._last.get(run_id)
            if last is None or phase != last[1] or now - last[0] >= self.every_s:
                line = f"[{time.strftime('%H:%M:%S')}] {progress_line(run)}"
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
                last = (now, phase)
            shown[run_id] = last
        self._last = shown  # jobs no longer running are forgotten
