"""One evaluation: the detector built and loaded strictly, MMDetection's test loop (progress bar over
the val images), the achieved keep ratio, latency and FLOPs as a job times them, the run folder."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ..axes import BENCH_DEFAULTS, PRUNING_AXES
from ..results import (
    CONFIG_FILE,
    METRICS_FILE,
    RUN_FILE,
    WORK_DIR,
    atomic_write_json,
    is_finished,
    read_json,
    record_exception,
    run_lock,
    write_status,
)
from ..zoo import EVAL_SOURCE
from .inputs import (
    EvalData,
    EvalError,
    check_classes,
    eval_backbone,
    eval_data,
    model_record,
    read_checkpoint,
    run_id,
)

EVAL_SWEEP = "eval"  # the folder under the results root
EVAL_LOG = "eval.log"  # the COCO evaluation's printed output
RUN_IDENTITY = ("run_id", "sweep", "stage", "backbone", "seed", "axes")  # first in metrics.json, as a job's


def _progress_hook(progress, task):
    from mmengine.hooks import Hook

    class ValProgress(Hook):
        """Advances a progress bar by the images of each test batch."""

        def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            progress.advance(task, len(outputs or ()))

    return ValProgress()


def run_eval(
    checkpoint: Path,
    data: str = "synthetic",
    results: Path = Path("results"),
    name: str = EVAL_SWEEP,
    cell: str | None = None,
    arch: str | None = None,
    keep_ratios: list[float] | None = None,
    rate: str | None = None,
    selector_inference: str = "argmax",
    seed: int = 0,
    bench: dict | None = None,
    console=None,
) -> dict:
    """Evaluate ``checkpoint`` into ``results/name/<run id>/``; returns its metrics (those of an
    earlier identical evaluation when it is finished). Raises EvalError / ConversionError before
    anything is written when the input is bad."""
    from rich.console import Console

    from ..spec import RunSpec

    console = console or Console(highlight=False)
    checkpoint = Path(checkpoint).expanduser().resolve()
    state, meta = read_checkpoint(checkpoint)
    record = model_record(state, meta, checkpoint, cell, arch)
    backbone = eval_backbone(record, keep_ratios, rate, selector_inference)
    dataset = eval_data(data)
    check_classes(meta, record, dataset, checkpoint)
    bench = {**BENCH_DEFAULTS, "dtype": "fp32", **(bench or {})}
    pruned = bool(backbone.get("prune_layers"))
    axes = {
        **{a: backbone.get(a) if pruned else None for a in PRUNING_AXES},
        "family": backbone["family"],
        "source": EVAL_SOURCE,
        "selector_inference": selector_inference if pruned else None,
        "keep_ratios": ",".join(f"{r:g}" for r in keep_ratios) if keep_ratios else None,
    }
    stat = checkpoint.stat()
    identity = dict(
        checkpoint=[str(checkpoint), stat.st_size, stat.st_mtime_ns],
        data=[str(dataset.root), dataset.data.get("val_ann"), dataset.data.get("img_scale")],
        backbone=backbone,
        seed=seed,
        bench=bench,
    )
    run_dir = (
        Path(results).expanduser().resolve() / name / run_id(checkpoint, axes, seed, bench["dtype"], identity)
    )
    if is_finished(run_dir):
        console.print(f"already evaluated: {run_dir} (delete it to evaluate again)")
        return read_json(run_dir / METRICS_FILE)
    cfg = eval_config(backbone, record["num_classes"], dataset, checkpoint, run_dir, seed)
    if bench["dtype"] == "fp16":  # for MMDetection's tools/test.py on a GPU: the official fp16 test
        cfg.test_cfg = dict(type="TestLoop", fp16=True)
    model = _load_model(cfg, state, checkpoint)
    spec = RunSpec(
        run_id=run_dir.name,
        sweep=run_dir.parent.name,
        stage="finetune" if pruned else "dense",
        backbone=backbone["arch"],
        seed=seed,
        axes=axes,
        bench=bench,
        backbone_args=backbone,
    )
    as_released = not axes["keep_ratios"] and backbone.get("rate") == record["backbone"].get("rate")
    about = {
        "checkpoint": str(checkpoint),
        "zoo": record.get("zoo"),
        "as_released": as_released,
        "converted_from": record.get("converted_from"),
        "data": {"root": str(dataset.root), "ann_file": str(dataset.ann_file)},
        **{k: axes[k] for k in ("selector_inference", "keep_ratios")},
        "dtype": bench["dtype"],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        if is_finished(run_dir):  # another evaluation finished it while this one set up
            return read_json(run_dir / METRICS_FILE)
        metrics = _run(cfg, model, spec, about, run_dir)
    _summary(metrics, run_dir, console)
    return metrics


def eval_config(
    backbone: dict, num_classes: int, dataset: EvalData, checkpoint: Path, run_dir: Path, seed: int
):
    """The evaluation's MMDetection config: the checkpoint's detector, the data's test loader and
    CocoMetric (box and segm), nothing to train."""
    from ..convert import detector_config
    from ..mmdet_config import set_data

    cfg = detector_config(backbone, num_classes)
    set_data(cfg, dataset.data, dataset.root, dataset.classes)
    for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler", "auto_scale_lr"):
        cfg[key] = None
    cfg.update(load_from=str(checkpoint), work_dir=str(run_dir / WORK_DIR), randomness=dict(seed=seed))
    return cfg


def _load_model(cfg, state: dict, checkpoint: Path):
    from ..convert import build_detector, load_strictly

    try:
        model = build_detector(cfg)
    except ValueError as e:  # the backbone's own checks of the budget and cell
        raise EvalError(f"{checkpoint}: {e}") from None
    load_strictly(model, state, checkpoint)
    return model


def _run(cfg, model, spec, about: dict, run_dir: Path) -> dict:
    """Write the run folder, test and time; ``metrics.json`` at the end, status throughout."""
    from ..mmdet_config import dump_config

    atomic_write_json(run_dir / RUN_FILE, spec.to_json())
    dump_config(
        cfg.to_dict(),
        run_dir / CONFIG_FILE,
        f"MMDetection config of eval run {spec.run_id}: {Path(about['checkpoint']).name} on "
        f"{about['data']['ann_file']}, written by prunebench eval.\n"
        f"Test: python tools/test.py {run_dir / CONFIG_FILE} {about['checkpoint']}",
    )
    log = str(run_dir / EVAL_LOG)
    write_status(run_dir, "running", phase="test", log=log, started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    try:
        metrics = _test_and_time(cfg, model, spec, run_dir)
    except BaseException as e:
        record_exception(run_dir, e, log)
        raise
    metrics["eval"] = {**about, **metrics["eval"]}
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    write_status(run_dir, "done", box_ap=metrics["box_ap"], mask_ap=metrics["mask_ap"])
    return metrics


def tester(cfg, model, work_dir: str):
    """An MMEngine Runner that only tests ``model`` with ``cfg``'s test loader and metric."""
    from mmengine.runner import Runner

    return Runner(
        model=model,
        work_dir=work_dir,
        test_dataloader=cfg.test_dataloader,
        test_evaluator=cfg.test_evaluator,
        # the precision is the caller's (``_in_precision``): MMEngine's own fp16 TestLoop, written for
        # tools/test.py, autocasts to bf16 on a CPU, which MMCV's NMS cannot take
        test_cfg={**cfg.test_cfg, "fp16": False},
        env_cfg=cfg.env_cfg,
        default_scope=cfg.default_scope,
        randomness=cfg.randomness,
        log_level="WARNING",
        cfg=cfg,
    )


