"""FLOPs of one traced forward: MMEngine's complexity analysis (jit trace of the eval path, so
pruned blocks count only their gathered tokens; one multiply-add counts as one FLOP, as in fvcore),
plus handles for the ops it does not count (``scaled_dot_product_attention``, the adapter's
deformable attention, ATC's clustering: ``OP_HANDLES``)."""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn as nn

__all__ = ["OP_HANDLES", "TensorForward", "traced_gflops"]


def _sdpa_flop(inputs, outputs) -> int:
    from mmengine.analysis.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    return 2 * math.prod(q[:-2]) * q[-2] * k[-2] * q[-1]  # q @ k^T and attn @ v


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


class TensorForward(nn.Module):
    """Traceable whole-detector forward (``mode='tensor'``) with fixed data samples."""

    def __init__(self, model: nn.Module, data_samples):
        super().__init__()
        self.model, self.data_samples = model, data_samples

    def forward(self, img):
        return self.model._forward(img, self.data_samples)


def traced_gflops(module: nn.Module, *inputs: torch.Tensor) -> Optional[float]:
    """GFLOPs of one traced forward of ``module``; None (logged) when tracing fails."""
    from mmengine.analysis import FlopAnalyzer
    from mmengine.logging import print_log

    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(module, inputs)
            analyzer.set_op_handle(**OP_HANDLES)
            analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analyzer.tracer_warnings("none")
            return analyzer.total() / 1e9
    except Exception as exc:  # tracing a detector can fail on unusual heads: report no FLOPs
        name = type(getattr(module, "model", module)).__name__
        print_log(f"FLOP count of {name} failed: {exc!r}", logger="current", level=logging.WARNING)
        return None
