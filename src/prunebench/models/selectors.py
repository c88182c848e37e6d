"""Token selectors and keep decisions.

A selector maps tokens ``(B, N, D)`` to keep/prune logits ``(B, N, 2)`` (index 0 = keep).
:func:`keep_decision` turns logits into a decision:

* training (both rates, as in the official code and DynamicViT): per-token hard Gumbel-softmax
  with straight-through gradients. The returned float tensor is 0/1 in value and carries the soft
  keep probability's gradient; the keep-ratio loss steers how many tokens are kept.
* inference: ``rate="fixed"`` keeps exactly ``round(r*N)`` tokens per image (top-k of the keep
  score), so the cost is fixed; ``rate="dynamic"`` keeps the tokens whose keep logit wins, so each
  image keeps as many as it needs. A bool tensor.

Only ``available`` tokens can be kept, and every image keeps at least one token.
A fresh selector starts near a given keep share (:meth:`init_keep_share` sets the logit bias).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

__all__ = ["MlpSelector", "GatingSelector", "keep_decision", "num_kept", "build_selector",
           "set_keep_bias"]


class MlpSelector(nn.Module):
    """LayerNorm -> Linear(D, D/4) -> GELU -> Linear(D/4, 2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, dim // 4)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim // 4, 2)

    def forward(self, x: torch.Tensor, available: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))

    def init_keep_share(self, share: float) -> None:
        """Start keeping about ``share`` of the tokens (see :func:`set_keep_bias`)."""
        set_keep_bias(self.fc2, share)


class GatingSelector(nn.Module):
    """DynamicViT-style predictor: per-token local features concatenated with a global feature.

    ``LayerNorm -> Linear(D, D) -> GELU`` gives ``D/2`` local and ``D/2`` global channels; the
    global half is averaged over the ``available`` tokens and broadcast back; a 3-layer MLP
    ``D -> D/2 -> D/4 -> 2`` gives the logits.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.in_proj = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, dim), nn.GELU())
        self.out_mlp = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(),
            nn.Linear(dim // 2, dim // 4), nn.GELU(),
            nn.Linear(dim // 4, 2),
        )

    def forward(self, x: torch.Tensor, available: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.in_proj(x)
        local, glob = h.chunk(2, dim=-1)
        if available is None:
            glob = glob.mean(dim=1, keepdim=True)
        else:
            w = available.to(glob.dtype).unsqueeze(-1)
            glob = (glob * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp(min=1)
        return self.out_mlp(torch.cat([local, glob.expand_as(local)], dim=-1))

    def init_keep_share(self, share: float) -> None:
        """Start keeping about ``share`` of the tokens (see :func:`set_keep_bias`)."""
        set_keep_bias(self.out_mlp[-1], share)


def set_keep_bias(last: nn.Linear, share: float) -> None:
    """Bias the keep-minus-prune logit of ``last`` (the selector's output layer) by
    ``logit(share)``: under Gumbel noise a token with a zero feature contribution is then kept
    with probability ``share``, so an untrained selector is not over-pruned."""
    share = min(max(share, 1e-3), 1 - 1e-3)
    gap = math.log(share / (1 - share))
    with torch.no_grad():
        last.bias.copy_(torch.tensor([gap / 2, -gap / 2], dtype=last.bias.dtype))


_SELECTORS = {"mlp": MlpSelector, "gating": GatingSelector}


def build_selector(kind: str, dim: int) -> nn.Module:
    """Selector by axis value (``mlp`` | ``gating``)."""
    return _SELECTORS[kind](dim)


def num_kept(keep_ratio: float, num_tokens: int) -> int:
    """Tokens kept per image under the fixed rate: ``round(r*N)``, at least 1."""
    return max(1, round(keep_ratio * num_tokens))


def _topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    idx = score.topk(k, dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter(1, idx, torch.ones_like(idx, dtype=torch.bool))


def keep_decision(
    logits: torch.Tensor,
    available: Optional[torch.Tensor],
    keep_ratio: float,
    rate: str,
    training: bool,
    tau: float = 1.0,
) -> torch.Tensor:
    """Keep decision ``(B, N)`` from logits ``(B, N, 2)``; see the module docstring.

    ``available`` (bool ``(B, N)`` or None for all) marks the tokens that may be kept;
    ``keep_ratio`` is the target share of all N tokens (used by the fixed rate at inference).
    Returns a straight-through float tensor when ``training``, else a bool tensor.
    """
    # The 2-way (Gumbel-)softmax depends on the logit difference only; the difference of two
    # Gumbel samples is a logistic sample, so this is exactly a hard Gumbel-softmax.
    score = logits[..., 0] - logits[..., 1]
    if training:
        u = torch.rand_like(score).clamp_(1e-6, 1 - 1e-6)
        score = (score + u.log() - (-u).log1p()) / tau
    z = score.detach() if available is None else score.detach().masked_fill(~available, float("-inf"))
    if rate == "fixed" and not training:
        return _topk_mask(z, num_kept(keep_ratio, int(logits.shape[1])))
    keep = z > 0
    empty = ~keep.any(dim=1, keepdim=True)  # keep at least the best token of every image
    keep = keep | (_topk_mask(z, 1) & empty)
    if not training:
        return keep
    soft = score.sigmoid()
    return keep.to(soft.dtype) - soft.detach() + soft
