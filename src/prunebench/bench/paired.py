"""Dense and pruned detectors timed side by side in one process: ``measure_run`` times a trained
run as its job records it (a finetune beside its dense parent, loaded from the parent's
checkpoint); ``run_bench``, what ``prunebench bench`` calls, a fresh dense model beside its pruned
copy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..axes import ARCHS, reference_schedule
from ..configs import load_config
from .inputs import build_detector, dataset_batches, file_batches, synthetic_data
from .probe import measure_models


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _dense_parent(dense_dir: Path, device: torch.device) -> Optional[nn.Module]:
    """The finished dense run's detector with its last checkpoint, or None (logged) without one."""
    from mmdet.registry import MODELS
    from mmengine.logging import print_log
    from mmengine.runner import load_checkpoint

    from ..results import CONFIG_FILE, METRICS_FILE, WORK_DIR, read_json

    ckpt = (read_json(dense_dir / METRICS_FILE) or {}).get("checkpoint") or ""
    found = next(
        (p for p in (Path(ckpt), dense_dir / WORK_DIR / Path(ckpt).name) if ckpt and p.is_file()), None
    )
    if found is None or not (dense_dir / CONFIG_FILE).is_file():
        print_log(
            f"no paired latency: the dense run {dense_dir} has no config.py or checkpoint "
            f"(metrics.json checkpoint {ckpt!r})",
            logger="current",
            level=logging.WARNING,
        )
        return None
    model = MODELS.build(load_config(dense_dir / CONFIG_FILE).model)
    load_checkpoint(model, str(found), map_location="cpu", logger="current")
    return model.to(device).eval()


def measure_run(
    model: nn.Module, dataset, bench: dict, run_dir: Path, dense_run: Optional[str] = None
) -> dict:
    """Latency of a trained run's detector, as its job records it.

    Timed on the first ``bench["images"]`` (default 20) samples of ``dataset`` (the run's test
    dataset, so its test pipeline), batch 1, with ``bench``'s ``warmup``, ``repeats`` and
    ``dtype``. ``dense_run`` (a finetune's dense parent, a folder beside ``run_dir``) is timed
    alongside from its checkpoint, giving ``paired``. Returns ``{"latency_ms", "paired"}``
    (``paired`` None for a dense run or a dense parent without checkpoint); FLOPs are counted
    over all val images during the COCO test instead (:class:`~prunebench.bench.FlopsRecorder`).
    """
    device = next(model.parameters()).device
    batches = dataset_batches(dataset, int(bench.get("images", 20)))
    source = {"kind": "images", "count": len(batches), "ann_file": getattr(dataset, "ann_file", None)}
    models = {"run": model}
    dense = _dense_parent(Path(run_dir).parent / dense_run, device) if dense_run else None
    if dense is not None:
        models["dense"] = dense
    repeats = int(bench.get("repeats", 5))
    res = measure_models(
        models,
        batches,
        source,
        device,
        dtype=bench.get("dtype", "fp32"),
        warmup=int(bench.get("warmup", 2)),
        repeats=repeats,
        flops=[],
    )
    out = {"latency_ms": res["run"]["latency_ms"], "paired": None}
    if dense is not None:
        d, r = res["dense"]["latency_ms"], res["run"]["latency_ms"]
        out["paired"] = {
            "dense_run_id": dense_run,
            "dense_latency_ms": {k: d[k] for k in ("backbone", "full")},
            "speedup": {k: _ratio(d[k], r[k]) for k in ("backbone", "full")},
            "rounds": repeats,
        }
    return out


