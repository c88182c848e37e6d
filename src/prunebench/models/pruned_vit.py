"""PrunedViT: a plain DeiT backbone with token pruning and a ViTDet-style simple pyramid.

Blocks are timm ``Block`` modules (so DeiT, dense and pruned checkpoints share keys); the pruning
policy (selectors, stages, masked and sparse paths) is :class:`PrunedBackbone`'s. Inputs whose H
or W is not a multiple of 32 are zero-padded at the bottom/right.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

from ..axes import ARCHS
from .pruned_backbone import PrunedBackbone, pad_to_32

__all__ = ["PrunedViT", "ARCHS"]


class SimplePyramid(nn.Module):
    """ViTDet-style pyramid from the stride-16 map: deconvolutions up, max-pooling down.

    Each level then gets ``Conv1x1 -> LayerNorm2d`` to ``out_channels`` (an FPN neck follows).
    Only the ``levels`` the neck takes are built (0..3: strides 4, 8, 16, 32; keys by level).
    """

    def __init__(self, dim: int, out_channels: int, levels=(0, 1, 2, 3)):
        super().__init__()
        scales = [
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
        outs = [
            nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False), LayerNorm2d(out_channels))
            for c in (dim // 4, dim // 2, dim, dim)
        ]
        self.scales = nn.ModuleDict({str(i): scales[i] for i in levels})
        self.outs = nn.ModuleDict({str(i): outs[i] for i in levels})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(out(self.scales[i](x)) for i, out in self.outs.items())


class PrunedViT(PrunedBackbone):
    """DeiT backbone with token pruning; returns maps at strides 4, 8, 16, 32 (those of
    ``out_indices``: levels 0..3, the maps the neck takes).

    Args:
        arch: ``deit-tiny`` | ``deit-small`` | ``deit-base`` | ``vit-base`` | ``vit-large`` |
            ``dinov2-small`` | ``dinov2-base`` | ``dinov2-large``; ``embed_dim``, ``depth`` and
            ``num_heads`` override its dimensions, ``layer_scale`` (LayerScale's initial value;
            DINOv2's 1e-5 by default, 0 for none; DeiT-III's 1e-6) and ``pretrain_img_size``
            (the position grid: 224 px, DINOv2's 592) its defaults (``axes.ARCH_DEFAULTS``).
        prune_layers: 0-based block indices that may prune; ``[]`` is dense.
        keep_ratios: target fraction of all N tokens kept at each pruning layer, in (0, 1].
        pruned_tokens: ``preserve`` (pruned tokens keep their value and reach the output),
            ``discard`` (their position in the final token map is zero) or ``merge`` (each joins its
            most similar kept token and takes its value in the output; no reactivation).
        reactivation: a selector at every pruning layer scores all tokens (needs ``preserve``);
            otherwise one selector per stage of equal ratios, and the kept sets nest.
        rate: ``fixed`` (exactly ``round(r*N)`` tokens per image at inference; per-image
            keep-ratio loss) or ``dynamic`` (per-token decisions at inference; batch-level loss).
        selector: ``mlp`` | ``gating`` | a plug-in registered in ``SELECTORS``.
        method: ``selector`` (the learned selectors of the four axes) or a prior method's
            mechanism, ``evit`` | ``evo-vit`` | ``ats`` (:mod:`prunebench.models.methods`; they
            ignore ``reactivation``, ``rate``, ``selector``, ``selector_*``, ``sparse_mode`` and
            ``masked_eval``), or a merging method, ``tome`` | ``atc`` (``pruned_tokens: merge``).
        linkage: ``atc``'s linkage, ``average`` | ``complete`` | ``single``.
        proportional_attention: merged tokens attend with ``log(size)`` added to their logits.
        tau: Gumbel-softmax temperature.
        selector_init: how fresh selectors start: ``official`` (default layer init, about 50 %
            kept each), ``target`` (``logit(share)`` bias) or ``calibrated`` (also calibrated on
            the first training batch).
        selector_inference: ``argmax`` (deterministic) or ``gumbel`` (sampled, as the official
            detection code tests).
        pretrained: path of an ImageNet DeiT checkpoint, loaded by :meth:`init_weights`
            (official DeiT ``.pth``, timm ``.pth``/``.bin`` or ``.safetensors``).
        sparse_mode: eval path for per-image counts at batch > 1 (``auto``|``loop``|``padded``).
        masked_eval: run the masked training-style path in eval mode too (equivalence tests
            only; it is slower). Also settable as an attribute.
        masking: how the masked path excludes pruned tokens: ``gate`` (SViT's detached key mask
            and gated block output) or ``policy`` (DynamicViT's decision inside every later
            block's softmax, :mod:`prunebench.models.policy`).
        rounding: how the fixed rate's ``r*N`` becomes a count at inference: ``round`` (SViT),
            ``floor`` (DynamicViT's ``int``) or ``ceil``.

    After each forward, ``last_keep_masks`` holds one bool ``(B, N)`` tensor per pruning layer:
    the tokens that layer's block processed (EViT, ATS: its MLP, after they pruned in the block),
    and ``last_tokens`` the final token map ``(B, N, D)``.
    """

    FRESH = ("pyramid.", *PrunedBackbone.FRESH)

    def __init__(self, *args, out_channels: int = 256, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = nn.LayerNorm(self.embed_dim, eps=1e-6)
        self.pyramid = SimplePyramid(self.embed_dim, out_channels, self.out_indices)
        self._init_vit()

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, h, w = self.tokens(pad_to_32(img))
        self.start_pruning()
        for i in range(len(self.blocks)):
            x = self.run_block(i, x)
        self.finish_pruning()
        x = self.last_tokens = self.norm(self.unmerge(x))
        if self.pruned_tokens == "discard" and self.keep is not None:
            x = x * self.keep.to(x.dtype).unsqueeze(-1)
        B, _, D = x.shape
        return self.pyramid(x.transpose(1, 2).reshape(B, D, h, w))
