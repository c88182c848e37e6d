"""Timing and its statistics. Every call is timed alone: ``time.perf_counter`` on CPU, CUDA events
after a synchronize on a GPU. ``warmup`` untimed calls per timed function, then ``repeats``
rounds over all inputs that interleave the functions per input, so a change in machine load
hits all of them alike. Per part: median (the headline figure), mean of the middle 50 %, p90
and the number of timed calls. fp16/bf16 run under ``torch.autocast``; fp32 runs plain.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Optional

import torch

from ..axes import PRECISIONS

#: bench dtype -> autocast dtype (None: plain fp32).
DTYPES: dict[str, Optional[torch.dtype]] = dict(zip(PRECISIONS, (None, torch.float16, torch.bfloat16)))


def autocast(device: torch.device | str, dtype: str):
    """``torch.autocast`` to ``dtype`` (fp16 | bf16) on ``device``; fp32: no autocast."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[dtype])


def latency_stats(samples_ms: Sequence[float]) -> dict:
    """``median``, ``mid50_mean`` (mean of the middle 50 %), ``p90`` (nearest rank) and ``n``."""
    s = sorted(samples_ms)
    n = len(s)
    if not n:
        raise ValueError("no timed calls")
    return {
        "median": statistics.median(s),
        "mid50_mean": statistics.fmean(s[n // 4 : n - n // 4]),
        "p90": s[math.ceil(0.9 * n) - 1],
        "n": n,
    }


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """A function that runs ``fn`` and returns its wall time in ms (CUDA events on a GPU)."""
    if device.type != "cuda":

        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3

        return timed

    def timed_cuda(fn):
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return timed_cuda


@torch.no_grad()
def time_calls(
    fns: dict[Hashable, Sequence[Callable[[], Any]]], device: torch.device | str, warmup: int, repeats: int
) -> dict[Hashable, list[float]]:
    """ms of every timed call, per key. ``fns[key][i]`` runs input ``i`` (all keys have the same
    inputs). ``warmup`` untimed calls per key cycle through the inputs; then each of ``repeats``
    rounds calls every input once per key, keys interleaved per input."""
    timed = _timer(torch.device(device))
    for calls in fns.values():
        for j in range(warmup):
            calls[j % len(calls)]()
    out: dict[Hashable, list[float]] = {k: [] for k in fns}
    n = min(len(calls) for calls in fns.values())
    for _ in range(max(1, repeats)):
        for i in range(n):
            for key, calls in fns.items():
                out[key].append(timed(calls[i]))
    return out
