"""A timm ``Block`` in two halves (attention, then MLP) with the class token's attention, and the
kept patch tokens as index sets.

The class-attention methods prune *inside* a block (EViT, ATS: after its attention, before its
MLP) or need every block's class attention (Evo-ViT), so they run a block as :func:`attend` then
:func:`feed_forward`, which together compute exactly ``Block.forward``.

Kept tokens are ``idx`` (B, W) positions in the token map; with per-image counts (ATS) the rows
are padded to the largest count and ``valid`` (B, W) marks the real ones (``None``: all are).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

__all__ = [
    "attend",
    "queries_keys_values",
    "attention_residual",
    "feed_forward",
    "run_block",
    "gather",
    "scatter",
    "compact",
    "keep_mask",
    "key_mask",
    "weighted_mean",
]


def attend(
    blk: Block, x: torch.Tensor, keys: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention half of ``blk`` on ``x`` (B, S, D) with ``keys`` (bool (B, S), None: all) as
    attention keys. Returns ``x + attention``, the class token's (row 0) attention probabilities
    per head (B, H, S, float32) and the norm of each token's value vector (B, S, float32)."""
    attn = blk.attn
    B, S, _ = x.shape
    q, k, v = queries_keys_values(blk, x)
    mask = None if keys is None else keys[:, None, None]
    drop = attn.attn_drop.p if blk.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
    logits = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).float()  # (B, H, 1, S)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    cls_attn = logits.softmax(dim=-1).squeeze(2)
    v_norm = v.transpose(1, 2).reshape(B, S, -1).float().norm(dim=-1)
    return attention_residual(blk, x, out), cls_attn, v_norm


def queries_keys_values(blk: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-head queries, keys and values (B, H, S, head_dim) of ``blk`` on ``x`` (B, S, D)."""
    attn = blk.attn
    if attn.gate is not None:
        raise ValueError("gated attention is not supported by prunebench's attention forms")
    B, S, _ = x.shape
    qkv = attn.qkv(blk.norm1(x)).reshape(B, S, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def attention_residual(blk: Block, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``x`` plus the projected attention output ``out`` (B, H, S, head_dim) of ``blk``."""
    attn = blk.attn
    out = attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(*x.shape[:2], attn.attn_dim))))
    return x + blk.drop_path1(blk.ls1(out))


def feed_forward(blk: Block, x: torch.Tensor) -> torch.Tensor:
    """The MLP half of ``blk`` (per token)."""
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def run_block(blk: Block, x: torch.Tensor, keys: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``blk`` on ``x`` with ``keys`` (bool (B, S) or None) as attention keys."""
    return blk(x) if keys is None else blk(x, attn_mask=keys[:, None, None])


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (B, W) of ``x`` (B, N, D)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter(
    x: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor, valid: Optional[torch.Tensor]
) -> torch.Tensor:
    """``x`` with its rows ``idx`` replaced by ``rows`` where ``valid`` (padding rows unchanged)."""
    if valid is not None:
        rows = torch.where(valid.unsqueeze(-1), rows, gather(x, idx))
    return x.scatter(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]), rows)


def compact(chosen: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Columns of the chosen entries of bool ``chosen`` (B, W), first in each row and in their
    order, padded to the largest count: ``(order (B, W'), valid (B, W') or None if all real)``."""
    width = int(chosen.sum(dim=1).max())
    order = chosen.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :width]
    valid = chosen.gather(1, order)
    return order, None if bool(valid.all()) else valid


def keep_mask(idx: torch.Tensor, valid: Optional[torch.Tensor], n: int) -> torch.Tensor:
    """Bool (B, n): the positions in ``idx`` (where ``valid``)."""
    src = torch.ones_like(idx, dtype=torch.bool) if valid is None else valid
    return torch.zeros(idx.shape[0], n, dtype=torch.bool, device=idx.device).scatter(1, idx, src)


def key_mask(valid: Optional[torch.Tensor], before: int, after: int = 0) -> Optional[torch.Tensor]:
    """``valid`` with ``before`` leading and ``after`` trailing always-valid tokens (class token,
    fused token); None when every row is valid."""
    if valid is None:
        return None
    B = valid.shape[0]
    return torch.cat([valid.new_ones(B, before), valid, valid.new_ones(B, after)], dim=1)


def weighted_mean(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of the rows of ``x`` (B, S, D) weighted by ``weights`` (B, S): (B, 1, D); 0 where all
    weights are 0."""
    w = weights.to(x.dtype).unsqueeze(-1)
    return (w * x).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
