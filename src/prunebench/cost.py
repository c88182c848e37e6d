"""What a study costs. ``study_size``: per stage, the runs, training iterations, images seen and
evaluations of a prepared sweep. ``estimate``: a few timed training iterations and test images of
each distinct model on this machine's device, and the forecast they give per run, per stage and in
total (GPU-hours for a Slurm grid's resources), written to ``forecast.json`` in the sweep folder.
``forecast_vs_actual``: the forecast beside the wall time of the runs that finished.

Torch and MMEngine are imported by ``estimate`` only (``status`` reads the forecast).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import CONFIG_FILE, atomic_write_json, read_json

FORECAST_FILE = "forecast.json"
STAGES = ("dense", "parent", "finetune", "off-the-shelf")
#: backbone settings that do not change a model's cost
_COSTLESS = ("pretrained", "selector_init", "selector_inference", "tau")


def stage_of(spec) -> str:
    """``dense`` (trained), ``parent`` (a dense checkpoint evaluated), ``finetune`` or ``off-the-shelf``."""
    if spec.stage == "dense":
        return "dense" if spec.trains else "parent"
    return "finetune" if spec.trains else "off-the-shelf"


@dataclass
class StageSize:
    stage: str
    runs: int = 0
    iters: int = 0
    images: int = 0
    evals: int = 0  # runs evaluated (each once on every val image, then timed)
    eval_images: int = 0


def _count_images(ann: Path, annotated: bool) -> int:
    coco = json.loads(ann.read_text())
    return len({a["image_id"] for a in coco["annotations"]}) if annotated else len(coco["images"])


def _data_sizes(cfg) -> tuple[int, int]:
    """(train images an epoch visits: those with an annotation, as MMDetection filters; val images)."""
    sizes = []
    for loader, annotated in (("train_dataloader", True), ("test_dataloader", False)):
        ds = cfg[loader]["dataset"]
        sizes.append(_count_images(Path(ds["data_root"]) / ds["ann_file"], annotated))
    return sizes[0], sizes[1]


def run_iterations(schedule: dict, batch: int, train_images: int) -> int:
    """Training iterations of a stage: its ``iters``, or ``epochs`` x batches per epoch."""
    if "iters" in schedule:
        return schedule["iters"]
    return schedule["epochs"] * math.ceil(train_images / batch)


def _configs(sweep) -> dict[str, Any]:
    from mmengine.config import Config

    return {s.run_id: Config.fromfile(str(sweep.sweep_dir / s.run_id / CONFIG_FILE)) for s in sweep.runs}


def study_size(sweep, configs: dict | None = None) -> tuple[list[StageSize], dict[str, int], int]:
    """Per-stage sizes of a prepared sweep, each run's training iterations and the val image count."""
    configs = configs or _configs(sweep)
    train_images, val_images = _data_sizes(next(iter(configs.values())))
    sizes = {s: StageSize(s) for s in STAGES}
    iters = {}
    for spec in sweep.runs:
        cfg = configs[spec.run_id]
        batch = cfg.train_dataloader.batch_size * cfg.get("train_gpus", 1)
        size = sizes[stage_of(spec)]
        iters[spec.run_id] = run_iterations(spec.schedule, batch, train_images) if spec.trains else 0
        size.runs += 1
        size.iters += iters[spec.run_id]
        size.images += iters[spec.run_id] * batch
        size.evals += 1
        size.eval_images += val_images
    return [s for s in sizes.values() if s.runs], iters, val_images


def size_lines(sizes: list[StageSize]) -> list[str]:
    """The study's size in words, one line per stage and a total."""
    total = StageSize(
        "total",
        *(sum(getattr(s, k) for s in sizes) for k in ("runs", "iters", "images", "evals", "eval_images")),
    )
    return [
        f"{s.stage:<13} {s.runs:>4} runs  {s.iters:>10,} training iterations  {s.images:>12,} images seen"
        f"  {s.evals:>4} evaluations ({s.eval_images:,} val images)"
        for s in [*sizes, total]
    ]


