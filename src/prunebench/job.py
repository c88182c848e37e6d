"""One run: train -> COCO test -> latency/FLOPs -> keep-ratio statistics -> metrics.json.

Run as ``python -m prunebench.job RUN_DIR [--launcher none|pytorch|slurm]``. A run folder with a
checkpoint resumes from it; a finished run returns its metrics without redoing anything.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from mmengine.hooks import Hook

from .metrics import coco_metrics, keep_ratio_recorder, run_env
from .mmdet_config import GPUS_KEY, own_visualizer
from .results import (
    CONFIG_FILE,
    EXIT_LOCKED,
    LOG_FILE,
    METRICS_FILE,
    RUN_FILE,
    WORK_DIR,
    RunLocked,
    atomic_write_json,
    finite,
    is_finished,
    is_writer,
    read_json,
    record_exception,
    write_status,
    writer_lock,
)
from .spec import RunSpec
from .tracking.backends import detach_trackers
from .tracking.push import prepare_trackers, track_final


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))


def _check_world_size(cfg, config_file: Path, world: int) -> None:
    """``train_dataloader.batch_size`` is per GPU, so the job trains the configured total batch only
    on as many processes (``world``) as the file was written for. Raises RuntimeError otherwise."""
    written, per_gpu = cfg.get(GPUS_KEY, 1), cfg.train_dataloader.batch_size
    if written != world:
        raise RuntimeError(
            f"{config_file} is written for {written} GPU(s) ({GPUS_KEY}; {per_gpu} images per GPU), but "
            f"this job runs {world} training process(es): it would train with a total batch of "
            f"{per_gpu * world}, not {per_gpu * written}. Fix: run `prunebench sweep` with the GPUs per run "
            "you mean (--gpus-per-job; Slurm: gpus_per_job); it writes the file for them"
        )


class _StatusHook(Hook):
    """Mirrors training progress (iteration, latest loss, ETA) into status.json every few seconds."""

    priority = "VERY_LOW"

    def __init__(self, run_dir: Path, every_s: float = 2.0):
        self.run_dir, self.every_s, self._last, self._t0 = run_dir, every_s, 0.0, None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        now = time.time()
        if self._t0 is None:
            self._t0, self._start_iter = now, runner.iter
        done, total = runner.iter + 1, runner.max_iters
        if now - self._last < self.every_s and done < total:
            return
        self._last = now
        rate = (now - self._t0) / max(1, done - self._start_iter)
        loss = runner.message_hub.log_scalars.get("train/loss")  # this iteration's, as MMEngine logs it
        write_status(
            self.run_dir,
            "running",
            phase="train",
            iter=done,
            max_iters=total,
            eta_s=round(rate * (total - done), 1),
            **({"loss": round(float(loss.current()), 4)} if loss else {}),
        )


def run_job(run_dir: str | Path, launcher: str = "none") -> dict:
    """Train, test and benchmark one prepared run folder; write ``metrics.json``. Rank 0 holds the
    run's lock throughout: raises ``RunLocked`` (writing nothing) when a live process elsewhere
    runs it."""
    run_dir = Path(run_dir).resolve()
    with writer_lock(run_dir):
        return _run_locked(run_dir, launcher)


def _run_locked(run_dir: Path, launcher: str) -> dict:
    if is_finished(run_dir):
        return read_json(run_dir / METRICS_FILE)
    spec = RunSpec.from_json(read_json(run_dir / RUN_FILE) or {})
    rank0 = is_writer()
    if rank0:
        write_status(
            run_dir,
            "running",
            phase="setup",
            log=str(run_dir / LOG_FILE),
            pid=os.getpid(),
            started=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
    try:
        metrics = strict_metrics(_train_test_bench(run_dir, spec, launcher))
    except BaseException as e:
        if rank0:
            record_exception(run_dir, e, str(run_dir / LOG_FILE))
        raise
    if rank0:
        atomic_write_json(run_dir / METRICS_FILE, metrics)
        write_status(run_dir, "done", box_ap=metrics["box_ap"], mask_ap=metrics["mask_ap"])
    return metrics


def strict_metrics(metrics: dict) -> dict:
    """``metrics`` as strict JSON: each non-finite number becomes null and is named in a
    ``warnings`` list. Raises RuntimeError when the box AP itself is not a number (the run failed)."""
    clean, bad = finite(metrics)
    if clean.get("box_ap") is None:
        raise RuntimeError(
            f"COCO box AP is {metrics.get('box_ap')}: the model made no usable detections "
            f"(COCO metrics: {metrics.get('coco') or 'none'}). Fix: check train.log for a diverged "
            "loss (lower the lr or set schedule.clip_grad), then re-run the sweep"
        )
    if bad:
        clean["warnings"] = [f"{key} was not a finite number (written as null)" for key in bad]
    return clean


def load_run_config(run_dir: Path, spec: RunSpec, launcher: str):
    """The run's ``config.py`` as the job trains it: unchanged (batch per GPU, as written) but for
    its work_dir, launcher and resuming; checked against the job's world size."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(run_dir / CONFIG_FILE))
    cfg.work_dir = str(run_dir / WORK_DIR)
    cfg.launcher = launcher
    _check_world_size(cfg, run_dir / CONFIG_FILE, _world_size() if launcher != "none" else 1)
    checkpoint, skipped = resume_point(run_dir / WORK_DIR)
    if skipped and is_writer():
        note = f"resuming from {checkpoint.name if checkpoint else 'the start'}: " + "; ".join(skipped)
        print(f"prunebench: {note}", flush=True)
        write_status(run_dir, "running", phase="setup", note=note)
    if checkpoint is not None:  # resume this run (from its own folder, wherever it lies), not its parent
        cfg.resume, cfg.load_from = True, str(checkpoint)
    elif cfg.get("load_from") and spec.depends_on and not spec.dense_schedule.get("checkpoint"):
        # the parent this sweep trained, from its run folder (wherever the results folder lies);
        # a parent the grid names as a file (schedule.dense.checkpoint) is read where it is
        cfg.load_from = str(parent_checkpoint(run_dir, spec, Path(cfg.load_from).name))
    return cfg


