"""ATS (Fayyaz et al., "Adaptive Token Sampling for Efficient Vision Transformers", ECCV 2022;
adaptivetokensampling/ATS, ``ats_block.py``).

At each pruning block, after its attention, every kept patch token gets a significance score,
the class token's attention to it (summed over heads) times the norm of its value vector,
normalised over the tokens. Inverse transform sampling then picks at most ``K = round(r*N)``
tokens: the scores sorted ascending give a cumulative distribution (min-max normalised to
[0, 1]), ``K`` evenly spaced levels from its smallest non-zero value to 1 each pick the token whose
cumulative value is nearest, and duplicates collapse. Significant tokens cover wide steps of the
distribution and are picked by several levels, so the count varies per image (a dynamic rate)
and never exceeds its budget ``K``. The block's MLP and the later blocks run on the class token
and the sampled tokens; images of a batch are padded to the largest count (padding masked as
attention keys). Sampling is deterministic, as ATS at inference.

The ``ats`` preset is ATS's own DeiT-S schedule: a module in every block from the 4th on, each
with the full budget (``r = 1``: ``K = N`` levels), so the count comes from the significance
distribution alone; ``ats-budget`` caps three stages at the other methods' 0.7 / 0.49 / 0.343.
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.models.vision_transformer import Block

from ..selectors import num_kept
from .base import ClassAttentionMethod
from .tokens import attend, compact, feed_forward, gather, key_mask, run_block

__all__ = ["ATS", "sample_tokens"]


class ATS(ClassAttentionMethod):
    """ATS's adaptive token sampling (module docstring)."""

    def run_block(self, i: int, blk: Block, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        N = int(x.shape[1])
        seq = torch.cat([self.class_token(x), self.kept(x)], dim=1)
        keys = key_mask(self._valid, 1)
        j = self.layer_of_block.get(i)
        if j is None:
            seq = run_block(blk, seq, keys)
        else:
            a, cls_attn, v_norm = attend(blk, seq, keys)
            significance = cls_attn.sum(dim=1)[:, 1:] * v_norm[:, 1:]
            chosen = sample_tokens(significance, self._valid, num_kept(self.keep_ratios[j], N))
            order, valid = compact(chosen)
            self._idx = order if self._idx is None else self._idx.gather(1, order)
            self._valid = valid
            seq = feed_forward(blk, torch.cat([a[:, :1], gather(a[:, 1:], order)], dim=1))
        self._cls = seq[:, :1]
        return self.put(x, seq[:, 1:]), self.keep(N)


def sample_tokens(significance: torch.Tensor, valid: Optional[torch.Tensor], budget: int) -> torch.Tensor:
    """Bool (B, W): the tokens inverse transform sampling picks with ``budget`` levels from
    ``significance`` (B, W) >= 0 (``valid``: the real tokens, None for all)."""
    B, W = (int(d) for d in significance.shape)
    s = significance.float() if valid is None else significance.float().masked_fill(~valid, 0.0)
    order = (s if valid is None else s.masked_fill(~valid, -1.0)).argsort(dim=1)  # padding first
    first = s.new_zeros(B, 1, dtype=torch.long) if valid is None else (~valid).sum(dim=1, keepdim=True)
    cdf = s.gather(1, order).cumsum(dim=1)
    low = cdf.gather(1, first)  # the smallest real token's: min-max over the real tokens
    cdf = ((cdf - low) / (cdf[:, -1:] - low).clamp_min(1e-12)).contiguous()
    y0 = cdf.masked_fill(cdf <= 0, 2.0).min(dim=1, keepdim=True).values.clamp(max=1.0)
    steps = torch.linspace(0, 1, budget, device=s.device) if budget > 1 else s.new_ones(1)
    levels = (y0 + (1 - y0) * steps).contiguous()  # (B, budget)
    hi = torch.maximum(torch.searchsorted(cdf, levels).clamp(max=W - 1), first)
    lo = torch.maximum(hi - 1, first)
    nearer_lo = (cdf.gather(1, lo) - levels).abs() <= (cdf.gather(1, hi) - levels).abs()
    picked = order.gather(1, torch.where(nearer_lo, lo, hi))
    return torch.zeros(B, W, dtype=torch.bool, device=s.device).scatter(
        1, picked, torch.ones_like(picked, dtype=torch.bool)
    )