def model_key(spec) -> str:
    """Runs of one key train and test at one speed: same model, overrides and mixed precision."""
    args = {k: v for k, v in spec.backbone_args.items() if k not in _COSTLESS}
    return json.dumps([args, spec.overrides, bool(spec.schedule.get("amp"))], sort_keys=True, default=str)


# --- timing on this machine -------------------------------------------------------------------


def _startup_s() -> float:
    """Seconds a job process needs to start and import its libraries (measured once)."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import mmdet.models, mmengine.runner, prunebench.job, prunebench.models"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def time_model(cfg, work_dir: Path, iters: int = 5, test_batches: int = 2) -> dict:
    """Seconds per training iteration (median after one warm-up iteration), per test image and to
    build the runner, for the run config ``cfg``; trains ``iters`` iterations from fresh weights."""
    import torch
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    import prunebench.models  # noqa: F401

    from .mmdet_config import own_visualizer

    stamps: list[float] = []

    class _Stamp(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            stamps.append(time.perf_counter())

    cfg = copy.deepcopy(cfg)
    cfg.work_dir, cfg.load_from, cfg.resume = str(work_dir), None, False
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters + 1, val_interval=iters + 10)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = None
    cfg.log_processor = dict(by_epoch=False)
    cfg.log_level = "WARNING"  # the plan's output stays the plan's
    cfg.model.pop("distill", None)  # its teacher file may not exist yet (its cost is left out)
    own_visualizer(cfg)
    t0 = time.perf_counter()
    runner = Runner.from_cfg(cfg)
    build_s = time.perf_counter() - t0
    runner.register_hook(_Stamp(), priority="VERY_LOW")
    t0 = time.perf_counter()
    runner.train()
    stamps.insert(0, t0)
    steps = sorted(b - a for a, b in zip(stamps[1:], stamps[2:])) or [stamps[-1] - t0]
    model = runner.model
    model.eval()
    loader, seen, spent = runner.build_dataloader(cfg.test_dataloader), 0, 0.0
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i == test_batches:
                break
            t0 = time.perf_counter()
            model.test_step(batch)
            spent += time.perf_counter() - t0
            seen += len(batch["inputs"])
    return {"iter_s": steps[len(steps) // 2], "test_image_s": spent / max(1, seen), "build_s": build_s}


def estimate(sweep, console=None, iters: int = 5) -> dict:
    """Time each distinct model of a prepared sweep on this device and forecast every run: start-up
    + runner build + iterations x seconds per iteration + test images x seconds per image (the COCO
    test, the FLOP count over every val image and the timed bench images, twice for a finetune
    timed beside its parent). Writes and returns ``forecast.json``."""
    import tempfile

    import torch
    from rich.console import Console
    from rich.progress import Progress

    configs = _configs(sweep)
    sizes, iters_of, val_images = study_size(sweep, configs)
    models: dict[str, Any] = {}
    for spec in sweep.runs:
        models.setdefault(model_key(spec), spec.run_id)
    measured = {}
    screen = Console(file=sys.stdout, force_terminal=(console or Console()).is_terminal)  # not the redirect
    with Progress(console=screen, transient=True) as bar, tempfile.TemporaryDirectory() as tmp:
        task = bar.add_task("timing the job start-up", total=len(models) + 1)
        startup = _startup_s()
        bar.advance(task)
        for i, (key, run_id) in enumerate(models.items()):
            bar.update(task, description=f"timing model {i + 1}/{len(models)} ({run_id})")
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pycocotools' and MMEngine's chatter while building
                measured[key] = {"run": run_id, **time_model(configs[run_id], Path(tmp) / str(i), iters)}
            bar.advance(task)
    runs, stages = {}, dict.fromkeys((s.stage for s in sizes), 0.0)
    for spec in sweep.runs:
        m, bench = measured[model_key(spec)], spec.bench
        bench_images = bench.get("images", 1) * (bench.get("warmup", 0) + bench.get("repeats", 1))
        test_images = 2 * val_images + bench_images * (2 if spec.depends_on else 1)
        seconds = (
            startup + m["build_s"] + iters_of[spec.run_id] * m["iter_s"] + test_images * m["test_image_s"]
        )
        runs[spec.run_id] = round(seconds, 2)
        stages[stage_of(spec)] += seconds / 3600
    total = sum(stages.values())
    gpus = sweep.grid.slurm.get("gpus_per_job", 1)
    forecast = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "startup_s": round(startup, 2),
        "models": list(measured.values()),
        "runs": runs,
        "hours": {k: round(v, 4) for k, v in stages.items()},
        "total_hours": round(total, 4),
        # each run timed with its whole batch on one device: the GPU-hours of a job on N GPUs (the same
        # work split N ways, communication left out), and its wall time 1/N of that
        **({"slurm_gpu_hours": round(total, 4), "gpus_per_job": gpus} if sweep.grid.slurm else {}),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(sweep.sweep_dir / FORECAST_FILE, forecast)
    return forecast


def forecast_lines(forecast: dict) -> list[str]:
    """The forecast in words: the measured speeds, hours per stage and in total."""
    where = f"{forecast['device']}, {forecast['threads']} threads"
    lines = [f"measured on this machine ({where}); job start-up {forecast['startup_s']:.1f} s"]
    lines += [
        f"  model of {m['run']}: {m['iter_s']:.3f} s per training iteration, "
        f"{m['test_image_s']:.3f} s per test image"
        for m in forecast["models"]
    ]
    lines += [f"forecast {stage:<13} {h:8.3f} device-hours" for stage, h in forecast["hours"].items()]
    lines.append(f"forecast {'total':<13} {forecast['total_hours']:8.3f} device-hours ({where})")
    if "slurm_gpu_hours" in forecast:
        note = (
            "" if forecast["device"] == "cuda" else " (timed on a CPU: run `plan --estimate` on a GPU node)"
        )
        gpus = forecast["gpus_per_job"]
        lines.append(
            f"Slurm: {forecast['slurm_gpu_hours']:.3f} GPU-hours, {forecast['slurm_gpu_hours'] / gpus:.3f} "
            f"hours of jobs at {gpus} GPU(s) each{note}"
        )
    return lines


def wall_s(status: dict) -> float | None:
    """Seconds from a run's start to its last status update (its wall time once done)."""
    try:
        fmt = "%Y-%m-%dT%H:%M:%S"
        return time.mktime(time.strptime(status["updated"], fmt)) - time.mktime(
            time.strptime(status["started"], fmt)
        )
    except (KeyError, TypeError, ValueError):
        return None


