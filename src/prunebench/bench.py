"""Latency, FLOPs and achieved keep ratio of MMDetection detectors with a PrunedViT backbone.

Latency: warm-up calls, then ``repeats`` timed calls (``torch.cuda.synchronize`` around each on a
GPU), median in ms. "backbone" times ``model.backbone(img)`` on the preprocessed image; "full"
times ``model.test_step`` (preprocessing, backbone, neck, RPN, RoI heads, post-processing) on a
synthetic uint8 image. FLOPs come from MMEngine's complexity analysis (jit trace of the eval path,
so pruned blocks count only their gathered tokens; one multiply-add counts as one FLOP, as in
fvcore), with a handle for ``scaled_dot_product_attention``, which MMEngine does not count.
"""
from __future__ import annotations

import copy
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["REFERENCE_SCHEDULE", "measure_detector", "run_bench", "build_detector",
           "vit_block_gflops"]

CONFIGS = Path(__file__).parent / "configs"
#: Selectors before blocks 4..12 (1-based); keep ratios are fractions of all N tokens.
REFERENCE_SCHEDULE = dict(prune_layers=list(range(3, 12)),
                          keep_ratios=[0.7] * 3 + [0.49] * 3 + [0.343] * 3)


def build_detector(arch: str = "deit-small", config: Optional[str] = None, **backbone_kwargs) -> nn.Module:
    """The Mask R-CNN of ``config`` (default: prunebench's ``configs/mask_rcnn_vit.py``) with its
    backbone set to ``PrunedViT(arch, **backbone_kwargs)``."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from . import models  # noqa: F401  (registers PrunedViT / PrunedMaskRCNN)

    cfg = Config.fromfile(config or str(CONFIGS / "mask_rcnn_vit.py"))
    cfg.model.backbone.update(arch=arch, **backbone_kwargs)
    init_default_scope(cfg.get("default_scope", "mmdet"))
    return MODELS.build(cfg.model)


def synthetic_data(input_hw: Tuple[int, int], batch: int = 1) -> dict:
    """A ``test_step`` batch of random uint8 images with their metainfo."""
    from mmdet.structures import DetDataSample

    H, W = input_hw
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=gen) for _ in range(batch)]
    samples = [DetDataSample(metainfo=dict(img_id=i, img_path="", ori_shape=(H, W), img_shape=(H, W),
                                           scale_factor=(1.0, 1.0))) for i in range(batch)]
    return dict(inputs=inputs, data_samples=samples)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


@torch.no_grad()
def _median_ms(fns: Dict[str, Callable], device: str, warmup: int, repeats: int) -> Dict[str, float]:
    """Median ms of each function; the timed rounds interleave the functions, so a change in
    machine load (a shared CPU) hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


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
        print_log(f"FLOP count of {type(module).__name__} failed: {exc!r}", logger="current",
                  level=logging.WARNING)
        return None


def vit_block_gflops(tokens_per_block: Sequence[float], dim: int, mlp_ratio: float = 4.0) -> float:
    """Analytic GFLOPs (multiply-adds) of ViT blocks processing the given token counts:
    ``n*D^2*(4 + 2*mlp_ratio)`` for qkv/proj/MLP plus ``2*n^2*D`` for attention."""
    return sum(n * dim * dim * (4 + 2 * mlp_ratio) + 2 * n * n * dim for n in tokens_per_block) / 1e9


def _keep_stats(backbone: nn.Module, num_tokens: int) -> Tuple[dict, float]:
    """Keep ratios of the last forward, and its ViT blocks' analytic GFLOPs per image."""
    masks = backbone.last_keep_masks
    per_layer = [m.float().mean().item() for m in masks]
    n = torch.full((masks[0].shape[0] if masks else 1,), float(num_tokens))
    rows = []
    for i in range(len(backbone.blocks)):
        if i in backbone.prune_layers:
            n = masks[backbone.prune_layers.index(i)].sum(1).float().cpu()
        rows.append(n)
    per_image = torch.stack(rows, 1)  # tokens each block processed, (B, depth)
    dim = backbone.pos_embed.shape[-1]
    mlp_ratio = backbone.blocks[0].mlp.fc1.out_features / dim
    gflops = statistics.mean(vit_block_gflops(row.tolist(), dim, mlp_ratio) for row in per_image)
    keep = {"mean": statistics.mean(per_layer) if per_layer else 1.0, "per_layer": per_layer}
    return keep, gflops


