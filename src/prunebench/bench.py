"""Latency, FLOPs and achieved keep ratio of MMDetection detectors with a PrunedViT backbone.

Protocol (as MMDetection's ``benchmark.py``; statistics as SparseViT): batch-1 calls on real
images through the run's test pipeline and data preprocessor (or, for quick checks, a random
image of a given size); ``warmup`` untimed calls per model and part, then ``repeats`` timed
rounds over all images. Rounds interleave the models (per image: each model's backbone, then its
full detector), so a change in machine load hits all of them alike. Every call is timed alone:
``time.perf_counter`` on CPU, CUDA events after a synchronize on a GPU. Per part: median (the
headline figure), mean of the middle 50 %, p90 and the number of timed calls. "backbone" times
``model.backbone(img)`` on the preprocessed image; "full" times ``model.test_step``
(preprocessing, backbone, neck, RPN, RoI heads, post-processing). fp16/bf16 run the backbone and
the neck under ``torch.autocast``; the RPN and RoI heads get the features back in fp32, because
MMCV's NMS and RoIAlign have no bf16 kernels (nor fp16 ones on CPU).

FLOPs come from MMEngine's complexity analysis on the first timed input (jit trace of the eval
path, so pruned blocks count only their gathered tokens; one multiply-add counts as one FLOP, as
in fvcore, plus a handle for ``scaled_dot_product_attention``, which MMEngine does not count);
``vit_blocks`` is the analytic count of the ViT blocks, averaged over all timed images.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from .axes import PRECISIONS, REFERENCE_LAYERS, REFERENCE_RATIOS
from .configs import TEMPLATE_DIR, TEMPLATES

__all__ = [
    "DTYPES",
    "autocast",
    "build_detector",
    "latency_stats",
    "measure_models",
    "measure_run",
    "run_bench",
    "time_calls",
    "vit_block_gflops",
]

#: bench dtype -> autocast dtype (None: plain fp32).
DTYPES: dict[str, Optional[torch.dtype]] = dict(zip(PRECISIONS, (None, torch.float16, torch.bfloat16)))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def autocast(device: torch.device | str, dtype: str):
    """``torch.autocast`` to ``dtype`` (fp16 | bf16) on ``device``; fp32: no autocast."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[dtype])


@contextlib.contextmanager
def _autocast_features(model: nn.Module, device: torch.device, dtype: str):
    """Within: ``model.extract_feat`` (backbone + neck) runs under autocast and returns fp32."""
    if DTYPES[dtype] is None:
        yield
        return
    inner = model.extract_feat

    def extract_feat(batch_inputs):
        with autocast(device, dtype):
            feats = inner(batch_inputs)
        return tuple(f.float() for f in feats)

    model.extract_feat = extract_feat
    try:
        yield
    finally:
        del model.extract_feat


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


# ----------------------------------------------------------------------------- models and inputs


def _load_config(config: Optional[str]):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(config or str(TEMPLATE_DIR / TEMPLATES["mask-rcnn-vit"]))
    init_default_scope(cfg.get("default_scope", "mmdet"))
    return cfg


def build_detector(arch: str = "deit-small", config: Optional[str] = None, **backbone_kwargs) -> nn.Module:
    """The Mask R-CNN of ``config`` (default: prunebench's ``configs/mask_rcnn_vit.py``) with its
    backbone set to ``PrunedViT(arch, **backbone_kwargs)``."""
    from mmdet.registry import MODELS

    from . import models  # noqa: F401  (registers PrunedViT / PrunedMaskRCNN)

    cfg = _load_config(config)
    cfg.model.backbone.update(arch=arch, **backbone_kwargs)
    return MODELS.build(cfg.model)


def synthetic_data(input_hw: tuple[int, int], batch: int = 1) -> dict:
    """A ``test_step`` batch of random uint8 images with their metainfo."""
    from mmdet.structures import DetDataSample

    H, W = input_hw
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=gen) for _ in range(batch)]
    samples = [
        DetDataSample(
            metainfo=dict(img_id=i, img_path="", ori_shape=(H, W), img_shape=(H, W), scale_factor=(1.0, 1.0))
        )
        for i in range(batch)
    ]
    return dict(inputs=inputs, data_samples=samples)


