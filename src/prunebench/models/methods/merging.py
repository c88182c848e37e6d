"""Merged tokens: merge, unmerge, sizes and proportional attention, shared by the merging methods
(``tome``, ``atc``: :mod:`.token_merging`) and the ``merge`` fate of the learned selectors.

A :class:`Clusters` maps each of the N original token positions to a row of the current token
sequence (``assign`` (B, N)) and holds each row's size, the number of original tokens it stands
for (``size`` (B, T); a row of size 0 stands for none and is masked as an attention key).

* merge: each new row is the size-weighted mean of the rows merged into it; sizes add up;
* unmerge: every original position takes its row's value (a gather: the inverse of all merges);
* re-merge: a full map (B, N, D) back to rows, the mean over each row's original positions (the
  size-weighted mean of its members, as ATC re-merges an injector's output);
* proportional attention: ``log(size)`` added to each key's attention logits, so a token of
  size s attends as s copies of it would.

Merging decisions carry no gradient; merge, unmerge and re-merge are gathers, scatters and
weighted sums, so values and merge weights do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from .tokens import feed_forward

__all__ = ["Clusters", "attend_sized", "block_sized", "mean_keys"]


def _rows(idx: torch.Tensor, d: int) -> torch.Tensor:
    return idx.unsqueeze(-1).expand(-1, -1, d)


@dataclass
class Clusters:
    """Which row of the current sequence each original token is in, and each row's size."""

    assign: torch.Tensor  # (B, N) long
    size: torch.Tensor  # (B, T) float

    @classmethod
    def identity(cls, x: torch.Tensor) -> Clusters:
        """Every token its own row, of size 1 (``x`` (B, N, D))."""
        B, N, _ = x.shape
        assign = torch.arange(N, device=x.device).expand(B, -1)
        return cls(assign, x.new_ones(B, N, dtype=torch.float32))

    @property
    def width(self) -> int:
        """T, the number of rows."""
        return int(self.size.shape[1])

    def merge(
        self, x: torch.Tensor, step: torch.Tensor, width: int, weight: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Clusters]:
        """Merge the rows of ``x`` (B, T, D): row t goes to new row ``step[:, t]`` (< ``width``).
        Each new row is the mean of its members weighted by their sizes (times ``weight`` (B, T)
        where given: a differentiable factor of value 1). Returns the new rows and clusters."""
        step = step.detach()
        size = self.size.new_zeros(step.shape[0], width).scatter_add(1, step, self.size)
        w = self.size if weight is None else self.size * weight.float()
        total = w.new_zeros(step.shape[0], width).scatter_add(1, step, w)
        wx = (w / total.gather(1, step).clamp_min(1e-12)).to(x.dtype).unsqueeze(-1) * x
        rows = x.new_zeros(x.shape[0], width, x.shape[-1]).scatter_add(1, _rows(step, x.shape[-1]), wx)
        return rows, Clusters(step.gather(1, self.assign), size)

    def unmerge(self, x: torch.Tensor) -> torch.Tensor:
        """The full map (B, N, D) of rows ``x`` (B, T, D): each original position its row's value."""
        return x.gather(1, _rows(self.assign, x.shape[-1]))

    def remerge(self, full: torch.Tensor) -> torch.Tensor:
        """Rows (B, T, D) of a full map ``full`` (B, N, D): the mean over each row's positions
        (0 for a row of size 0)."""
        B, _, D = full.shape
        rows = full.new_zeros(B, self.width, D).scatter_add(1, _rows(self.assign, D), full)
        return rows / self.size.clamp_min(1.0).to(full.dtype).unsqueeze(-1)

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        """Proportional attention's additive key bias ``log(size)`` (B, 1, 1, T) (-inf: size 0)."""
        return self.size.log().to(dtype)[:, None, None]

    def representatives(self) -> torch.Tensor:
        """Bool (B, N): one original position per non-empty row (its first): the tokens that
        remain, for keep maps and keep ratios."""
        B, N = self.assign.shape
        pos = torch.arange(N, device=self.assign.device).expand(B, -1)
        first = pos.new_full((B, self.width), N).scatter_reduce(1, self.assign, pos, "amin")
        mark = torch.ones_like(first, dtype=torch.bool)  # (a tensor: a bool scalar does not trace)
        return torch.zeros(B, N + 1, dtype=torch.bool, device=pos.device).scatter(1, first, mark)[:, :N]


def attend_sized(
    blk: Block, x: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention half of ``blk`` on ``x`` (B, T, D) with an additive key ``bias`` (B, 1, 1, T)
    (:meth:`Clusters.bias`; None: none). Returns ``x + attention`` and the keys (B, H, T, d)."""
    attn = blk.attn
    B, T, _ = x.shape
    qkv = attn.qkv(blk.norm1(x)).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    mask = None if bias is None else bias.to(q.dtype)
    drop = attn.attn_drop.p if blk.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
    out = attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(B, T, attn.attn_dim))))
    return x + blk.drop_path1(blk.ls1(out)), k


def block_sized(blk: Block, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``blk`` on ``x`` with an additive key ``bias`` (proportional attention; None: plain)."""
    if bias is None:
        return blk(x)
    return feed_forward(blk, attend_sized(blk, x, bias)[0])


def mean_keys(k: torch.Tensor) -> torch.Tensor:
    """The similarity metric: keys (B, H, T, d) averaged over heads, unit length (B, T, d)."""
    m = k.detach().float().mean(dim=1)
    return m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
