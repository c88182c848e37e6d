"""ToMe (Bolya et al., ICLR 2023) and ATC (Haurum et al., ECCV 2024; JoakimHaurum/ATC, its
ViT-Adapter detection code ``tome_atc_adapter.py``) as a backbone's ``method``.

At each pruning block, after its attention residual and before its MLP, the tokens are reduced
to ``int(ratio * T)`` of the current count T, ``ratio`` the stage's share of the previous stage
(``keep_ratios`` are shares of all N tokens, as for the other methods: 0.7 / 0.49 / 0.343 reduce
by 0.7 each). The metric is the block's keys averaged over heads (cosine). ``tome`` merges by
bipartite soft matching (at most half the tokens per block), ``atc`` by agglomerative clustering
(``linkage``). Merged tokens are size-weighted means and, with ``proportional_attention``, attend
with ``log(size)`` added to their keys' logits (:mod:`.merging`). The blocks really run on the
reduced tokens, in training and at inference; the backbone unmerges wherever it needs a full map.
No parameters: a dense checkpoint loads as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log
from timm.models.vision_transformer import Block

from .clustering import LINKAGES, agglomerative, bipartite_matching
from .merging import Clusters, attend_sized, block_sized, mean_keys
from .tokens import feed_forward

__all__ = ["TokenMerging", "stage_ratios"]


def stage_ratios(keep_ratios: Sequence[float]) -> list[float]:
    """Each pruning layer's share of the previous layer's tokens (rounded to 9 decimals, so that
    0.49 / 0.7 is 0.7 and ``int(ratio * T)`` counts as ATC's configs ask)."""
    prev = [1.0, *keep_ratios[:-1]]
    return [round(r / p, 9) for r, p in zip(keep_ratios, prev)]


class TokenMerging(nn.Module):
    """ToMe or ATC (module docstring); ``clusters`` holds the current merge state."""

    PRUNED_TOKENS: tuple[str, ...] = ("merge",)

    def __init__(
        self,
        algorithm: str,
        prune_layers: Sequence[int],
        keep_ratios: Sequence[float],
        linkage: str = "average",
        proportional_attention: bool = True,
    ):
        super().__init__()
        if linkage not in LINKAGES:
            raise ValueError(f"unknown linkage {linkage!r}; expected one of {LINKAGES}")
        self.algorithm, self.linkage, self.proportional_attention = algorithm, linkage, proportional_attention
        self.ratios = stage_ratios([float(r) for r in keep_ratios])
        if algorithm == "tome" and min(self.ratios, default=1.0) < 0.5:
            print_log(
                f"tome merges at most half the tokens per block (as ATC's code): stage ratios "
                f"{self.ratios} below 0.5 give 0.5",
                logger="current",
                level=logging.WARNING,
            )
        self.layer_of_block = {int(b): j for j, b in enumerate(prune_layers)}
        self.start()

    def start(self) -> None:
        """Reset the per-forward state; called before the first block."""
        self.clusters: Optional[Clusters] = None
        self._mask: Optional[torch.Tensor] = None

    def run_block(self, i: int, blk: Block, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Block ``i`` on the current tokens ``x`` (B, T, D); returns the new tokens and the
        representatives mask (B, N) (None before the first reduction)."""
        bias = (
            self.clusters.bias(x.dtype) if self.clusters is not None and self.proportional_attention else None
        )
        j = self.layer_of_block.get(i)
        if j is None:
            x = block_sized(blk, x, bias)
        else:
            a, keys = attend_sized(blk, x, bias)
            metric, T = mean_keys(keys), int(x.shape[1])
            count = int(self.ratios[j] * T)
            if self.algorithm == "tome":
                step, width = bipartite_matching(metric, T - count)
            else:
                step, width = agglomerative(metric, count, self.linkage)
            clusters = self.clusters or Clusters.identity(x)
            a, self.clusters = clusters.merge(a, step, width)
            self._mask = self.clusters.representatives()
            x = feed_forward(blk, a)
        return x, self._mask
