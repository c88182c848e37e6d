"""EViT (Liang et al., "Not All Patches are What You Need", ICLR 2022; youweiliang/evit).

At each pruning block, after its attention, the tokens the class token attends to most (attention
averaged over heads) are kept: ``ceil(rate * W)`` of the ``W`` tokens after the class token, as
EViT's ``math.ceil(keep_rate * (N - 1))``, where ``rate`` is the stage's share of the previous
stage (``keep_ratios`` 0.7 / 0.49 / 0.343 of all tokens: 0.7 each). The others are fused into one
new token, their mean weighted by that attention, appended after the kept ones. As in EViT's code,
a previous stage's fused token is an ordinary token of the next stage: it counts in ``W``,
competes in the top-k, and when kept stays beside the new fused token (a sequence can carry one
fused token per stage); when not kept it is fused again. The block's MLP and every later block run
on the class token, the kept tokens and the fused tokens; fused tokens never reach the token map.
(EViT's code sums the weighted tokens without dividing by the weights' sum; prunebench takes the
weighted mean, so the fused token keeps the scale of a token.)
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.models.vision_transformer import Block

from ..selectors import num_kept
from .base import ClassAttentionMethod
from .tokens import attend, feed_forward, gather, weighted_mean

__all__ = ["EViT"]

FUSED = -1  # the position of a fused token (it has none in the token map)


class EViT(ClassAttentionMethod):
    """EViT's top-k by class attention with inattentive-token fusion (module docstring)."""

    def start(self) -> None:
        super().start()
        self._pos: Optional[torch.Tensor] = None  # (B, W) token-map position of each row, FUSED
        self._rows: Optional[torch.Tensor] = None  # (B, W, D) the rows after the last block

    def run_block(self, i: int, blk: Block, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        seq = torch.cat([self.class_token(x), self._sequence(x)], dim=1)
        j = self.layer_of_block.get(i)
        if j is not None:
            previous = self.keep_ratios[j - 1] if j else 1.0
            seq = self._prune(blk, seq, self.keep_ratios[j] / previous)
        else:
            seq = blk(seq)
        self._cls, self._rows = seq[:, :1], seq[:, 1:]
        return self._put(x), self._kept(int(x.shape[1]))

    def _prune(self, blk: Block, seq: torch.Tensor, rate: float) -> torch.Tensor:
        """Attention on ``seq`` (class token, then the other rows), keep the ``ceil(rate * W)``
        rows with the most class attention, fuse the rest into a new row, and run the MLP."""
        a, cls_attn, _ = attend(blk, seq)
        score = cls_attn.mean(dim=1)[:, 1:]  # (B, W): EViT averages the heads
        B, W = score.shape
        k = num_kept(rate, W, "ceil")
        if k >= W:
            return feed_forward(blk, a)
        top = score.topk(k, dim=1).indices.sort(dim=1).values
        pruned = torch.ones_like(score, dtype=torch.bool).scatter(
            1, top, torch.zeros_like(top, dtype=torch.bool)
        )
        rows = a[:, 1:]
        fused = weighted_mean(rows, score * pruned)
        pos = torch.arange(W, device=seq.device).expand(B, W) if self._pos is None else self._pos
        self._pos = torch.cat([pos.gather(1, top), pos.new_full((B, 1), FUSED)], dim=1)
        return feed_forward(blk, torch.cat([a[:, :1], gather(rows, top), fused], dim=1))

    def _sequence(self, x: torch.Tensor) -> torch.Tensor:
        """The rows after the class token: the kept tokens read from the map ``x`` (which the
        adapter's injectors may have updated), the fused tokens from the last block."""
        if self._pos is None:
            return x
        patches = gather(x, self._pos.clamp(min=0))
        return torch.where((self._pos != FUSED).unsqueeze(-1), patches, self._rows)

    def _put(self, x: torch.Tensor) -> torch.Tensor:
        """The token map with the kept tokens' rows written back (fused rows go nowhere)."""
        if self._pos is None:
            return self._rows
        B, N, D = x.shape
        idx = self._pos.masked_fill(self._pos == FUSED, N).unsqueeze(-1).expand(-1, -1, D)
        return torch.cat([x, x.new_zeros(B, 1, D)], dim=1).scatter(1, idx, self._rows)[:, :N]

    def _kept(self, n: int) -> Optional[torch.Tensor]:
        """Bool (B, n): the token-map positions among the rows; None while nothing is pruned."""
        if self._pos is None:
            return None
        idx = self._pos.masked_fill(self._pos == FUSED, n)
        out = torch.zeros(idx.shape[0], n + 1, dtype=torch.bool, device=idx.device)
        return out.scatter(1, idx, torch.ones_like(idx, dtype=torch.bool))[:, :n]