def forecast_vs_actual(sweep_dir: Path, runs: list) -> str | None:
    """One line comparing the forecast with the wall time of the finished runs (None without a forecast)."""
    forecast = read_json(Path(sweep_dir) / FORECAST_FILE)
    if not forecast:
        return None
    pairs = [
        (forecast["runs"][r.run_id], wall)
        for r in runs
        if r.state == "done"
        and r.run_id in forecast.get("runs", {})
        and (wall := wall_s(r.status)) is not None
    ]
    if not pairs:
        return f"forecast {forecast['total_hours'] * 60:.1f} min in total; no finished run to compare yet"
    f, a = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return (
        f"forecast vs actual over {len(pairs)} finished runs: {f / 60:.1f} min forecast, {a / 60:.1f} min "
        f"actual (x{a / f:.2f}); whole study forecast {forecast['total_hours'] * 60:.1f} min"
    )


def plan_study(grid_path, results_root, estimate_cost: bool = False, console=None) -> dict | None:
    """``prunebench plan``: write every run folder, print the plan and the study's size, and with
    ``estimate_cost`` time the models and print (and write) the forecast. Returns the forecast."""
    from rich.console import Console

    from .sweep import prepare, show_plan

    console = console or Console()
    sweep = prepare(grid_path, results_root)
    show_plan(sweep, console)
    configs = _configs(sweep)
    console.print("[bold]study size[/]", highlight=False)
    for line in size_lines(study_size(sweep, configs)[0]):
        console.print(line, highlight=False)
    if not estimate_cost:
        console.print(
            f"nothing run; `--estimate` forecasts the device-hours. Configs under {sweep.sweep_dir}"
        )
        return None
    forecast = estimate(sweep, console)
    for line in forecast_lines(forecast):
        console.print(line, highlight=False)
    console.print(f"forecast written to {sweep.sweep_dir / FORECAST_FILE}", highlight=False)
    return forecast