def parent_checkpoint(run_dir: Path, spec: RunSpec, name: str) -> Path:
    """The dense parent's checkpoint ``name`` in the parent's folder beside this run (so a moved
    results folder uses its own files). Raises ParentCheckpointError, naming the parent's run id,
    the file and the fix, when it is missing or does not load."""
    parent = spec.depends_on[0]
    path = run_dir.parent / parent / WORK_DIR / name
    redo = f"`prunebench sweep GRID --results {run_dir.parent.parent} --redo {parent}`"
    if not path.is_file():
        raise ParentCheckpointError(
            f"the dense parent {parent} has no checkpoint {path}: run it first (`prunebench sweep` "
            f"runs it automatically), or re-train it with {redo}"
        )
    problem = unreadable(path)
    if problem:
        raise ParentCheckpointError(
            f"the checkpoint {path} of the dense parent {parent} does not load ({problem}). Fix: "
            f"re-train the parent with {redo} (GRID: your grid file; its finetunes follow)"
        )
    return path


class ParentCheckpointError(RuntimeError):
    """A finetune's dense parent has no usable checkpoint."""


def unreadable(path: Path) -> str | None:
    """Why ``torch.load`` cannot read the checkpoint ``path`` (weights only), or None when it can."""
    import torch

    from .checkpoint import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    try:
        torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # any damage: truncated zip, bad pickle, wrong file
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or ['no message'])[0][:160]}"
    return None


def resume_point(work_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest readable checkpoint of an interrupted run (None: start afresh) and, for each newer
    one skipped, why. The newest is the one ``last_checkpoint`` names, looked up by file name in
    ``work_dir`` itself, then the others by their iteration or epoch."""
    marker = work_dir / "last_checkpoint"
    if not marker.exists():
        return None, []
    named = work_dir / Path(marker.read_text().strip()).name
    others = sorted(
        (p for p in work_dir.glob("*.pth") if p != named and re.fullmatch(r"(iter|epoch)_\d+\.pth", p.name)),
        key=lambda p: int(p.stem.split("_")[1]),
        reverse=True,
    )
    skipped = []
    for path in [named, *others]:
        problem = unreadable(path) if path.is_file() else "missing"
        if problem is None:
            return path, skipped
        skipped.append(f"{path.name} unreadable ({problem})")
    return None, skipped


def _train_test_bench(run_dir: Path, spec: RunSpec, launcher: str) -> dict:
    from mmengine.runner import Runner

    import prunebench.models  # noqa: F401  (registers the models, allows MMEngine checkpoints)

    from .bench import FlopsRecorder, measure_run

    cfg = load_run_config(run_dir, spec, launcher)
    prepare_trackers(cfg)
    own_visualizer(cfg)
    runner = Runner.from_cfg(cfg)
    if is_writer():
        runner.register_hook(_StatusHook(run_dir), priority="VERY_LOW")
    t0 = time.time()
    if spec.trains:  # else evaluated as loaded: a checkpoint parent, an off-the-shelf cell
        runner.train()
    train_time = time.time() - t0
    detach_trackers(runner.visualizer)  # closed after training; the test loop would reopen them
    if is_writer():
        write_status(run_dir, "running", phase="test")
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    keep = keep_ratio_recorder(model.backbone)
    with FlopsRecorder(model) as flops:  # per val image: tokens per block, GFLOPs
        raw = runner.test()
    keep_stats = keep()
    bench_cfg = spec.bench
    if is_writer():
        write_status(run_dir, "running", phase="bench")
    model.eval()
    bench = measure_run(
        model,
        runner.test_dataloader.dataset,
        bench_cfg,
        run_dir,
        spec.depends_on[0] if spec.depends_on else None,
    )
    metrics = {
        "run_id": spec.run_id,
        "sweep": spec.sweep,
        "stage": spec.stage,
        "backbone": spec.backbone,
        "family": spec.backbone_args.get("family", "plain"),
        "selector_init": spec.backbone_args.get("selector_init"),  # None on a dense run
        "seed": spec.seed,
        "axes": spec.axes,
        **coco_metrics(raw),
        "latency_ms": bench["latency_ms"],
        "paired": bench["paired"],
        "flops_g": flops.summary("val"),
        "keep_ratio": keep_stats,
        "train_time_s": round(train_time, 1),
        "checkpoint": (  # relative to the run folder; a parent given as a file: that file
            f"{WORK_DIR}/{_last_checkpoint(cfg.work_dir)}" if spec.trains else cfg.load_from
        ),
        "trained": spec.trains,
        "env": run_env(),
    }
    if is_writer():
        track_final(run_dir, cfg, metrics)  # the grid's trackers get the final results
    return metrics


def _last_checkpoint(work_dir: str) -> str:
    marker = Path(work_dir) / "last_checkpoint"
    return Path(marker.read_text().strip()).name if marker.exists() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--launcher", default="none", choices=["none", "pytorch", "slurm"])
    args = parser.parse_args()
    try:
        run_job(args.run_dir, args.launcher)
    except RunLocked as e:
        print(f"prunebench: {e}", file=sys.stderr)
        sys.exit(EXIT_LOCKED)


if __name__ == "__main__":
    main()
