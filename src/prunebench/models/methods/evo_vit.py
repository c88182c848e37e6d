"""Evo-ViT (Xu et al., "Slow-Fast Token Evolution for Dynamic Vision Transformer", AAAI 2022;
YifanXu74/Evo-ViT; its ViT-Adapter port in uzh-rpg/svit, ``evovit_adapter.py``).

* Global class attention ``scores`` (B, N): the class token's attention summed over heads; every
  block mixes it in with momentum, ``scores = (1 - t) * scores + t * attention``, updating only
  the tokens that block processed. As Evo-ViT's released DeiT models (``tradeoff`` of
  ``deit/evo_deit.py``), ``t`` is 1 in the blocks before the first pruning layer (each replaces
  the scores: the first ranking uses the last dense block's attention alone) and 0.5 from the
  first pruning layer on (``TRADEOFF``; the svit port's constructor default is 0.5 everywhere).
* At each pruning layer the ``int(r*N)`` tokens (a floor, as Evo-ViT's code) with the highest
  scores are the informative tokens (every token competes again, so a placeholder can come back);
  the rest are placeholders.
* Slow path: the block runs on the class token, the informative tokens and a representative
  token, the placeholders' mean weighted by their scores. Fast path: each placeholder gets the
  representative token's update (its output minus its input) added, and changes in no other way.
  The blocks between pruning layers keep the last selection and run the same way.

The official DeiT code and the svit port leave the placeholders unchanged (their code notes that
"only preserving the placeholder tokens presents enough good results on DeiT"); the fast path is
Evo-ViT's method as its paper and its LeViT code define it. Placeholders stay in the token map,
so Evo-ViT needs ``pruned_tokens: preserve``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from timm.models.vision_transformer import Block

from ..selectors import num_kept
from .base import ClassAttentionMethod
from .tokens import attend, feed_forward, gather, keep_mask, scatter, weighted_mean

__all__ = ["EvoViT"]


class EvoViT(ClassAttentionMethod):
    """Evo-ViT's slow-fast token evolution (module docstring)."""

    PRUNED_TOKENS = ("preserve",)
    TRADEOFF = 0.5

    def __init__(self, dim: int, prune_layers: Sequence[int], keep_ratios: Sequence[float]):
        if prune_layers and min(prune_layers) < 1:
            raise ValueError(
                "evo-vit ranks tokens by the class attention of the blocks before a pruning layer; "
                f"prune_layers {list(prune_layers)} must start at block 1 or later"
            )
        super().__init__(dim, prune_layers, keep_ratios)

    def start(self) -> None:
        super().start()
        self.scores: Optional[torch.Tensor] = None

    def run_block(self, i: int, blk: Block, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        N = int(x.shape[1])
        cls = self.class_token(x)
        j = self.layer_of_block.get(i)
        if j is not None:
            k = num_kept(self.keep_ratios[j], N, "floor")
            self._idx = self.scores.topk(k, dim=1).indices.sort(dim=1).values
        if self._idx is None:  # before the first pruning layer every token takes the slow path
            a, cls_attn, _ = attend(blk, torch.cat([cls, x], dim=1))
            out = feed_forward(blk, a)
            self._mix_scores(cls_attn[:, :, 1:].sum(dim=1), 1.0)
            self._cls = out[:, :1]
            return out[:, 1:], None
        keep = keep_mask(self._idx, None, N)
        rep = weighted_mean(x, self.scores * ~keep)
        a, cls_attn, _ = attend(blk, torch.cat([cls, gather(x, self._idx), rep], dim=1))
        out = feed_forward(blk, a)
        self._mix_scores(cls_attn[:, :, 1:-1].sum(dim=1), self.TRADEOFF)
        x = x + (~keep).unsqueeze(-1).to(x.dtype) * (out[:, -1:] - rep)  # fast path: placeholders
        self._cls = out[:, :1]
        return scatter(x, self._idx, out[:, 1:-1], None), keep

    def _mix_scores(self, attention: torch.Tensor, t: float) -> None:
        """Momentum ``t`` update of the global class attention of the tokens the block processed."""
        if self.scores is None:
            self.scores = attention
        elif self._idx is None:
            self.scores = (1 - t) * self.scores + t * attention
        else:
            mixed = (1 - t) * self.scores.gather(1, self._idx) + t * attention
            self.scores = self.scores.scatter(1, self._idx, mixed)