def _test_and_time(cfg, model, spec, run_dir: Path) -> dict:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..bench import FlopsRecorder, measure_run
    from ..metrics import coco_metrics, keep_ratio_recorder, run_env

    runner = tester(cfg, model, cfg.work_dir)
    model = runner.model
    keep = keep_ratio_recorder(model.backbone)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    t0 = time.time()
    with (
        open(run_dir / EVAL_LOG, "a") as log,
        contextlib.redirect_stdout(log),  # pycocotools' prints
        Progress(*columns, console=Console(stderr=True)) as progress,
    ):
        images = len(runner.test_dataloader.dataset)
        task = progress.add_task(f"COCO test of {images} val images", total=images)
        runner.register_hook(_progress_hook(progress, task), priority="VERY_LOW")
        torch.manual_seed(spec.seed)  # the Gumbel samples of selector_inference=gumbel
        # on a GPU the whole detector in the run's precision, as the official test's wrap_fp16_model
        # (inside MMEngine's TestLoop, whose own autocast is bf16-only on CPUs); on a CPU in fp32:
        # MMCV's CPU NMS has no half kernel
        device = next(model.parameters()).device
        test_dtype = spec.bench["dtype"] if device.type == "cuda" else "fp32"
        model.test_step = _in_precision(model.test_step, device, test_dtype)
        try:
            with FlopsRecorder(model) as flops:  # per val image: tokens per block, GFLOPs
                raw = runner.test()
        finally:
            del model.test_step
    test_time = time.time() - t0
    keep_stats = keep()
    write_status(run_dir, "running", phase="bench", log=str(run_dir / EVAL_LOG))
    model.eval()
    timed = measure_run(model, runner.test_dataloader.dataset, spec.bench, run_dir, None)
    return {
        **{k: getattr(spec, k) for k in RUN_IDENTITY},
        "family": spec.backbone_args["family"],
        "source": EVAL_SOURCE,
        **coco_metrics(raw),
        "latency_ms": timed["latency_ms"],
        "paired": None,
        "flops_g": flops.summary("val"),
        "keep_ratio": keep_stats,
        "checkpoint": str(cfg.load_from),
        "eval": {"images": images, "test_time_s": round(test_time, 1), "test_dtype": test_dtype},
        "env": run_env(),
    }


def _in_precision(step, device, dtype: str):
    """``step`` run under autocast to ``dtype`` on ``device`` (fp32: as it is)."""
    from ..bench import autocast

    def run(*args, **kwargs):
        with autocast(device, dtype):
            return step(*args, **kwargs)

    return run


def _summary(m: dict, run_dir: Path, console) -> None:
    lat, flops = m["latency_ms"], m["flops_g"]
    full = f"{flops['full']:.1f}" if flops.get("full") is not None else "—"
    console.print(
        f"box AP {m['box_ap']:.1f}  mask AP {m['mask_ap']:.1f}  keep ratio {m['keep_ratio']['mean']:.3f}  "
        f"latency full {lat['full']:.1f} ms / backbone {lat['backbone']:.1f} ms ({lat['device']}, "
        f"{lat['dtype']}, {lat['source']['count']} images)  GFLOPs full {full} "
        f"(mean over {flops['images']} val images)"
    )
    console.print(
        f"wrote {run_dir / METRICS_FILE} ({m['eval']['images']} val images in {m['eval']['test_time_s']} s)"
    )