def _collate(items: Sequence[dict], batch: int) -> list[dict]:
    """Pipeline outputs -> ``test_step`` batches of up to ``batch`` images."""
    return [
        {
            "inputs": [it["inputs"] for it in items[i : i + batch]],
            "data_samples": [it["data_samples"] for it in items[i : i + batch]],
        }
        for i in range(0, len(items), batch)
    ]


def dataset_batches(dataset, count: int) -> list[dict]:
    """The first ``count`` samples of an MMEngine dataset (its own pipeline), one per batch."""
    n = min(count, len(dataset))
    if n < 1:
        raise ValueError("the validation set is empty: there are no images to time")
    return _collate([dataset[i] for i in range(n)], 1)


def _image_files(path: Path, count: int) -> tuple[list[Path], dict]:
    """The first ``count`` images of a folder (sorted by name) or of a COCO annotation file."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
        if not files:
            raise ValueError(
                f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}); pass a folder "
                "of images or a COCO annotation file"
            )
        return files, {"folder": str(path)}
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such folder or annotation file")
    try:
        names = [im["file_name"] for im in json.loads(path.read_text())["images"]][:count]
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f"{path}: not a COCO annotation file (a JSON object with an `images` list "
            "of {file_name, ...}); pass a folder of images or such a file"
        ) from None
    if not names:
        raise ValueError(f"{path}: its `images` list is empty")
    split = path.stem.split("_", 1)[-1]  # instances_val2017.json -> val2017
    roots = [path.parent, path.parent.parent / split, path.parent.parent]
    root = next((r for r in roots if (r / names[0]).is_file()), None)
    if root is None:
        raise FileNotFoundError(
            f"{path}: image {names[0]!r} not found in {', '.join(map(str, roots))}; "
            "use the COCO layout ROOT/annotations/instances_SPLIT.json + ROOT/SPLIT/"
        )
    return [root / n for n in names], {"ann_file": str(path)}


def file_batches(path: str | Path, cfg, count: int, batch: int = 1) -> tuple[list[dict], dict]:
    """Images of a folder or COCO annotation file through ``cfg``'s test pipeline (annotations not
    loaded): ``test_step`` batches and the ``source`` record."""
    from mmengine.dataset import Compose

    files, where = _image_files(Path(path), count)
    steps = [s for s in cfg.test_dataloader.dataset.pipeline if s["type"] != "LoadAnnotations"]
    pipeline = Compose(steps)
    items = [pipeline(dict(img_path=str(f), img_id=i)) for i, f in enumerate(files)]
    return _collate(items, batch), {"kind": "images", "count": len(files), **where}


# ----------------------------------------------------------------------------- FLOPs


def _sdpa_flop(inputs, outputs) -> int:
    from mmengine.analysis.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    batch = 1
    for d in q[:-2]:
        batch *= d
    return 2 * batch * q[-2] * k[-2] * q[-1]  # q @ k^T and attn @ v


class _TensorForward(nn.Module):
    """Traceable whole-detector forward (``mode='tensor'``) with fixed data samples."""

    def __init__(self, model: nn.Module, data_samples):
        super().__init__()
        self.model, self.data_samples = model, data_samples

    def forward(self, img):
        return self.model._forward(img, self.data_samples)


def _gflops(module: nn.Module, img: torch.Tensor) -> Optional[float]:
    from mmengine.analysis import FlopAnalyzer
    from mmengine.logging import print_log

    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(module, (img,))
            analyzer.set_op_handle(**{"aten::scaled_dot_product_attention": _sdpa_flop})
            analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analyzer.tracer_warnings("none")
            return analyzer.total() / 1e9
    except Exception as exc:  # tracing a detector can fail on unusual heads: report no FLOPs
        print_log(
            f"FLOP count of {type(module).__name__} failed: {exc!r}", logger="current", level=logging.WARNING
        )
        return None


def vit_block_gflops(tokens_per_block: Sequence[float], dim: int, mlp_ratio: float = 4.0) -> float:
    """Analytic GFLOPs (multiply-adds) of ViT blocks processing the given token counts:
    ``n*D^2*(4 + 2*mlp_ratio)`` for qkv/proj/MLP plus ``2*n^2*D`` for attention."""
    return sum(n * dim * dim * (4 + 2 * mlp_ratio) + 2 * n * n * dim for n in tokens_per_block) / 1e9


# ----------------------------------------------------------------------------- timing detectors


class _Probe:
    """One detector on a list of batches: the calls to time, then latency, FLOPs, keep ratio."""

    def __init__(self, model: nn.Module, batches: list[dict], device: torch.device, dtype: str):
        self.model, self.batches, self.device, self.dtype = model.to(device).eval(), batches, device, dtype
        with torch.no_grad():
            pre = [model.data_preprocessor(copy.deepcopy(b), False) for b in batches]
        self.imgs = [p["inputs"] for p in pre]
        self.samples = [p["data_samples"] for p in pre]
        self.masks: list[list[torch.Tensor]] = [[] for _ in batches]  # keep masks per input

    def backbone(self, i: int) -> None:
        with autocast(self.device, self.dtype):
            self.model.backbone(self.imgs[i])
        self.masks[i] = getattr(self.model.backbone, "last_keep_masks", [])

    def full(self, i: int) -> None:
        with _autocast_features(self.model, self.device, self.dtype):
            self.model.test_step(self.batches[i])

    def _keep(self) -> tuple[dict, float, float]:
        """Keep ratio per layer over all timed images (each image weighs the same), the ViT blocks'
        analytic GFLOPs per image and the mean patch-token count per image."""
        bb = self.model.backbone
        dim = bb.pos_embed.shape[-1]
        mlp_ratio = bb.blocks[0].mlp.fc1.out_features / dim
        per_image_keep, block_flops, tokens = [], [], []
        for img, masks in zip(self.imgs, self.masks):
            H, W = img.shape[-2:]
            n = (math.ceil(H / 32) * 32 // bb.patch_size) * (math.ceil(W / 32) * 32 // bb.patch_size)
            for b in range(img.shape[0]):
                counts, rows = float(n), []
                for i in range(len(bb.blocks)):
                    if i in bb.prune_layers:
                        counts = float(masks[bb.prune_layers.index(i)][b].sum())
                    rows.append(counts)
                per_image_keep.append([float(m[b].float().mean()) for m in masks])
                block_flops.append(vit_block_gflops(rows, dim, mlp_ratio))
                tokens.append(n)
        per_layer = [statistics.fmean(col) for col in zip(*per_image_keep)] if self.masks[0] else []
        keep = {
            "mean": statistics.fmean(per_layer) if per_layer else 1.0,
            "per_layer": per_layer,
            "images": len(per_image_keep),
        }
        return keep, statistics.fmean(block_flops), statistics.fmean(tokens)

    def result(
        self, ms: dict[str, Optional[list[float]]], source: dict, warmup: int, repeats: int, flops: bool
    ) -> dict:
        keep, block_flops, tokens = self._keep()
        stats = {part: latency_stats(v) if v else None for part, v in ms.items()}
        B = self.imgs[0].shape[0]
        full_flops = bb_flops = None
        if flops:
            bb_flops = _gflops(self.model.backbone, self.imgs[0])
            if stats.get("full"):
                full_flops = _gflops(_TensorForward(self.model, self.samples[0]), self.imgs[0])
        dev = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {
            "latency_ms": {
                "backbone": stats["backbone"]["median"],
                "full": stats["full"]["median"] if stats.get("full") else None,
                "backbone_stats": stats["backbone"],
                "full_stats": stats.get("full"),
                "device": dev,
                "dtype": self.dtype,
                "threads": torch.get_num_threads(),
                "source": source,
                "batch": B,
                "tokens": tokens,
                "warmup": warmup,
                "repeats": repeats,
                "keep_ratio": keep,
            },
            "flops_g": {
                "backbone": None if bb_flops is None else bb_flops / B,
                "full": None if full_flops is None else full_flops / B,
                "vit_blocks": block_flops,
            },
        }


def measure_models(
    models: dict[str, nn.Module],
    batches: list[dict],
    source: dict,
    device: torch.device | str = "cpu",
    dtype: str = "fp32",
    warmup: int = 2,
    repeats: int = 5,
    full: bool = True,
    flops: Optional[Sequence[str]] = None,
) -> dict[str, dict]:
    """Time detectors side by side (interleaved rounds) on the same batches.

    Returns per model ``{"latency_ms": {"backbone", "full" (medians), "backbone_stats",
    "full_stats" ({"median", "mid50_mean", "p90", "n"}), "device", "dtype", "threads",
    "source", "batch", "tokens", "warmup", "repeats", "keep_ratio": {"mean", "per_layer",
    "images"}}, "flops_g": {"backbone", "full", "vit_blocks"}}``. ``full=False`` skips the whole
    detector (``None``); FLOPs are traced for the models named in ``flops`` (default all).
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    device = torch.device(device)
    probes = {name: _Probe(m, batches, device, dtype) for name, m in models.items()}
    fns: dict[Hashable, list[Callable]] = {}
    for name, p in probes.items():
        fns[(name, "backbone")] = [partial(p.backbone, i) for i in range(len(batches))]
        if full:
            fns[(name, "full")] = [partial(p.full, i) for i in range(len(batches))]
    ms = time_calls(fns, device, warmup, repeats)
    flops = list(models) if flops is None else flops
    return {
        name: p.result(
            {part: ms.get((name, part)) for part in ("backbone", "full")},
            source,
            warmup,
            repeats,
            name in flops,
        )
        for name, p in probes.items()
    }


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _dense_parent(dense_dir: Path, device: torch.device) -> Optional[nn.Module]:
    """The finished dense run's detector with its last checkpoint, or None (logged) without one."""
    from mmdet.registry import MODELS
    from mmengine.logging import print_log
    from mmengine.runner import load_checkpoint

    from .results import CONFIG_FILE, METRICS_FILE, WORK_DIR, read_json

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
    model = MODELS.build(_load_config(str(dense_dir / CONFIG_FILE)).model)
    load_checkpoint(model, str(found), map_location="cpu", logger="current")
    return model.to(device).eval()


