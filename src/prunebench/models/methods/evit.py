"""EViT (Liang et al., "Not All Patches are What You Need", ICLR 2022; youweiliang/evit).

At each pruning block, after its attention, the patch tokens the class token attends to most
(attention averaged over heads) are kept: ``round(r*N)`` of all N tokens at pruning layer ``j``
(``keep_ratios`` 0.7 / 0.49 / 0.343 keep 0.7 of the previous stage each). The others are fused
into one token, their mean weighted by that attention; the previous fused token joins the fusion
with its own weight, so one fused token stands for every token pruned so far. The block's MLP
and every later block run on the class token, the kept tokens and the fused token; the fused
token never reaches the token map. (EViT's code sums the weighted tokens without dividing by the
weights' sum; prunebench takes the weighted mean, so the fused token keeps the scale of a token.)
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.models.vision_transformer import Block

from ..selectors import num_kept
from .base import ClassAttentionMethod
from .tokens import attend, feed_forward, gather, weighted_mean

__all__ = ["EViT"]


class EViT(ClassAttentionMethod):
    """EViT's top-k by class attention with inattentive-token fusion (module docstring)."""

    def start(self) -> None:
        super().start()
        self._fused: Optional[torch.Tensor] = None  # (B, 1, D) once a stage has pruned

    def run_block(self, i: int, blk: Block, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        N = int(x.shape[1])
        fused = [] if self._fused is None else [self._fused]
        seq = torch.cat([self.class_token(x), self.kept(x), *fused], dim=1)
        j = self.layer_of_block.get(i)
        seq = blk(seq) if j is None else self._prune(blk, seq, num_kept(self.keep_ratios[j], N), bool(fused))
        width = N if self._idx is None else int(self._idx.shape[1])
        self._cls, rows, tail = seq[:, :1], seq[:, 1 : 1 + width], seq[:, 1 + width :]
        self._fused = tail if tail.shape[1] else None
        return self.put(x, rows), self.keep(N)

    def _prune(self, blk: Block, seq: torch.Tensor, k: int, has_fused: bool) -> torch.Tensor:
        """Attention on ``seq`` (class token, kept tokens, fused token), then keep the ``k``
        patch tokens with the most class attention, fuse the rest, and run the MLP."""
        a, cls_attn, _ = attend(blk, seq)
        score = cls_attn.mean(dim=1)  # (B, S): EViT averages the heads
        width = int(seq.shape[1]) - 1 - has_fused
        if k >= width:
            return feed_forward(blk, a)
        patches, patch_score = a[:, 1 : 1 + width], score[:, 1 : 1 + width]
        top = patch_score.topk(k, dim=1).indices.sort(dim=1).values
        pruned = torch.ones_like(patch_score, dtype=torch.bool).scatter(
            1, top, torch.zeros_like(top, dtype=torch.bool)
        )
        rows, weights = [patches], [patch_score * pruned]
        if has_fused:
            rows.append(a[:, -1:])
            weights.append(score[:, -1:])
        fused = weighted_mean(torch.cat(rows, dim=1), torch.cat(weights, dim=1))
        self._idx = top if self._idx is None else self._idx.gather(1, top)
        return feed_forward(blk, torch.cat([a[:, :1], gather(patches, top), fused], dim=1))
