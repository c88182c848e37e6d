"""The base of the methods that rank tokens by a class token's attention (EViT, Evo-ViT, ATS).

Detection backbones have no class token, so the method adds one, as the paper did for the methods
that need it: ``cls_token`` (truncated-normal init, std 0.02; a dense checkpoint does not hold it,
so it starts fresh and is trained in the finetune). It runs through every ViT block in front of
the patch tokens and never reaches the token map; the adapter's injectors and extractors never
see it. Its gradient comes through the attention of the patch tokens (and through the weights of
the tokens EViT fuses and Evo-ViT summarises).

The methods train and infer on the same path: the kept tokens are gathered and the blocks run on
them only (the selection is not learned, so there is nothing to make differentiable).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block

from .tokens import gather, keep_mask, scatter

__all__ = ["ClassAttentionMethod"]


class ClassAttentionMethod(nn.Module):
    """A class token and the kept patch tokens of the current forward.

    ``run_block(i, blk, x)`` runs block ``i`` on the token map ``x`` (B, N, D) and returns the new
    map and the keep mask (bool (B, N), None while every token is kept). ``keep_ratios[j]`` is the
    share of all N tokens pruning layer ``j`` keeps (or, for ATS, may keep at most).
    """

    #: the ``pruned_tokens`` values the method allows.
    PRUNED_TOKENS: tuple[str, ...] = ("discard", "preserve")

    def __init__(self, dim: int, prune_layers: Sequence[int], keep_ratios: Sequence[float]):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        trunc_normal_(self.cls_token, std=0.02)
        self.keep_ratios = [float(r) for r in keep_ratios]
        self.layer_of_block = {int(b): j for j, b in enumerate(prune_layers)}
        self.start()

    def start(self) -> None:
        """Reset the per-forward state; called before the first block."""
        self._cls: Optional[torch.Tensor] = None  # (B, 1, D)
        self._idx: Optional[torch.Tensor] = None  # (B, W) kept positions
        self._valid: Optional[torch.Tensor] = None  # (B, W) real rows of idx (None: all)

    def run_block(self, i: int, blk: Block, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    def class_token(self, x: torch.Tensor) -> torch.Tensor:
        """The class token's current state (B, 1, D); the parameter before the first block."""
        if self._cls is None:
            self._cls = self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)
        return self._cls

    def kept(self, x: torch.Tensor) -> torch.Tensor:
        """The kept rows of the token map (all of it while nothing is pruned)."""
        return x if self._idx is None else gather(x, self._idx)

    def put(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The token map with the kept rows replaced by ``rows``."""
        return rows if self._idx is None else scatter(x, self._idx, rows, self._valid)

    def keep(self, n: int) -> Optional[torch.Tensor]:
        """Bool (B, n): the kept tokens; None while every token is kept."""
        return None if self._idx is None else keep_mask(self._idx, self._valid, n)
