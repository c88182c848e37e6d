"""PrunedViT: a plain DeiT backbone with token pruning and a ViTDet-style simple pyramid.

Blocks are timm ``Block`` modules (so DeiT, dense and pruned checkpoints share keys). Selectors
decide which tokens the blocks in ``prune_layers`` process:

* without reactivation (as the official code): consecutive pruning layers with the same target
  ratio form a stage; one selector sits at the first block of each stage, scores the tokens still
  kept, and its decision holds for the whole stage, so the kept sets nest;
* with reactivation: a selector before every pruning layer scores *all* tokens.

Two execution paths give the same result:

* masked (training, or eval with ``masked_eval=True``): all N tokens stay in the sequence,
  pruned tokens are excluded as attention keys and each block's residual update is multiplied
  by the straight-through keep decision, so the selectors receive gradients;
* sparse (eval): the kept tokens are gathered, the block runs on them only, and the outputs are
  scattered back (``sparse_mode``: how per-image counts at batch > 1 are batched).

Inputs whose H or W is not a multiple of 32 are zero-padded at the bottom/right.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import partial
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block

from ..axes import ARCHS, PRUNING_AXES, impossible, stages
from .blocks import SPARSE_MODES, gated_block, sparse_block
from .deit_weights import load_pretrained
from .selectors import build_selector, keep_decision

__all__ = ["PrunedViT", "ARCHS"]


class SimplePyramid(nn.Module):
    """ViTDet-style pyramid from the stride-16 map: deconvolutions up, max-pooling down.

    Each level then gets ``Conv1x1 -> LayerNorm2d`` to ``out_channels`` (an FPN neck follows).
    """

    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.scales = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(dim, dim // 2, 2, 2),
                    LayerNorm2d(dim // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2),
                ),
                nn.ConvTranspose2d(dim, dim // 2, 2, 2),
                nn.Identity(),
                nn.MaxPool2d(2),
            ]
        )
        self.outs = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False), LayerNorm2d(out_channels))
                for c in (dim // 4, dim // 2, dim, dim)
            ]
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(out(scale(x)) for scale, out in zip(self.scales, self.outs))


class PrunedViT(BaseModule):
    """DeiT backbone with token pruning; returns maps at strides 4, 8, 16, 32.

    Args:
        arch: ``deit-tiny`` | ``deit-small`` | ``deit-base``; ``embed_dim``, ``depth`` and
            ``num_heads`` override its dimensions.
        prune_layers: 0-based block indices that may prune; ``[]`` is dense.
        keep_ratios: target fraction of all N tokens kept at each pruning layer, in (0, 1].
        pruned_tokens: ``preserve`` (pruned tokens keep their value and reach the output) or
            ``discard`` (their position in the final token map is zero).
        reactivation: a selector at every pruning layer scores all tokens (needs ``preserve``);
            otherwise one selector per stage of equal ratios, and the kept sets nest.
        rate: ``fixed`` (exactly ``round(r*N)`` tokens per image at inference; per-image
            keep-ratio loss) or ``dynamic`` (per-token decisions at inference; batch-level loss).
        selector: ``mlp`` | ``gating``.
        tau: Gumbel-softmax temperature.
        pretrained: path of an ImageNet DeiT checkpoint, loaded by :meth:`init_weights`
            (official DeiT ``.pth``, timm ``.pth``/``.bin`` or ``.safetensors``).
        sparse_mode: eval path for per-image counts at batch > 1 (``auto``|``loop``|``padded``).
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
        pretrained: Optional[str] = None,
        sparse_mode: str = "auto",
        masked_eval: bool = False,
        init_cfg: Optional[dict] = None,
    ):
        super().__init__(init_cfg=init_cfg)
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
        for name, value in (
            ("pruned_tokens", pruned_tokens),
            ("rate", rate),
            ("selector", selector),
            ("reactivation", reactivation),
        ):
            if value not in PRUNING_AXES[name]:
                raise ValueError(f"unknown {name} {value!r}; expected one of {PRUNING_AXES[name]}")
        reason = impossible(dict(pruned_tokens=pruned_tokens, reactivation=reactivation))
        if reason:
            raise ValueError(reason)
        d, n_blocks, heads = ARCHS[arch]
        embed_dim, depth, num_heads = embed_dim or d, depth or n_blocks, num_heads or heads
        prune_layers, keep_ratios = [int(i) for i in prune_layers], [float(r) for r in keep_ratios]
        if len(prune_layers) != len(keep_ratios):
            raise ValueError(
                f"keep_ratios has {len(keep_ratios)} values but prune_layers has "
                f"{len(prune_layers)}; give one ratio per pruning layer"
            )
        if prune_layers != sorted(set(prune_layers)) or any(not 0 <= i < depth for i in prune_layers):
            raise ValueError(
                f"prune_layers {prune_layers} must be distinct, increasing block indices in [0, {depth})"
            )
        if any(not 0.0 < r <= 1.0 for r in keep_ratios):
            raise ValueError(f"keep_ratios {keep_ratios} must all lie in (0, 1]")
        if not reactivation and keep_ratios != sorted(keep_ratios, reverse=True):
            raise ValueError(
                f"keep_ratios {keep_ratios} must not increase without reactivation "
                "(the kept set can only shrink)"
            )
        if sparse_mode not in SPARSE_MODES:
            raise ValueError(f"unknown sparse_mode {sparse_mode!r}; expected one of {SPARSE_MODES}")
        if embed_dim % 4 or embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by 4 and by num_heads {num_heads}")

        self.patch_size = patch_size
        self.prune_layers, self.keep_ratios = prune_layers, keep_ratios
        self.pruned_tokens, self.reactivation, self.rate, self.tau = pruned_tokens, reactivation, rate, tau
        self.pretrained, self.sparse_mode, self.masked_eval = pretrained, sparse_mode, masked_eval
        self.last_keep_masks: list[torch.Tensor] = []
        self._keep_decisions: list[tuple[torch.Tensor, float]] = []
        # selector index of each pruning layer: its own (reactivation) or its stage's first layer's
        self.selector_of_layer = list(range(len(prune_layers))) if reactivation else stages(keep_ratios)

        self.pretrain_grid = pretrain_img_size // patch_size
        self.patch_embed = PatchEmbed(
            pretrain_img_size, patch_size, 3, embed_dim, strict_img_size=False, output_fmt="NHWC"
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pretrain_grid**2, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias=True,
                    drop_path=dpr[i],
                    norm_layer=partial(nn.LayerNorm, eps=1e-6),
                )
                for i in range(depth)
            ]
        )
        n_selectors = len(set(self.selector_of_layer))
        self.selectors = nn.ModuleList([build_selector(selector, embed_dim) for _ in range(n_selectors)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.pyramid = SimplePyramid(embed_dim, out_channels)

        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_linear)
        for s, share in enumerate(self.initial_keep_shares()):
            self.selectors[s].init_keep_share(share)
        self.register_load_state_dict_post_hook(_fresh_selectors_hook)

    def initial_keep_shares(self) -> list[float]:
        """Share of the tokens it may keep that each fresh selector starts keeping: its target,
        relative to the previous stage's target without reactivation (kept sets nest)."""
        firsts = [self.selector_of_layer.index(s) for s in range(len(self.selectors))]
        targets = [self.keep_ratios[j] for j in firsts]
        if self.reactivation:
            return targets
        return [r / (targets[s - 1] if s else 1.0) for s, r in enumerate(targets)]

    def init_weights(self) -> None:
        """MMEngine's weight init, then the ImageNet DeiT checkpoint of ``pretrained``."""
        super().init_weights()
        if self.pretrained:
            report = load_pretrained(self, self.pretrained)
            print_log(report.line(), logger="current", level=logging.INFO)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        g = self.pretrain_grid
        if (h, w) == (g, g):
            return self.pos_embed
        pos = self.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        H, W = img.shape[-2:]
        img = F.pad(img, (0, -W % 32, 0, -H % 32))
        x = self.patch_embed(img)
        B, h, w, D = x.shape
        x = x.reshape(B, h * w, D) + self._pos_embed(h, w)

        masked = self.training or self.masked_eval
        keep, masks, decisions, current = None, [], [], None
        for i, blk in enumerate(self.blocks):
            if i in self.prune_layers:
                j = self.prune_layers.index(i)
                s = self.selector_of_layer[j]
                if s != current:  # a new decision: every layer with reactivation, else per stage
                    current = s
                    available = None if self.reactivation or keep is None else keep > 0.5
                    if self.selectors[s].needs_calibration():
                        self.selectors[s].calibrate(x, available)
                    logits = self.selectors[s](x, available)
                    new = keep_decision(
                        logits, available, self.keep_ratios[j], self.rate, self.training, self.tau
                    )
                    if self.training and available is not None:
                        new = new * keep  # nested: gradient flows through both decisions
                    keep = new
                    if self.training:
                        decisions.append((keep, self.keep_ratios[j]))
                masks.append((keep > 0.5).detach())
            if keep is None:
                x = blk(x)
            elif masked:
                x = gated_block(blk, x, keep)
            else:
                x = sparse_block(blk, x, keep, mode=self.sparse_mode)
        self.last_keep_masks, self._keep_decisions = masks, decisions

        x = self.norm(x)
        if self.pruned_tokens == "discard" and keep is not None:
            x = x * keep.to(x.dtype).unsqueeze(-1)
        return self.pyramid(x.transpose(1, 2).reshape(B, D, h, w))

    def keep_ratio_loss(self) -> torch.Tensor:
        """Keep-ratio loss of the last training forward, as the official code: per selector
        decision the squared gap between achieved and target share of all N tokens, averaged
        over decisions (per stage without reactivation, per pruning layer with it; with equal
        stage lengths this is the mean over pruning layers). ``dynamic``: batch-level share;
        ``fixed``: per image, then averaged over images. Unweighted; 0 for a dense model."""
        if not self._keep_decisions:
            return self.pos_embed.new_zeros(())
        terms = []
        for d, r in self._keep_decisions:
            if self.rate == "dynamic":
                terms.append((d.mean() - r) ** 2)
            else:
                terms.append(((d.mean(dim=1) - r) ** 2).mean())
        return torch.stack(terms).mean()


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
        modules = sorted({re.sub(r"(selectors\.\d+)\..*", r"\1", k) for k in fresh})
        print_log(
            f"PrunedViT: {len(modules)} selectors ({len(fresh)} tensors: "
            f"{', '.join(modules)}) are not in the checkpoint and start fresh",
            logger="current",
            level=logging.WARNING,
        )
