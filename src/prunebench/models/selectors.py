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
A fresh selector starts near a given keep share, in training and at inference (:class:`Selector`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

__all__ = ["Selector", "MlpSelector", "GatingSelector", "keep_decision", "num_kept", "build_selector"]


#: spread (std of the keep-minus-prune logit over tokens) a fresh selector is calibrated to:
#: wide next to the logistic noise of the Gumbel decision (std 1.8), so that a fresh selector's
#: training decisions and its noise-free inference decisions keep about the same share.
CALIBRATED_SPREAD = 3.0


class Selector(nn.Module):
    """Base of the selectors: ``forward(x, available) -> (B, N, 2)`` logits from ``output``, the
    last Linear layer, and a start near a target keep share.

    :meth:`init_keep_share` sets the logit bias so that Gumbel decisions keep about ``share``.
    On the first forward, a fresh selector also calibrates itself on that batch (a data-dependent
    init, as Glow's ActNorm): its output layer is scaled to a logit spread of
    ``CALIBRATED_SPREAD`` and its bias set so that ``share`` of the available tokens win the
    noise-free argmax too. The ``calibrated`` buffer travels with checkpoints, so a resumed or
    finetuned selector is never recalibrated.
    """

    output: nn.Linear

    def __init__(self):
        super().__init__()
        self.register_buffer("calibrated", torch.tensor(False))
        self.share = 0.5
        self._calibrated_seen = False  # the buffer read once on the host, not on every forward

    def needs_calibration(self) -> bool:
        """True until calibrated; reads the (device) buffer only until it is True."""
        if not self._calibrated_seen:
            self._calibrated_seen = bool(self.calibrated)
        return not self._calibrated_seen

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._calibrated_seen = False  # re-read the loaded buffer

    def init_keep_share(self, share: float) -> None:
        """Keep about ``share`` of the tokens it may keep (``logit(share)`` bias)."""
        self.share = min(max(share, 1e-3), 1 - 1e-3)
        gap = math.log(self.share / (1 - self.share))
        with torch.no_grad():
            self.output.bias.copy_(torch.tensor([gap / 2, -gap / 2], dtype=self.output.bias.dtype))

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, available: Optional[torch.Tensor]) -> None:
        """Scale the output layer to the calibrated spread and set its bias so that ``share`` of
        the available tokens of ``x`` are kept by the argmax; once per selector."""
        w, b = self.output.weight, self.output.bias
        score = self(x.detach(), available)
        score = score[..., 0] - score[..., 1] - (b[0] - b[1])
        score = score.flatten() if available is None else score[available]
        spread = float(score.float().std()) if score.numel() > 1 else 0.0
        if spread > 0:
            scale = CALIBRATED_SPREAD / spread
            w.mul_(scale)
            score = score.float() * scale
            gap = -float(torch.quantile(score, 1 - self.share))
            b.copy_(torch.tensor([gap / 2, -gap / 2], dtype=b.dtype))
        self.calibrated.fill_(True)
        self._calibrated_seen = True


class MlpSelector(Selector):
    """LayerNorm -> Linear(D, D/4) -> GELU -> Linear(D/4, 2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, dim // 4)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim // 4, 2)

    @property
    def output(self) -> nn.Linear:
        return self.fc2

    def forward(self, x: torch.Tensor, available: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class GatingSelector(Selector):
    """DynamicViT-style predictor: per-token local features concatenated with a global feature.

    ``LayerNorm -> Linear(D, D) -> GELU`` gives ``D/2`` local and ``D/2`` global channels; the
    global half is averaged over the ``available`` tokens and broadcast back; a 3-layer MLP
    ``D -> D/2 -> D/4 -> 2`` gives the logits.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.in_proj = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, dim), nn.GELU())
        self.out_mlp = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 2),
        )

    @property
    def output(self) -> nn.Linear:
        return self.out_mlp[-1]

    def forward(self, x: torch.Tensor, available: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.in_proj(x)
        local, glob = h.chunk(2, dim=-1)
        if available is None:
            glob = glob.mean(dim=1, keepdim=True)
        else:
            w = available.to(glob.dtype).unsqueeze(-1)
            glob = (glob * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp(min=1)
        return self.out_mlp(torch.cat([local, glob.expand_as(local)], dim=-1))


_SELECTORS = {"mlp": MlpSelector, "gating": GatingSelector}


def build_selector(kind: str, dim: int) -> Selector:
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
