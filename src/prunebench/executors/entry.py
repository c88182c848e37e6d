"""The process of one local job: ``python -m prunebench.executors.entry RUN_DIR [--fn MODULE:FUNCTION]
[--launcher none|pytorch]``. Imports only what the job function needs; exits with
``EXIT_LOCKED`` (writing nothing) when a live process elsewhere holds the run's lock."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

from ..results import EXIT_LOCKED, RunLocked
from .base import DEFAULT_JOB_FN, call_job

DIE_WITH_PARENT = "PRUNEBENCH_DIE_WITH_PARENT"  # set: every job process dies with its parent
_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent(parent: int | None = None) -> None:
    """Have Linux SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``); exit at
    once if the parent (pid ``parent``, default the current one) is already gone. Safe in a
    ``preexec_fn``: libc was loaded at import. Elsewhere than Linux it does nothing."""
    if _prctl is None:
        return
    parent = os.getppid() if parent is None else parent
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--fn", default=DEFAULT_JOB_FN, help="job function, module:function")
    parser.add_argument("--launcher", default="none", choices=["none", "pytorch"])
    args = parser.parse_args(argv)
    if os.environ.get(DIE_WITH_PARENT):  # also the ranks torchrun starts (in sessions of their own)
        die_with_parent()
    try:
        call_job(args.fn, args.run_dir, args.launcher)
    except RunLocked as e:
        print(f"prunebench: {e}", file=sys.stderr)
        return EXIT_LOCKED
    return 0


if __name__ == "__main__":
    sys.exit(main())
