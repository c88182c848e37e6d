"""The ways a ViT block runs on a subset of tokens: masked (training) and sparse (inference).

The sparse path has three forms. When every image keeps the same number of tokens (fixed rate,
or batch 1) the kept tokens are gathered into one ``(B, k, D)`` batch. With per-image counts
(dynamic rate, batch > 1) either each image runs alone (``loop``) or the batch is padded to the
largest count and padded tokens are masked out as attention keys (``padded``: one kernel launch
per layer, the form GPUs want). ``auto`` takes ``padded`` on CUDA and ``loop`` elsewhere: on CPU
(2 threads, deit-small at 800x1344, batch 4, dynamic rate) the loop measured faster, as padding
computes the largest image's token count for every image (``scripts/gpu_bench.py`` measures both).
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.models.vision_transformer import Block

__all__ = ["SPARSE_MODES", "gated_block", "sparse_block", "resolve_mode"]

SPARSE_MODES = ("auto", "loop", "padded")


def gated_block(
    blk: Block, x: torch.Tensor, gate: torch.Tensor, attend: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Masked path: the block runs on all tokens with ``attend`` (bool ``(B, N)``; default
    ``gate > 0.5``) as attention keys, and its output is gated as a whole, as the official code:
    ``x + gate * (blk(x) - x)`` with ``gate`` ``(B, N)`` of 0/1 values (straight-through in
    training), so pruned tokens keep their value. An image that keeps no token attends to all
    (its gate is 0 everywhere, so only the gradient sees the block)."""
    attend = gate > 0.5 if attend is None else attend
    attend = attend | ~attend.any(dim=1, keepdim=True)  # an image with no kept token: no NaN rows
    y = blk(x, attn_mask=attend[:, None, None])  # bool key mask: valid under autocast in any dtype
    return x + gate.to(x.dtype).unsqueeze(-1) * (y - x)


def resolve_mode(mode: str, device: torch.device) -> str:
    """``loop`` or ``padded`` for a sparse mode on a device (``auto``: padded on CUDA only)."""
    if mode not in SPARSE_MODES:
        raise ValueError(f"unknown sparse mode {mode!r}; expected one of {SPARSE_MODES}")
    if mode == "auto":
        return "padded" if device.type == "cuda" else "loop"
    return mode


def sparse_block(blk: Block, x: torch.Tensor, keep: torch.Tensor, mode: str = "auto") -> torch.Tensor:
    """Run ``blk`` on the kept tokens only (bool ``keep`` ``(B, N)``) and scatter the results back;
    pruned tokens keep their value. ``mode`` picks the form for per-image counts (module docstring)."""
    B, N, D = x.shape
    counts = keep.sum(dim=1)
    if bool((counts == counts[0]).all()):
        idx = keep.nonzero()[:, 1].view(B, -1, 1).expand(-1, -1, D)
        return x.scatter(1, idx, blk(x.gather(1, idx)))
    if resolve_mode(mode, x.device) == "padded":
        return _padded(blk, x, keep, int(counts.max()))
    rows = []
    for xb, kb in zip(x, keep):
        idx = kb.nonzero().squeeze(1)
        rows.append(xb.index_copy(0, idx, blk(xb[idx].unsqueeze(0)).squeeze(0)))
    return torch.stack(rows)


def _padded(blk: Block, x: torch.Tensor, keep: torch.Tensor, width: int) -> torch.Tensor:
    """Each image's kept tokens first, filled up to ``width`` with some of its pruned tokens (so
    every row holds distinct positions); the fillers are masked as keys and keep their value."""
    D = x.shape[-1]
    order = keep.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :width]
    valid = keep.gather(1, order)  # (B, width): True for the image's kept tokens
    idx = order.unsqueeze(-1).expand(-1, -1, D)
    xs = x.gather(1, idx)
    out = blk(xs, attn_mask=valid[:, None, None])
    return x.scatter(1, idx, torch.where(valid.unsqueeze(-1), out, xs))
