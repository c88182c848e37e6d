"""Time `prunebench report` and `prunebench status` over 1,000 synthetic run folders.

    python scripts/bench_report.py [--runs 1000]

Prints the wall time of each command run as a fresh process (interpreter start, imports,
scan, render; output to a pipe) and of the in-process scan/build/render steps.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tempfile
import time
from itertools import product
from pathlib import Path

from prunebench.axes import PRUNING_AXES, impossible

AXES = [
    cell
    for cell in (dict(zip(PRUNING_AXES, values)) for values in product(*PRUNING_AXES.values()))
    if not impossible(cell)
]
DENSE = dict.fromkeys(PRUNING_AXES)
LRS = (1e-4, 2e-4, 5e-4, 1e-3)


def write_runs(sweep: Path, n: int, seeds: bool) -> None:
    """``n`` run folders: dense + 12 pruned settings per (seed, lr), with ~3% failed, ~2% running,
    a few corrupt metrics and one bare folder. ``seeds``: 4 lrs x many seeds (the report
    aggregates over seeds), else seed 0 and a distinct lr per 13 runs (one table row per run)."""
    rng = random.Random(0)
    grid = product(range(1000), LRS) if seeds else ((0, 1e-4 * (1 + k)) for k in range(1000))
    settings = ((seed, lr, axes) for seed, lr in grid for axes in [DENSE, *AXES])
    for i, (seed, lr, axes) in zip(range(n), settings):
        run_id = f"r{i:04d}"
        d = sweep / run_id
        d.mkdir(parents=True)
        dense = axes is DENSE
        ident = {
            "run_id": run_id,
            "sweep": sweep.name,
            "stage": "dense" if dense else "finetune",
            "backbone": "deit-small",
            "seed": seed,
            "axes": {**axes, "optim_wrapper.optimizer.lr": lr},
        }
        (d / "run.json").write_text(json.dumps({**ident, "depends_on": [], "overrides": {}}))
        (d / "config.py").write_text("model = dict()\n")
        roll = rng.random()
        if roll < 0.03:
            status = {
                "state": "failed",
                "error": "Traceback...\nRuntimeError: CUDA out of memory",
                "log": str(d / "train.log"),
            }
        elif roll < 0.05:
            status = {"state": "running", "iter": 400, "max_iters": 1000, "eta_s": 900}
        else:
            status = {"state": "done"}
            box = 40 - (0 if dense else rng.uniform(0.2, 2.0))
            bb, full = (60.0, 100.0) if dense else (rng.uniform(35, 45), rng.uniform(70, 85))
            metrics = {
                **ident,
                "box_ap": box,
                "mask_ap": box - 4,
                "coco": {f"k{j}": 0.1 for j in range(12)},
                "latency_ms": {
                    "backbone": bb,
                    "full": full,
                    "device": "NVIDIA H100",
                    "dtype": "float16",
                    "threads": 16,
                    "source": "val images",
                    "input_size": [800, 1216],
                    "batch": 1,
                    "repeats": 50,
                    **{
                        f"{k}_stats": {"median": v, "mid50_mean": v, "p90": v * 1.05, "n": 50}
                        for k, v in (("backbone", bb), ("full", full))
                    },
                },
                "flops_g": {"backbone": 80.0, "full": 250.0},
                "keep_ratio": {"mean": 1.0 if dense else 0.5, "per_layer": [0.7] * 9},
                "env": {"torch": "2.9.1", "mmdet": "3.3.0"},
                "train_time_s": 3600.0,
            }
            if not dense and i % 2:  # half the finetunes carry the same-process paired timing
                metrics["paired"] = {
                    "dense_run_id": "dense",
                    "dense_latency_ms": {"backbone": 60.0, "full": 100.0},
                    "speedup": {"backbone": 60.0 / bb, "full": 100.0 / full},
                    "rounds": 5,
                }
            text = json.dumps(metrics)
            (d / "metrics.json").write_text(text[:40] if roll > 0.997 else text)  # a few corrupt
        (d / "status.json").write_text(json.dumps({**status, "updated": "2025-01-01T00:00:00"}))
    (sweep / "r9999-bare").mkdir()
    (sweep / "r9999-bare" / "config.py").write_text("")


def timed(cmd: list[str], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()
    from rich.console import Console

    from prunebench.report import build_report, print_table, to_csv
    from prunebench.results import scan_results
    from prunebench.status import print_status

    with tempfile.TemporaryDirectory() as tmp:
        cli = [sys.executable, "-c", "from prunebench.cli import app; app()"]
        for name, seeds in (("bench-seeds", True), ("bench-runs", False)):
            write_runs(Path(tmp) / name, args.runs, seeds)
        sweep = Path(tmp) / "bench-runs"
        print(f"{args.runs} run folders + 1 bare folder; best of 3, fresh process each, output to a pipe:")
        print(
            f"  prunebench report --paper (several seeds: mean ± std)    "
            f"{timed([*cli, 'report', str(Path(tmp) / 'bench-seeds'), '--paper']):6.3f} s"
        )
        cases = [("report (one row per run)", []), ("report --paper", ["--paper"])]
        cases += [
            (f"report --paper --format {f}", ["--paper", "--format", f])
            for f in ("csv", "json", "markdown", "latex")
        ]
        cases += [
            ("report --sort box_ap --where rate=dynamic", ["--sort", "box_ap", "--where", "rate=dynamic"]),
            ("status", None),
        ]
        for name, extra in cases:
            argv = [*cli, "status", str(sweep)] if extra is None else [*cli, "report", str(sweep), *extra]
            print(f"  prunebench {name:<46} {timed(argv):6.3f} s")
        t0 = time.perf_counter()
        runs = scan_results(sweep)
        t1 = time.perf_counter()
        report = build_report(sweep, paper=True)
        t2 = time.perf_counter()
        print_table(report, Console(file=io.StringIO(), width=200))
        t3 = time.perf_counter()
        to_csv(report)
        t4 = time.perf_counter()
        print_status(sweep, Console(file=io.StringIO(), width=200))
        t5 = time.perf_counter()
        print(
            f"in process: scan {len(runs)} runs {t1 - t0:.3f} s, build_report {t2 - t1:.3f} s "
            f"({len(report.rows)} rows, {len(report.effects)} effects, {len(report.not_done)} not done), "
            f"Rich table {t3 - t2:.3f} s, csv {t4 - t3:.3f} s, status {t5 - t4:.3f} s"
        )


if __name__ == "__main__":
    main()