def measure_run(
    model: nn.Module, dataset, bench: dict, run_dir: Path, dense_run: Optional[str] = None
) -> dict:
    """Latency of a trained run's detector, as its job records it.

    Timed on the first ``bench["images"]`` (default 20) samples of ``dataset`` (the run's test
    dataset, so its test pipeline), batch 1, with ``bench``'s ``warmup``, ``repeats`` and
    ``dtype``. ``dense_run`` (a finetune's dense parent, a folder beside ``run_dir``) is timed
    alongside from its checkpoint, giving ``paired``. Returns ``{"latency_ms", "flops_g",
    "paired"}`` (``paired`` None for a dense run or a dense parent without checkpoint).
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
        flops=["run"],
    )
    out = {**res["run"], "paired": None}
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
    **backbone_kwargs,
) -> dict:
    """Dense vs pruned detector side by side in one process: a Rich table and a dict.

    The pruned model (reference schedule unless ``prune_layers``/``keep_ratios`` are given;
    random-init selectors) shares all other weights with the dense one. Inputs: a random
    ``input_size`` image, or with ``images`` (a folder or COCO annotation file) its first
    ``num_images`` images through the config's test pipeline, ``batch`` per call. ``config``
    and ``backbone_kwargs`` (e.g. ``sparse_mode``) go to :func:`build_detector` for both.
    """
    from rich.console import Console
    from rich.table import Table

    schedule = dict(
        prune_layers=list(REFERENCE_LAYERS if prune_layers is None else prune_layers),
        keep_ratios=list(REFERENCE_RATIOS if keep_ratios is None else keep_ratios),
    )
    torch.manual_seed(seed)
    dense = build_detector(arch, config, **backbone_kwargs)
    pruned = build_detector(arch, config, rate=rate, **schedule, **backbone_kwargs)
    pruned.load_state_dict(dense.state_dict())  # selectors start fresh (logged)
    if images:
        batches, source = file_batches(images, _load_config(config), num_images, batch)
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
    n = d["latency_ms"]["backbone_stats"]["n"]
    table = Table(
        title=f"{arch} {what} batch {batch} {dtype} on {d['latency_ms']['device']} "
        f"({d['latency_ms']['threads']} threads): dense vs pruned ({rate} rate), "
        f"{n} timed calls each"
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
    for label, group, key in rows:
        a, b = (_cell(r, group, key) for r in (d, p))
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
