"""PrunedViT: a plain DeiT backbone with token pruning and a ViTDet-style simple pyramid.

Blocks are timm ``Block`` modules (so dense and pruned checkpoints share keys); a selector
before each block in ``prune_layers`` decides which tokens that block (and the following
blocks, up to the next selector) processes. Two execution paths give the same result:

* masked (training, or eval with ``masked_eval=True``): all N tokens stay in the sequence,
  pruned tokens are excluded as attention keys and each block's residual update is multiplied
  by the straight-through keep decision, so the selectors receive gradients;
* sparse (eval): the kept tokens are gathered, the block runs on them only, and the outputs are
  scattered back. With per-image counts (dynamic rate, batch > 1) images run one at a time
  (on CPU this measured faster than padding to the largest count and masking).

Inputs whose H or W is not a multiple of 32 are zero-padded at the bottom/right.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block

from .selectors import build_selector, keep_decision

__all__ = ["PrunedViT", "ARCHS"]

#: arch -> (embed_dim, depth, num_heads)
ARCHS = {"deit-tiny": (192, 12, 3), "deit-small": (384, 12, 6), "deit-base": (768, 12, 12)}
_AXES = {
    "pruned_tokens": ("discard", "preserve"),
    "rate": ("fixed", "dynamic"),
    "selector": ("mlp", "gating"),
}


def gated_block(blk: Block, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Masked path: pruned tokens are not attention keys, and the block's residual updates
    are multiplied by ``keep`` ``(B, N)`` (0/1 values, straight-through gradient in training)."""
    key_bias = torch.zeros_like(keep, dtype=x.dtype).masked_fill(keep < 0.5, float("-inf"))
    gate = keep.to(x.dtype).unsqueeze(-1)
    x = x + gate * blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x), attn_mask=key_bias[:, None, None])))
    return x + gate * blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def sparse_block(blk: Block, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Sparse path: run ``blk`` on the kept tokens only (bool ``keep`` ``(B, N)``), scatter back."""
    B, N, D = x.shape
    counts = keep.sum(dim=1)
    if bool((counts == counts[0]).all()):
        idx = keep.nonzero()[:, 1].view(B, -1, 1).expand(-1, -1, D)
        return x.scatter(1, idx, blk(x.gather(1, idx)))
    rows = []
    for xb, kb in zip(x, keep):
        idx = kb.nonzero().squeeze(1)
        rows.append(xb.index_copy(0, idx, blk(xb[idx].unsqueeze(0)).squeeze(0)))
    return torch.stack(rows)


class SimplePyramid(nn.Module):
    """ViTDet-style pyramid from the stride-16 map: deconvolutions up, max-pooling down.

    Each level then gets ``Conv1x1 -> LayerNorm2d`` to ``out_channels`` (an FPN neck follows).
    """

    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.scales = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), LayerNorm2d(dim // 2), nn.GELU(),
                          nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2)),
            nn.ConvTranspose2d(dim, dim // 2, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2),
        ])
        self.outs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False), LayerNorm2d(out_channels))
            for c in (dim // 4, dim // 2, dim, dim)
        ])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(out(scale(x)) for scale, out in zip(self.scales, self.outs))


class PrunedViT(BaseModule):
    """DeiT backbone with token pruning; returns maps at strides 4, 8, 16, 32.

    Args:
        arch: ``deit-tiny`` | ``deit-small`` | ``deit-base``; ``embed_dim``, ``depth`` and
            ``num_heads`` override its dimensions.
        prune_layers: 0-based block indices with a selector before them; ``[]`` is dense.
        keep_ratios: target fraction of all N tokens kept at each pruning layer, in (0, 1].
        pruned_tokens: ``preserve`` (pruned tokens keep their value and reach the output) or
            ``discard`` (their position in the final token map is zero).
        reactivation: selectors score all tokens (needs ``preserve``); otherwise masks nest.
        rate: ``fixed`` (exactly ``round(r*N)`` tokens per image) or ``dynamic`` (per-token
            decisions, steered by :meth:`keep_ratio_loss`).
        selector: ``mlp`` | ``gating``.
        tau: Gumbel-softmax temperature.
        masked_eval: run the masked training-style path in eval mode too (equivalence tests
            only; it is slower). Also settable as an attribute.

    After each forward, ``last_keep_masks`` holds one bool ``(B, N)`` tensor per pruning layer:
    the tokens that layer's block processed.
    """

    def __init__(
        self,
        arch: str = "deit-small",
        embed_dim: Optional[int] = None,
        depth: Optional[int] = None,
        num_heads: Optional[int] = None,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        prune_layers: Sequence[int] = (),
        keep_ratios: Sequence[float] = (),
        pruned_tokens: str = "preserve",
        reactivation: bool = False,
        rate: str = "fixed",
        selector: str = "mlp",
        tau: float = 1.0,
        out_channels: int = 256,
        drop_path_rate: float = 0.0,
        pretrain_img_size: int = 224,
        masked_eval: bool = False,
        init_cfg: Optional[dict] = None,
    ):
        super().__init__(init_cfg=init_cfg)
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
        for name, value in (("pruned_tokens", pruned_tokens), ("rate", rate), ("selector", selector)):
            if value not in _AXES[name]:
                raise ValueError(f"unknown {name} {value!r}; expected one of {_AXES[name]}")
        if pruned_tokens == "discard" and reactivation:
            raise ValueError("reactivation needs pruned_tokens='preserve': a discarded token has "
                             "left the sequence and has no state to be reactivated with")
        d, n_blocks, heads = ARCHS[arch]
        embed_dim, depth, num_heads = embed_dim or d, depth or n_blocks, num_heads or heads
        prune_layers, keep_ratios = [int(i) for i in prune_layers], [float(r) for r in keep_ratios]
        if len(prune_layers) != len(keep_ratios):
            raise ValueError(f"keep_ratios has {len(keep_ratios)} values but prune_layers has "
                             f"{len(prune_layers)}; give one ratio per pruning layer")
        if prune_layers != sorted(set(prune_layers)) or any(not 0 <= i < depth for i in prune_layers):
            raise ValueError(f"prune_layers {prune_layers} must be distinct, increasing block "
                             f"indices in [0, {depth})")
        if any(not 0.0 < r <= 1.0 for r in keep_ratios):
            raise ValueError(f"keep_ratios {keep_ratios} must all lie in (0, 1]")
        if not reactivation and keep_ratios != sorted(keep_ratios, reverse=True):
            raise ValueError(f"keep_ratios {keep_ratios} must not increase without reactivation "
                             "(the kept set can only shrink)")
        if embed_dim % 4 or embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by 4 and by num_heads {num_heads}")

        self.patch_size = patch_size
        self.prune_layers, self.keep_ratios = prune_layers, keep_ratios
        self.pruned_tokens, self.reactivation, self.rate, self.tau = pruned_tokens, reactivation, rate, tau
        self.masked_eval = masked_eval
        self.last_keep_masks: List[torch.Tensor] = []
        self._keep_decisions: List[torch.Tensor] = []

        self.pretrain_grid = pretrain_img_size // patch_size
        self.patch_embed = PatchEmbed(pretrain_img_size, patch_size, 3, embed_dim,
                                      strict_img_size=False, output_fmt="NHWC")
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pretrain_grid ** 2, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i],
                  norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for i in range(depth)
        ])
        self.selectors = nn.ModuleList([build_selector(selector, embed_dim) for _ in prune_layers])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.pyramid = SimplePyramid(embed_dim, out_channels)

        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_linear)
        self.register_load_state_dict_post_hook(_fresh_selectors_hook)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        g = self.pretrain_grid
        if (h, w) == (g, g):
            return self.pos_embed
        pos = self.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, img: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        H, W = img.shape[-2:]
        img = F.pad(img, (0, -W % 32, 0, -H % 32))
        x = self.patch_embed(img)
        B, h, w, D = x.shape
        x = x.reshape(B, h * w, D) + self._pos_embed(h, w)

        masked = self.training or self.masked_eval
        keep, masks, decisions = None, [], []
        for i, blk in enumerate(self.blocks):
            if i in self.prune_layers:
                j = self.prune_layers.index(i)
                available = None if self.reactivation or keep is None else keep > 0.5
                logits = self.selectors[j](x, available)
                new = keep_decision(logits, available, self.keep_ratios[j], self.rate,
                                    self.training, self.tau)
                if self.training and available is not None:
                    new = new * keep  # nested masks; gradient flows through both decisions
                keep = new
                masks.append((keep > 0.5).detach())
                if self.training:
                    decisions.append(keep)
            if keep is None:
                x = blk(x)
            elif masked:
                x = gated_block(blk, x, keep)
            else:
                x = sparse_block(blk, x, keep)
        self.last_keep_masks, self._keep_decisions = masks, decisions

        x = self.norm(x)
        if self.pruned_tokens == "discard" and keep is not None:
            x = x * keep.to(x.dtype).unsqueeze(-1)
        return self.pyramid(x.transpose(1, 2).reshape(B, D, h, w))

    def keep_ratio_loss(self) -> torch.Tensor:
        """Sum over pruning layers of (batch-mean keep rate - target)^2, from the last training
        forward. Under the fixed rate it is ~0 by construction and returned detached."""
        if not self._keep_decisions:
            return self.pos_embed.new_zeros(())
        loss = sum((d.mean() - r) ** 2 for d, r in zip(self._keep_decisions, self.keep_ratios))
        return loss.detach() if self.rate == "fixed" else loss


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _fresh_selectors_hook(module: PrunedViT, incompatible_keys) -> None:
    """Let a dense checkpoint load into a pruned model: missing selector keys start fresh."""
    fresh = [k for k in incompatible_keys.missing_keys if "selectors." in k]
    if fresh:
        for k in fresh:
            incompatible_keys.missing_keys.remove(k)
        print_log(f"PrunedViT: {len(fresh)} selector parameters not in the checkpoint start "
                  f"fresh: {fresh}", logger="current", level=logging.WARNING)
