"""Multi-scale deformable attention (Deformable DETR) as ViT-Adapter uses it, on MMCV 2's op.

:func:`ms_deform_attn` samples ``value`` at the given locations and sums the samples with the
attention weights. It runs MMCV's compiled ``MultiScaleDeformableAttnFunction`` on CUDA tensors
(where MMCV was built with CUDA) and MMCV's ``multi_scale_deformable_attn_pytorch`` elsewhere;
where MMCV's ops cannot be imported at all (a bare GPU machine running ``scripts/gpu_bench.py``)
an equivalent ``grid_sample`` form. It always computes in float32, as the official op
(``custom_fwd(cast_inputs=torch.float32)``), also under autocast.

:class:`DeformableAttention` is ViT-Adapter's ``MSDeformAttn``: the same parameter names
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``), shapes and
initialisation, and nothing else (unlike MMCV's ``MultiScaleDeformableAttention`` module, which
adds the query back and applies dropout).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DeformableAttention", "ms_deform_attn", "deform_attn_backend", "deform_attn_flops"]

#: DeformableAttention's ``im2col_step`` for MMCV's CUDA kernel (as the official module).
IM2COL_STEP = 64


@functools.cache
def _mmcv_ops() -> tuple[Optional[type], Optional[callable], bool]:
    """MMCV's (CUDA function, PyTorch function, built with CUDA); Nones where MMCV's ops are absent."""
    try:
        from mmcv.ops import get_compiling_cuda_version
        from mmcv.ops.multi_scale_deform_attn import (
            MultiScaleDeformableAttnFunction,
            multi_scale_deformable_attn_pytorch,
        )
    except (ImportError, OSError):  # no MMCV, or MMCV without its compiled ops
        return None, None, False
    has_cuda = get_compiling_cuda_version() not in ("not available", "")
    return MultiScaleDeformableAttnFunction, multi_scale_deformable_attn_pytorch, has_cuda


def deform_attn_backend(device: torch.device | str) -> str:
    """Which form :func:`ms_deform_attn` takes on ``device``: ``mmcv-cuda`` (MMCV's compiled CUDA
    op), ``mmcv-pytorch`` (MMCV's PyTorch form) or ``grid-sample`` (MMCV's ops not installed)."""
    cuda_fn, torch_fn, has_cuda = _mmcv_ops()
    if torch.device(device).type == "cuda" and cuda_fn is not None and has_cuda:
        return "mmcv-cuda"
    return "mmcv-pytorch" if torch_fn is not None else "grid-sample"


def ms_deform_attn(
    value: torch.Tensor,
    shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The deformable attention core, in float32.

    ``value`` ``(B, S, M, Dh)`` holds the levels' maps of ``shapes`` (``(h, w)`` each) flattened
    one after the other; ``sampling_locations`` ``(B, Q, M, L, P, 2)`` are ``(x, y)`` in [0, 1]
    (0 and 1 the outer edges of the map, bilinear with zeros outside);
    ``attention_weights`` ``(B, Q, M, L, P)``. Returns ``(B, Q, M * Dh)`` float32.
    """
    backend = deform_attn_backend(value.device)
    with torch.autocast(value.device.type, enabled=False):
        value, loc, weight = value.float(), sampling_locations.float(), attention_weights.float()
        cuda_fn, torch_fn, _ = _mmcv_ops()
        if backend == "mmcv-cuda":
            shapes_t = torch.as_tensor(shapes, dtype=torch.long, device=value.device)
            start = torch.cat([shapes_t.new_zeros(1), shapes_t.prod(1).cumsum(0)[:-1]])
            return cuda_fn.apply(value, shapes_t, start, loc, weight, IM2COL_STEP)
        if backend == "mmcv-pytorch":
            return torch_fn(value, shapes, loc, weight)
        return _grid_sample_form(value, shapes, loc, weight)


def _grid_sample_form(value, shapes, loc, weight) -> torch.Tensor:
    """The same maths as MMCV's PyTorch form: bilinear ``grid_sample`` per level, weighted sum."""
    B, _, M, Dh = value.shape
    _, Q, _, L, P, _ = loc.shape
    grids = 2 * loc - 1  # grid_sample's [-1, 1], align_corners=False
    samples = []
    for lvl, v in enumerate(value.split([h * w for h, w in shapes], dim=1)):
        h, w = shapes[lvl]
        v = v.flatten(2).transpose(1, 2).reshape(B * M, Dh, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (B*M, Q, P, 2)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    w_ = weight.transpose(1, 2).reshape(B * M, 1, Q, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * w_).sum(-1)  # (B*M, Dh, Q)
    return out.view(B, M * Dh, Q).transpose(1, 2).contiguous()


def deform_attn_flops(num_weights: int, head_dim: int) -> int:
    """Multiply-adds of the core for ``num_weights`` sampling points (``B*Q*M*L*P``): a bilinear
    sample (4) and its weighting (1) per point and channel. The count the FLOP handles give."""
    return 5 * num_weights * head_dim


class DeformableAttention(nn.Module):
    """ViT-Adapter's ``MSDeformAttn``: each query samples ``n_points`` locations per head and level
    around its reference point, at offsets and with softmax weights predicted from the query.

    ``forward(query (B, Q, C), reference_points (B|1, Q, L|1, 2), feat (B, S, C), shapes,
    padding_mask=None (B, S) bool, True = not a token)`` -> ``(B, Q, C)``.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 1, n_heads: int = 8, n_points: int = 4, ratio=1.0):
        super().__init__()
        if d_model % n_heads or int(d_model * ratio) % n_heads:
            raise ValueError(f"d_model {d_model} (x ratio {ratio}) must be divisible by n_heads {n_heads}")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, int(d_model * ratio))
        self.output_proj = nn.Linear(int(d_model * ratio), d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: zero offset weights and a bias that puts head ``m``'s point
        ``p`` at distance ``p+1`` along direction ``2*pi*m/M``; uniform attention; Xavier
        projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        direction = torch.stack([theta.cos(), theta.sin()], -1)
        direction = direction / direction.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        grid = direction[:, None, None, :] * steps[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.expand(-1, self.n_levels, -1, -1).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        feat: torch.Tensor,
        shapes: Sequence[tuple[int, int]],
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        B, Q, _ = query.shape
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(feat)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(B, feat.shape[1], M, -1)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, M, L * P).softmax(-1).view(B, Q, M, L, P)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=offsets.device)
        locations = reference_points[:, :, None, :, None, :] + offsets.float() / normalizer[:, None, :]
        out = ms_deform_attn(value, shapes, locations, weights)
        return self.output_proj(out.to(value.dtype))
