"""PrunedViTAdapter: the paper's SViT-Adapter. ViT-Adapter (DeiT blocks, a CNN spatial prior
module, deformable-attention injectors and extractors around each group of blocks) with token
pruning inside the ViT blocks only; the adapter always runs on every token.

Pruned tokens, per axis (the official code defines ``preserve``; ``discard`` is prunebench's):

* ``preserve``: the token map keeps every token; a pruned token keeps its last value, later
  injectors still update it, and every extractor and the final feature addition read it;
* ``discard``: a pruned token leaves the map: from the end of the interaction whose block pruned
  it, its position holds zero; later injectors leave it at zero, extractors read it as padding
  (deformable attention's padding mask: its value is zero) and the final addition adds zero.

State-dict names follow the official code (``spm.*``, ``level_embed``, ``interactions.N.*``,
``up``, ``norm1..4``, ``blocks.N.*`` in timm's layout), so a dense ViT-Adapter backbone loads
by name once its ``pos_embed`` class slot is cut (``prunebench convert``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..axes import ARCH_DEFAULTS
from .adapter_modules import Geometry, InteractionBlock, SpatialPriorModule, to_map
from .ms_deform_attn import DeformableAttention
from .pruned_backbone import PrunedBackbone, pad_to_32

__all__ = ["PrunedViTAdapter", "INTERACTION_INDEXES"]

#: the official groups of blocks between injector and extractor (0-based, inclusive).
INTERACTION_INDEXES = [[0, 2], [3, 5], [6, 8], [9, 11]]


def interaction_groups(depth: int) -> list[list[int]]:
    """ViT-Adapter's four equal groups of blocks: 12 blocks -> ``INTERACTION_INDEXES``, 24 blocks
    (ViT-Adapter-L) -> ``[[0, 5], [6, 11], [12, 17], [18, 23]]``."""
    bounds = [round(depth * k / 4) for k in range(5)]
    return [[bounds[k], bounds[k + 1] - 1] for k in range(4)]


class PrunedViTAdapter(PrunedBackbone):
    """ViT-Adapter backbone with token pruning; returns maps at strides 4, 8, 16, 32 (those of
    ``out_indices``) with ``embed_dim`` channels (SyncBatchNorm-normalised when MMEngine's
    ``sync_bn`` converts them).

    Takes :class:`~prunebench.models.PrunedViT`'s arguments (without ``out_channels``) and
    ViT-Adapter's, with the official defaults: ``conv_inplane`` (spatial prior width),
    ``n_points``, ``deform_num_heads``, ``deform_ratio``, ``cffn_ratio`` (ConvFFN hidden share),
    ``init_values`` (injector gate), ``interaction_indexes`` (groups of blocks, covering every
    block in order; default four equal groups), ``add_vit_feature`` (add the ViT map to the outputs) and
    ``use_extra_extractor`` (two more extractors in the last interaction).
    """

    FRESH = (
        "spm.",
        "level_embed",
        "interactions.",
        "up.",
        "norm1.",
        "norm2.",
        "norm3.",
        "norm4.",
        *PrunedBackbone.FRESH,
    )

    def __init__(
        self,
        *args,
        conv_inplane: int = 64,
        n_points: int = 4,
        deform_num_heads: Optional[int] = None,
        deform_ratio: Optional[float] = None,
        cffn_ratio: float = 0.25,
        init_values: float = 0.0,
        interaction_indexes: Optional[Sequence[Sequence[int]]] = None,
        add_vit_feature: bool = True,
        use_extra_extractor: bool = True,
        drop_path_rate: float = 0.0,
        **kwargs,
    ):
        super().__init__(*args, drop_path_rate=drop_path_rate, **kwargs)
        arch_defaults = ARCH_DEFAULTS.get(self.arch, {})
        deform_num_heads = deform_num_heads or arch_defaults.get("deform_num_heads", 6)
        deform_ratio = deform_ratio or arch_defaults.get("deform_ratio", 1.0)
        groups = [[int(a), int(b)] for a, b in interaction_indexes or interaction_groups(len(self.blocks))]
        starts = [0] + [b + 1 for _, b in groups[:-1]]
        if (
            [a for a, _ in groups] != starts
            or groups[-1][1] != len(self.blocks) - 1
            or any(a > b for a, b in groups)
        ):
            raise ValueError(
                f"interaction_indexes {groups} must split blocks 0..{len(self.blocks) - 1} into "
                "consecutive [first, last] groups, e.g. [[0, 2], [3, 5], [6, 8], [9, 11]]"
            )
        if self.embed_dim % deform_num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} must be divisible by deform_num_heads {deform_num_heads}"
            )
        dim = self.embed_dim
        self.interaction_indexes, self.add_vit_feature = groups, add_vit_feature
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim)
        self.interactions = nn.Sequential(
            *[
                InteractionBlock(
                    dim,
                    deform_num_heads,
                    n_points,
                    deform_ratio,
                    cffn_ratio,
                    drop_path_rate,
                    init_values,
                    extra_extractor=use_extra_extractor and k == len(groups) - 1,
                )
                for k in range(len(groups))
            ]
        )
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2).to(memory_format=torch.channels_last)
        for k in range(1, 5):
            setattr(self, f"norm{k}", nn.BatchNorm2d(dim))
        self._init_vit()
        for module in (self.up, self.spm, self.interactions):
            module.apply(_init_conv)
        for m in self.modules():
            if isinstance(m, DeformableAttention):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    # the pruning policy the interaction blocks run under (besides run_block)
    def present(self) -> Optional[torch.Tensor]:
        """Bool ``(B, N)``: the ViT tokens still in the map (None: all of them)."""
        return self._hard if self.pruned_tokens == "discard" else None

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        """``discard``: zero the pruned tokens (straight-through in training)."""
        if self.pruned_tokens != "discard" or self.keep is None:
            return x
        return x * self.keep.to(x.dtype).unsqueeze(-1)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        img = pad_to_32(img)
        c1, c2, c3, c4 = self.spm(img)
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)
        x, h, w = self.tokens(img)
        geo = Geometry.of(h, w, img.device)
        self.start_pruning()
        for (first, last), interaction in zip(self.interaction_indexes, self.interactions):
            x, c = interaction(x, c, geo, self, range(first, last + 1))
        self.finish_pruning()
        x = self.last_tokens = self.unmerge(x)

        levels = c.split([a * b for a, b in geo.cnn_shapes], dim=1)
        c2, c3, c4 = (to_map(t, hh, ww) for t, (hh, ww) in zip(levels, geo.cnn_shapes))
        outs = [self.up(c2) + c1, c2, c3, c4]
        if self.add_vit_feature:
            x3 = to_map(x, h, w)
            outs = [o + _rescale(x3, scale) for o, scale in zip(outs, (4, 2, 1, 0.5))]
        norms = (self.norm1, self.norm2, self.norm3, self.norm4)
        return tuple(norms[i](outs[i]) for i in self.out_indices)


def _rescale(m: torch.Tensor, scale: float) -> torch.Tensor:
    return m if scale == 1 else F.interpolate(m, scale_factor=scale, mode="bilinear", align_corners=False)


def _init_conv(m: nn.Module) -> None:
    """ViT-Adapter's init of the adapter's convolutions: normal with std sqrt(2 / fan_out)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