def run_bench(
    arch: str = "deit-small",
    family: str = "plain",
    input_size: tuple[int, int] = (800, 1344),
    batch: int = 1,
    warmup: int = 2,
    repeats: int = 5,
    device: str = "cpu",
    rate: str = "fixed",
    json_out: Optional[str] = None,
    backbone_only: bool = False,
    prune_layers: Optional[Sequence[int]] = None,
    keep_ratios: Optional[Sequence[float]] = None,
    config: Optional[str] = None,
    seed: int = 0,
    console=None,
    images: Optional[str] = None,
    num_images: int = 20,
    dtype: str = "fp32",
    pruned_args: Optional[dict] = None,
    **backbone_kwargs,
) -> dict:
    """Dense vs pruned detector side by side in one process: a Rich table and a dict.

    ``family``: ``plain`` or ``adapter`` backbone. The pruned model (reference schedule, scaled to
    the arch's depth, unless
    ``prune_layers``/``keep_ratios`` are given; random-init selectors) shares all other weights
    with the dense one. Inputs: a random
    ``input_size`` image, or with ``images`` (a folder or COCO annotation file) its first
    ``num_images`` images through the config's test pipeline, ``batch`` per call. ``config``
    and ``backbone_kwargs`` (e.g. ``sparse_mode``) go to :func:`build_detector` for both,
    ``pruned_args`` (e.g. a method preset's axes and ``method``) to the pruned model only.
    """
    from rich.console import Console
    from rich.table import Table

    layers, ratios = reference_schedule(backbone_kwargs.get("depth") or ARCHS[arch][1])
    schedule = dict(
        prune_layers=list(layers if prune_layers is None else prune_layers),
        keep_ratios=list(ratios if keep_ratios is None else keep_ratios),
    )
    torch.manual_seed(seed)
    dense = build_detector(arch, config, family, **backbone_kwargs)
    pruned_args = {"rate": rate, **(pruned_args or {})}
    pruned = build_detector(arch, config, family, **schedule, **pruned_args, **backbone_kwargs)
    pruned.load_state_dict(dense.state_dict())  # selectors start fresh (logged)
    if images:
        batches, source = file_batches(images, load_config(config), num_images, batch)
    else:
        batches = [synthetic_data(input_hw=tuple(input_size), batch=batch)]
        source = {"kind": "random", "input_size": list(input_size)}
    res = measure_models(
        {"dense": dense, "pruned": pruned},
        batches,
        source,
        device,
        dtype,
        warmup,
        repeats,
        full=not backbone_only,
    )
    d, p = res["dense"], res["pruned"]
    out = {
        "arch": arch,
        "family": family,
        "rate": rate,
        "source": source,
        "batch": batch,
        "device": device,
        "dtype": dtype,
        "warmup": warmup,
        "repeats": repeats,
        "schedule": schedule,
        **backbone_kwargs,
        "dense": d,
        "pruned": p,
        "speedup": {k: _ratio(d["latency_ms"][k], p["latency_ms"][k]) for k in ("backbone", "full")},
        "flop_ratio": {
            k: _ratio(d["flops_g"][k], p["flops_g"][k]) for k in ("backbone", "full", "vit_blocks")
        },
    }

    what = f"{source['count']} images" if images else f"{input_size[0]}x{input_size[1]}"
    n, counted = d["latency_ms"]["backbone_stats"]["n"], d["flops_g"]["images"]
    table = Table(
        title=f"{arch} {family} {what} batch {batch} {dtype} on {d['latency_ms']['device']} "
        f"({d['latency_ms']['threads']} threads): dense vs pruned ({rate} rate), "
        f"{n} timed calls each; GFLOPs per image, mean over {counted} image{'s' * (counted != 1)}"
    )
    for col in ("", "dense", "pruned", "dense / pruned"):
        table.add_column(col, justify="right" if col else "left")
    rows = [
        ("backbone ms, median", "latency_ms", "backbone"),
        ("backbone ms, p90", "backbone_stats", "p90"),
        ("full detector ms, median", "latency_ms", "full"),
        ("full detector ms, p90", "full_stats", "p90"),
        ("backbone GFLOPs", "flops_g", "backbone"),
        ("full detector GFLOPs", "flops_g", "full"),
        ("ViT blocks GFLOPs", "flops_g", "vit_blocks"),
        ("keep ratio", "keep_ratio", "mean"),
    ]
    if p["latency_ms"]["clustering"]:  # ATC: its clustering's part of the pruned backbone's time
        rows.insert(1, ("  of which clustering ms", "latency_ms", "clustering"))
    for label, group, key in rows:
        a, b = (_cell(r, group, key) for r in (d, p))
        if key == "clustering":
            share = b / p["latency_ms"]["backbone"]
            table.add_row(label, "-", f"{b:.1f}", f"{share:.0%} of the pruned backbone")
            continue
        table.add_row(
            label,
            *("-" if v is None else f"{v:.3f}" if group == "keep_ratio" else f"{v:.1f}" for v in (a, b)),
            "" if group == "keep_ratio" or _ratio(a, b) is None else f"{_ratio(a, b):.2f}x",
        )
    (console or Console()).print(table)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(out, indent=2))
    return out


def _cell(res: dict, group: str, key: str) -> Optional[float]:
    lat = res["latency_ms"]
    node = res["flops_g"] if group == "flops_g" else lat if group == "latency_ms" else lat[group]
    return None if node is None else node.get(key)
