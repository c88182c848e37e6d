"""One detector on a list of batches: the calls to time, then latency, FLOPs and keep ratio;
``measure_models`` times several side by side on the same batches. "backbone" times
``model.backbone(img)`` on the preprocessed image; "full" times ``model.test_step``
(preprocessing, backbone, neck, RPN, RoI heads, post-processing). fp16/bf16 run the backbone and
the neck under ``torch.autocast``; the RPN and RoI heads get the features back in fp32, because
MMCV's NMS and RoIAlign have no bf16 kernels (nor fp16 ones on CPU). FLOPs come from MMEngine's
complexity analysis on the first timed input (jit trace of the eval path, so pruned blocks count
only their gathered tokens; one multiply-add counts as one FLOP, as in fvcore, plus handles for
what MMEngine does not count: ``scaled_dot_product_attention``, the adapter's deformable
attention and ATC's clustering, ``OP_HANDLES``); ``vit_blocks`` is the analytic count of the ViT
blocks, averaged over all timed images.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import statistics
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Optional

import torch
import torch.nn as nn

from .timing import DTYPES, autocast, latency_stats, time_calls


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


# ----------------------------------------------------------------------------- FLOPs


def _sdpa_flop(inputs, outputs) -> int:
    from mmengine.analysis.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    batch = 1
    for d in q[:-2]:
        batch *= d
    return 2 * batch * q[-2] * k[-2] * q[-1]  # q @ k^T and attn @ v


def _gather_flop(inputs, outputs) -> int:
    """``aten::embedding_bag``, which only prunebench's deformable attention (its CPU form) uses:
    4 corner rows per sampling point."""
    from mmengine.analysis.jit_handles import get_shape

    from ..models.ms_deform_attn import deform_attn_flops

    rows, head_dim = get_shape(inputs[1]), get_shape(inputs[0])[-1]
    return deform_attn_flops(math.prod(rows) // 4, head_dim)


def _mmcv_deform_attn_flop(inputs, outputs) -> int:
    """MMCV's CUDA ``MultiScaleDeformableAttnFunction`` (value, shapes, starts, locations, weights)."""
    from mmengine.analysis.jit_handles import get_shape

    from ..models.ms_deform_attn import deform_attn_flops

    return deform_attn_flops(math.prod(get_shape(inputs[4])), get_shape(inputs[0])[-1])


def _clustering_flop(inputs, outputs) -> int:
    """ATC's agglomerative clustering (SciPy, invisible to the trace) of (B, T, T) distances."""
    from mmengine.analysis.jit_handles import get_shape

    from ..models.methods.clustering import clustering_flops

    B, T, _ = get_shape(inputs[0])
    return clustering_flops(B, T)


#: FLOP handles of the ops MMEngine's FlopAnalyzer does not count (one multiply-add = one FLOP).
OP_HANDLES = {
    "prim::PythonOp.AgglomerativeClustering": _clustering_flop,
    "aten::scaled_dot_product_attention": _sdpa_flop,
    "aten::embedding_bag": _gather_flop,
    "prim::PythonOp.MultiScaleDeformableAttnFunction": _mmcv_deform_attn_flop,
}


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
            analyzer.set_op_handle(**OP_HANDLES)
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
