"""One detector on a list of batches: the calls to time, then latency, FLOPs and keep ratio;
``measure_models`` times several side by side on the same batches. "backbone" times
``model.backbone(img)`` on the preprocessed image; "full" times ``model.test_step``
(preprocessing, backbone, neck, RPN, RoI heads, post-processing). fp16/bf16 run the backbone and
the neck under ``torch.autocast``; the RPN and RoI heads get the features back in fp32, because
MMCV's NMS and RoIAlign have no bf16 kernels (nor fp16 ones on CPU). FLOPs: one untimed fp32 pass
over all timed images under :class:`~prunebench.bench.flops.FlopsRecorder` (per image, at its own
size and kept-token counts; mean, p10, p90 over the images).
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Optional

import torch
import torch.nn as nn

from ..models.methods.clustering import clustering_seconds
from .flops import FlopsRecorder
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


# ----------------------------------------------------------------------------- timing detectors


class _Probe:
    """One detector on a list of batches: the calls to time, then latency, FLOPs, keep ratio."""

    def __init__(self, model: nn.Module, batches: list[dict], device: torch.device, dtype: str):
        self.model, self.batches, self.device, self.dtype = model.to(device).eval(), batches, device, dtype
        with torch.no_grad():
            pre = [model.data_preprocessor(copy.deepcopy(b), False) for b in batches]
        self.imgs = [p["inputs"] for p in pre]
        self.masks: list[list[torch.Tensor]] = [[] for _ in batches]  # keep masks per input
        self.clustering_ms: list[float] = []  # per backbone call: ATC's clustering (SciPy) in it

    def backbone(self, i: int) -> None:
        before = clustering_seconds()
        with autocast(self.device, self.dtype):
            self.model.backbone(self.imgs[i])
        self.masks[i] = getattr(self.model.backbone, "last_keep_masks", [])
        self.clustering_ms.append(1e3 * (clustering_seconds() - before))

    def full(self, i: int) -> None:
        with _autocast_features(self.model, self.device, self.dtype):
            self.model.test_step(self.batches[i])

    def _keep(self) -> tuple[dict, float]:
        """Keep ratio per layer over all timed images (each image weighs the same) and the mean
        patch-token count per image."""
        bb = self.model.backbone
        per_image_keep, tokens = [], []
        for img, masks in zip(self.imgs, self.masks):
            H, W = img.shape[-2:]
            n = (math.ceil(H / 32) * 32 // bb.patch_size) * (math.ceil(W / 32) * 32 // bb.patch_size)
            for b in range(img.shape[0]):
                per_image_keep.append([float(m[b].float().mean()) for m in masks])
                tokens.append(n)
        per_layer = [statistics.fmean(col) for col in zip(*per_image_keep)] if self.masks[0] else []
        keep = {
            "mean": statistics.fmean(per_layer) if per_layer else 1.0,
            "per_layer": per_layer,
            "images": len(per_image_keep),
        }
        return keep, statistics.fmean(tokens)

    def flops(self, full: bool) -> dict:
        """``flops_g`` over the timed images: one untimed fp32 pass under a FlopsRecorder."""
        with torch.no_grad(), FlopsRecorder(self.model, full=full) as rec:
            for i, batch in enumerate(self.batches):
                if full:
                    self.model.test_step(batch)
                else:
                    self.model.backbone(self.imgs[i])
        return rec.summary("timed")

    def result(
        self, ms: dict[str, Optional[list[float]]], source: dict, warmup: int, repeats: int, flops: bool
    ) -> dict:
        keep, tokens = self._keep()
        stats = {part: latency_stats(v) if v else None for part, v in ms.items()}
        B = self.imgs[0].shape[0]
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
                # ATC's clustering within each backbone call (median; 0 for every other method)
                "clustering": statistics.median(self.clustering_ms) if self.clustering_ms else 0.0,
            },
            "flops_g": self.flops(bool(stats.get("full"))) if flops else None,
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
    "images"}}, "flops_g"}`` (:func:`~prunebench.bench.flops.flops_summary` over the timed images,
    or None). ``full=False`` skips the whole detector (``None``); FLOPs are counted for the models
    named in ``flops`` (default all).
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