class _Probe:
    """What to time and count on one detector, for one synthetic batch."""

    def __init__(self, model: nn.Module, data: dict, device: str):
        self.model = model.to(device).eval()
        self.data = data
        with torch.no_grad():
            batch = model.data_preprocessor(copy.deepcopy(data), False)
        self.img, self.samples = batch["inputs"], batch["data_samples"]

    def fns(self, full: bool) -> Dict[str, Callable]:
        fns = {"backbone": lambda: self.model.backbone(self.img)}
        if full:
            fns["full"] = lambda: self.model.test_step(self.data)
        return fns

    def result(self, ms: Dict[str, float], device: str, repeats: int, full: bool) -> dict:
        model, (B, _, H, W) = self.model, self.img.shape
        bb = model.backbone
        num_tokens = (H // bb.patch_size) * (W // bb.patch_size)
        keep, block_flops = _keep_stats(bb, num_tokens)  # masks of the last timed forward
        full_flops = _gflops(_TensorForward(model, self.samples), self.img) if full else None
        bb_flops = _gflops(bb, self.img)
        dev = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
        h, w = self.data["inputs"][0].shape[-2:]
        return {
            "latency_ms": {"backbone": ms["backbone"], "full": ms.get("full"), "device": dev,
                           "input_size": [int(h), int(w)], "batch": B, "repeats": repeats,
                           "threads": torch.get_num_threads()},
            "flops_g": {"backbone": None if bb_flops is None else bb_flops / B,
                        "full": None if full_flops is None else full_flops / B,
                        "vit_blocks": block_flops},
            "keep_ratio": keep,
        }


def measure_detector(model: nn.Module, input_hw: Tuple[int, int] = (800, 1344), batch: int = 1,
                     device: str = "cpu", warmup: int = 2, repeats: int = 5, full: bool = True) -> dict:
    """Latency (medians), FLOPs per image and achieved keep ratio of a detector in eval mode.

    Returns ``{"latency_ms": {"backbone", "full", "device", "input_size", "batch", "repeats", "threads"},
    "flops_g": {"backbone", "full", "vit_blocks"}, "keep_ratio": {"mean", "per_layer"}}``;
    ``full=False`` skips the whole-detector timing and FLOPs (``None``).
    """
    probe = _Probe(model, synthetic_data(input_hw, batch), device)
    ms = _median_ms(probe.fns(full), device, warmup, repeats)
    return probe.result(ms, device, repeats, full)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def run_bench(arch: str = "deit-small", input_size: Tuple[int, int] = (800, 1344), batch: int = 1,
              warmup: int = 2, repeats: int = 5, device: str = "cpu", rate: str = "fixed",
              json_out: Optional[str] = None, backbone_only: bool = False,
              prune_layers: Optional[Sequence[int]] = None,
              keep_ratios: Optional[Sequence[float]] = None, config: Optional[str] = None,
              seed: int = 0, console=None, **backbone_kwargs) -> dict:
    """Dense vs pruned detector side by side in one process: a Rich table and a dict.

    The pruned model (reference schedule unless ``prune_layers``/``keep_ratios`` are given;
    random-init selectors) shares all other weights with the dense one. Timings interleave the
    two models. ``config`` and ``backbone_kwargs`` go to :func:`build_detector` for both.
    """
    from rich.console import Console
    from rich.table import Table

    schedule = dict(prune_layers=list(REFERENCE_SCHEDULE["prune_layers"] if prune_layers is None
                                      else prune_layers),
                    keep_ratios=list(REFERENCE_SCHEDULE["keep_ratios"] if keep_ratios is None
                                     else keep_ratios))
    torch.manual_seed(seed)
    dense = build_detector(arch, config, **backbone_kwargs)
    pruned = build_detector(arch, config, rate=rate, **schedule, **backbone_kwargs)
    pruned.load_state_dict(dense.state_dict())  # selectors start fresh (logged)
    data = synthetic_data(input_hw=tuple(input_size), batch=batch)
    probes = {"dense": _Probe(dense, data, device), "pruned": _Probe(pruned, data, device)}

    fns = {(name, part): fn for name, p in probes.items() for part, fn in p.fns(not backbone_only).items()}
    ms = _median_ms(fns, device, warmup, repeats)
    res = {name: p.result({part: v for (n, part), v in ms.items() if n == name}, device, repeats,
                          not backbone_only) for name, p in probes.items()}
    d, p = res["dense"], res["pruned"]
    out = {
        "arch": arch, "rate": rate, "input_size": list(input_size), "batch": batch, "device": device,
        "warmup": warmup, "repeats": repeats, "schedule": schedule, **backbone_kwargs,
        "dense": d, "pruned": p,
        "speedup": {k: _ratio(d["latency_ms"][k], p["latency_ms"][k]) for k in ("backbone", "full")},
        "flop_ratio": {k: _ratio(d["flops_g"][k], p["flops_g"][k])
                       for k in ("backbone", "full", "vit_blocks")},
    }

    table = Table(title=f"{arch} {input_size[0]}x{input_size[1]} batch {batch} on "
                        f"{d['latency_ms']['device']}: dense vs pruned ({rate} rate), median of {repeats}")
    for col in ("", "dense", "pruned", "dense / pruned"):
        table.add_column(col, justify="right" if col else "left")
    rows = [("backbone ms", "latency_ms", "backbone"), ("full detector ms", "latency_ms", "full"),
            ("backbone GFLOPs", "flops_g", "backbone"), ("full detector GFLOPs", "flops_g", "full"),
            ("ViT blocks GFLOPs", "flops_g", "vit_blocks"), ("keep ratio", "keep_ratio", "mean")]
    for label, group, key in rows:
        a, b = d[group][key], p[group][key]
        table.add_row(label, *("-" if v is None else f"{v:.3f}" if group == "keep_ratio" else f"{v:.1f}"
                               for v in (a, b)),
                      "" if group == "keep_ratio" or _ratio(a, b) is None else f"{_ratio(a, b):.2f}x")
    (console or Console()).print(table)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(out, indent=2))
    return out
