"""DynamicViT's attention masking in training (``masking="policy"``; raoyongming/DynamicViT,
``softmax_with_policy`` in ``models/dyvit.py``).

In every block after a pruning layer the straight-through keep decision ``d`` (0/1 in value,
carrying the keep probability's gradient) multiplies the exponentiated attention of each key
inside the softmax, with an identity term that lets a pruned query attend to itself::

    w_ij = exp(a_ij - max_j a_ij) * (d_j + (1 - d_j) * [i == j])
    attn_ij = (w_ij + eps / N) / (sum_j w_ij + eps)          (float32, eps = 1e-6)

There is no gating of the block output, so the detection loss reaches a decision through the
attention of every later block (a pruned token's decision learns whether kept tokens would have
used it). With the same decisions, the kept tokens' outputs equal those of the gated form
(:func:`~prunebench.models.blocks.gated_block`) up to the ``eps`` terms.

Pruned tokens: DynamicViT's classifier never reads them, so its code lets them run on; a detection
backbone's token map does read them, so here every pruned token keeps its value from the block
that pruned it (a hard, detached selection, as at inference where they are not computed). With
``pruned_tokens: preserve`` (``dynamicvit-preserve``) that value is what the feature map, the
adapter's extractors and (with their update) its injectors see; with ``discard`` it is zeroed at
the output as for every selector. A kept token never sees a pruned one except through the policy.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block

from .methods.tokens import attention_residual, feed_forward, queries_keys_values

__all__ = ["MASKINGS", "softmax_with_policy", "policy_block"]

#: how pruned tokens are masked in training: ``gate`` (SViT: detached key mask, gated output) or
#: ``policy`` (DynamicViT: the decision inside the softmax of every later block).
MASKINGS = ("gate", "policy")


def softmax_with_policy(logits: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DynamicViT's softmax of attention ``logits`` (B, H, N, N) under the keep ``policy`` (B, N)
    (module docstring); float32 inside, returned in the logits' dtype."""
    N = logits.shape[-1]
    p = policy.float().reshape(-1, 1, 1, N)
    eye = torch.eye(N, dtype=torch.float32, device=logits.device).view(1, 1, N, N)
    p = p + (1.0 - p) * eye
    w = (logits.float() - logits.float().amax(dim=-1, keepdim=True)).exp() * p
    return ((w + eps / N) / (w.sum(dim=-1, keepdim=True) + eps)).to(logits.dtype)


def policy_block(blk: Block, x: torch.Tensor, policy: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """``blk`` on all tokens of ``x`` (B, N, D) with DynamicViT's attention under ``policy``
    (B, N: straight-through keep decision); the tokens outside ``hard`` (bool (B, N)) keep their
    value."""
    q, k, v = queries_keys_values(blk, x)
    weights = blk.attn.attn_drop(softmax_with_policy((q * blk.attn.scale) @ k.transpose(-2, -1), policy))
    y = feed_forward(blk, attention_residual(blk, x, weights @ v))
    return torch.where(hard.unsqueeze(-1), y, x)
