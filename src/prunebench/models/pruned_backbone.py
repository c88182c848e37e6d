"""What the pruned backbones share: the DeiT stem and blocks, the four pruning axes, and the policy
that runs each block on the tokens its selector keeps (:meth:`PrunedBackbone.run_block`).

The policy, as in the official SViT code:

* without reactivation, consecutive pruning layers with the same target ratio form a stage; one
  selector sits at the first block of each stage, scores the tokens still kept, and its decision
  holds for the stage (kept sets nest). Only the stage's first block takes the differentiable
  decision; its other blocks gate with the hard, detached one;
* with reactivation, a selector before every pruning layer scores *all* tokens.

``method`` other than ``selector`` hands each block to a prior method's mechanism instead
(:mod:`prunebench.models.methods`: EViT, Evo-ViT, ATS rank tokens by an added class token's
attention; ToMe and ATC merge tokens); the backbone keeps the bookkeeping (``keep``,
``last_keep_masks``). Where tokens are merged (``tome``, ``atc``, ``pruned_tokens: merge``:
:mod:`.methods.merge_fate`), ``unmerge`` / ``remerge`` turn the current tokens into the full map
and back.

Two execution paths give the same result:

* masked (training, or eval with ``masked_eval=True``): all N tokens stay in the sequence, pruned
  tokens are excluded as attention keys and the block output is gated as a whole,
  ``x + d * (block(x) - x)`` with the straight-through keep decision ``d`` (``masking="policy"``:
  DynamicViT's form instead, the decision inside every later block's softmax, :mod:`.policy`);
* sparse (eval): the kept tokens are gathered, the block runs on them only, and the outputs are
  scattered back (``sparse_mode``: how per-image counts at batch > 1 are batched).
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
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block

from ..axes import ARCH_DEFAULTS, ARCHS, PRUNING_AXES, SELECTOR_INFERENCE, SELECTOR_INITS, impossible, stages
from ..distributed import all_ranks_sum
from .blocks import SPARSE_MODES, gated_block, sparse_block
from .deit_weights import load_pretrained
from .methods import build_mechanism
from .methods.merge_fate import merge_pruned, merged_block
from .methods.merging import Clusters
from .policy import MASKINGS, policy_block
from .selectors import ROUNDINGS, build_selector, keep_decision, selector_names

__all__ = ["PrunedBackbone", "pad_to_32"]


def pad_to_32(img: torch.Tensor) -> torch.Tensor:
    """Zero-pad an image batch at the bottom/right to sides that are multiples of 32."""
    H, W = img.shape[-2:]
    return F.pad(img, (0, -W % 32, 0, -H % 32))


class PrunedBackbone(BaseModule):
    """DeiT patch embedding, position embedding, blocks and selectors; subclasses add the neck-side
    modules and ``forward``. Keyword arguments: see :class:`~prunebench.models.PrunedViT`.

    ``FRESH`` names the key prefixes an ImageNet DeiT checkpoint does not cover; here, the pruning
    modules, which are also what a pruned finetune adds to its dense parent's checkpoint.
    """

    FRESH: tuple[str, ...] = ("selectors.", "mechanism.")

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
        method: str = "selector",
        linkage: str = "average",
        proportional_attention: bool = True,
        tau: float = 1.0,
        selector_init: str = "official",
        selector_inference: str = "argmax",
        drop_path_rate: float = 0.0,
        pretrain_img_size: Optional[int] = None,
        layer_scale: Optional[float] = None,
        pretrained: Optional[str] = None,
        sparse_mode: str = "auto",
        masked_eval: bool = False,
        masking: str = "gate",
        rounding: str = "round",
        out_indices: Sequence[int] = (0, 1, 2, 3),
        init_cfg: Optional[dict] = None,
    ):
        super().__init__(init_cfg=init_cfg)
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
        for name, value, allowed in (
            ("pruned_tokens", pruned_tokens, PRUNING_AXES["pruned_tokens"]),
            ("rate", rate, PRUNING_AXES["rate"]),
            ("selector", selector, selector_names()),
            ("reactivation", reactivation, PRUNING_AXES["reactivation"]),
            ("selector_init", selector_init, SELECTOR_INITS),
            ("selector_inference", selector_inference, SELECTOR_INFERENCE),
            ("sparse_mode", sparse_mode, SPARSE_MODES),
            ("masking", masking, MASKINGS),
            ("rounding", rounding, ROUNDINGS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {tuple(allowed)}")
        reason = impossible(dict(pruned_tokens=pruned_tokens, reactivation=reactivation))
        if reason:
            raise ValueError(reason)
        d, n_blocks, heads = ARCHS[arch]
        arch_defaults = ARCH_DEFAULTS.get(arch, {})
        pretrain_img_size = pretrain_img_size or arch_defaults.get("pretrain_img_size", 224)
        layer_scale = arch_defaults.get("layer_scale") if layer_scale is None else layer_scale or None
        embed_dim, depth, num_heads = embed_dim or d, depth or n_blocks, num_heads or heads
        prune_layers, keep_ratios = [int(i) for i in prune_layers], [float(r) for r in keep_ratios]
        _check_schedule(prune_layers, keep_ratios, depth, reactivation)
        if embed_dim % 4 or embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by 4 and by num_heads {num_heads}")

        self.out_indices = [int(i) for i in out_indices]
        if not self.out_indices or self.out_indices != sorted(set(self.out_indices) & {0, 1, 2, 3}):
            raise ValueError(f"out_indices {list(out_indices)} must be increasing levels of [0, 1, 2, 3]")
        self.arch, self.embed_dim, self.patch_size = arch, embed_dim, patch_size
        self.prune_layers, self.keep_ratios = prune_layers, keep_ratios
        self.pruned_tokens, self.reactivation, self.rate, self.tau = pruned_tokens, reactivation, rate, tau
        self.selector_init, self.selector_inference = selector_init, selector_inference
        self.pretrained, self.sparse_mode, self.masked_eval = pretrained, sparse_mode, masked_eval
        self.masking, self.rounding = masking, rounding
        self.last_keep_masks: list[torch.Tensor] = []
        self.last_clusters: list[Optional[torch.Tensor]] = []  # per pruning layer, merged tokens only
        self._decisions: list[tuple[torch.Tensor, float]] = []
        self._layer_of_block = {b: j for j, b in enumerate(prune_layers)}
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
                    init_values=layer_scale,
                    drop_path=dpr[i],
                    norm_layer=partial(nn.LayerNorm, eps=1e-6),
                )
                for i in range(depth)
            ]
        )
        self.method, self.selector = method, selector
        merging = dict(linkage=linkage, proportional_attention=proportional_attention)
        self.mechanism = build_mechanism(
            method, embed_dim, prune_layers, keep_ratios, pruned_tokens, **merging
        )
        n_selectors = 0 if self.mechanism else len(set(self.selector_of_layer))
        self.selectors = nn.ModuleList([build_selector(selector, embed_dim) for _ in range(n_selectors)])
        self.register_load_state_dict_post_hook(_fresh_selectors_hook)
        self.start_pruning()

    def _init_vit(self) -> None:
        """timm's ViT init (truncated normal Linear weights, zero biases), then each selector's
        ``selector_init``. Subclasses call it once their modules exist."""
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_linear)
        for sel, share in zip(self.selectors, self.initial_keep_shares()):
            sel.reset(self.selector_init, share)

    def initial_keep_shares(self) -> list[float]:
        """Share of the tokens it may keep that each fresh selector starts keeping (``target`` and
        ``calibrated``): its target, relative to the previous stage's target without reactivation."""
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
            print_log(f"{type(self).__name__}: {report.line()}", logger="current", level=logging.INFO)

    # ------------------------------------------------------------------ tokens

    def tokens(self, img: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Patch tokens ``(B, h*w, D)`` of a padded image batch, with the position embedding."""
        x = self.patch_embed(img)
        B, h, w, D = x.shape
        return x.reshape(B, h * w, D) + self._pos_embed(h, w), h, w

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        g = self.pretrain_grid
        if (h, w) == (g, g):
            return self.pos_embed
        pos = self.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    # ------------------------------------------------------------------ the pruning policy

    def start_pruning(self) -> None:
        """Reset the per-forward decision state; call before the first block."""
        self._keep: Optional[torch.Tensor] = None  # straight-through float (training) or bool
        self._hard: Optional[torch.Tensor] = None  # bool, detached
        self._current: Optional[int] = None
        self._fresh = False
        self._masks: list[torch.Tensor] = []
        self._assignments: list[Optional[torch.Tensor]] = []  # merged tokens: cluster of each token
        self._clusters: Optional[Clusters] = None  # pruned_tokens: merge
        self._decisions = []
        self._calibration: list[str] = []
        if self.mechanism is not None:
            self.mechanism.start()

    def finish_pruning(self) -> None:
        """Publish ``last_keep_masks`` (and log the calibration of fresh selectors, if any)."""
        self.last_keep_masks = self._masks
        self.last_clusters = self._assignments
        if self._calibration:
            print_log(
                f"{type(self).__name__}: calibrated fresh selectors on the global batch: "
                + "; ".join(self._calibration),
                logger="current",
                level=logging.INFO,
            )

    @property
    def keep(self) -> Optional[torch.Tensor]:
        """The current keep decision ``(B, N)``: straight-through float in training, bool at
        inference; None before the first pruning layer."""
        return self._keep

    def run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``i`` under the policy: a new keep decision where a selector sits, then the block
        on the kept tokens (masked in training, gathered at inference)."""
        blk = self.blocks[i]
        j = self._layer_of_block.get(i)
        if self.mechanism is not None:
            x, self._keep = self.mechanism.run_block(i, blk, x)
            self._hard = self._keep
            if j is not None:
                self._record()
            return x
        if j is not None:
            if self.selector_of_layer[j] != self._current:
                full = self.unmerge(x)
                self._decide(j, full)
                if self.pruned_tokens == "merge":
                    x, self._clusters = merge_pruned(blk, full, self._clusters, self._hard, self._keep)
            self._record()
        if self._keep is None:
            return blk(x)
        if self.pruned_tokens == "merge":
            return merged_block(blk, x, self._clusters, sparse=not (self.training or self.masked_eval))
        if not (self.training or self.masked_eval):
            return sparse_block(blk, x, self._hard, mode=self.sparse_mode)
        if self.masking == "policy":  # DynamicViT: the decision in every later block's softmax
            return policy_block(blk, x, self._keep, self._hard)
        gate = self._keep if self._fresh else self._hard  # later blocks of a stage: hard, no gradient
        self._fresh = False
        return gated_block(blk, x, gate, self._hard)

    def _record(self) -> None:
        """A pruning layer's keep mask and, where tokens are merged, their clusters."""
        self._masks.append(self._hard)
        clusters = self.clusters
        self._assignments.append(None if clusters is None else clusters.assign)

    # ------------------------------------------------------------------ merged tokens

    @property
    def clusters(self) -> Optional[Clusters]:
        """The merge state of the current forward (``tome``, ``atc``, ``pruned_tokens: merge``);
        None while no token is merged."""
        return self._clusters if self.mechanism is None else getattr(self.mechanism, "clusters", None)

    def unmerge(self, x: torch.Tensor) -> torch.Tensor:
        """The full token map (B, N, D) of the current tokens: each position takes its merged
        token's value (``x`` itself when no token is merged)."""
        clusters = self.clusters
        return x if clusters is None else clusters.unmerge(x)

    def remerge(self, full: torch.Tensor) -> torch.Tensor:
        """The current tokens of a full map (each merged token the mean of its positions, as ATC
        re-merges an injector's output); ``full`` itself when no token is merged."""
        clusters = self.clusters
        return full if clusters is None else clusters.remerge(full)

    def _decide(self, j: int, x: torch.Tensor) -> None:
        s = self.selector_of_layer[j]
        self._current, self._fresh = s, True
        nested = not self.reactivation and self._hard is not None
        available = self._hard if nested else None
        sel = self.selectors[s]
        if self.training and self.selector_init == "calibrated" and sel.needs_calibration():
            hidden, output = sel.calibrate(x, available)
            self._calibration.append(
                f"selectors.{s} hidden layers x{hidden:.3g}, output x{output:.3g} (keeps {sel.share:.3f})"
            )
        sample = self.training or self.selector_inference == "gumbel"
        # training, nested: decide on all tokens, then multiply by the previous decision (as the
        # official code: the previous decision gets gradient where the new one would keep)
        allowed = None if self.training else available
        keep = keep_decision(
            sel(x, available),
            allowed,
            self.keep_ratios[j],
            self.rate,
            self.training,
            self.tau,
            sample,
            self.rounding,
        )
        if self.training:
            if nested:
                keep = keep * self._keep
            self._decisions.append((keep, self.keep_ratios[j]))
            self._hard = keep.detach() > 0.5
        else:
            self._hard = keep
        self._keep = keep

    def keep_ratio_loss(self) -> torch.Tensor:
        """Keep-ratio loss of the last training forward, as the official code: per selector
        decision the squared gap between achieved and target share of all N tokens, averaged
        over decisions. ``dynamic``: share of the whole (global) batch; ``fixed``: per image,
        then averaged over the (global) batch's images. Under ``torch.distributed`` the value is
        the global batch's on every rank. Unweighted; 0 for a dense model."""
        if not self._decisions:
            return self.pos_embed.new_zeros(())
        terms = []
        for d, r in self._decisions:
            if self.rate == "dynamic":
                count = d.new_tensor(float(d.numel()))
                terms.append((all_ranks_sum(d.sum()) / all_ranks_sum(count) - r) ** 2)
            else:
                count = d.new_tensor(float(d.shape[0]))
                terms.append(all_ranks_sum(((d.mean(dim=1) - r) ** 2).sum()) / all_ranks_sum(count))
        return torch.stack(terms).mean()


def _check_schedule(layers: list[int], ratios: list[float], depth: int, reactivation: bool) -> None:
    if len(layers) != len(ratios):
        raise ValueError(
            f"keep_ratios has {len(ratios)} values but prune_layers has "
            f"{len(layers)}; give one ratio per pruning layer"
        )
    if layers != sorted(set(layers)) or any(not 0 <= i < depth for i in layers):
        raise ValueError(f"prune_layers {layers} must be distinct, increasing block indices in [0, {depth})")
    if any(not 0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"keep_ratios {ratios} must all lie in (0, 1]")
    if not reactivation and ratios != sorted(ratios, reverse=True):
        raise ValueError(
            f"keep_ratios {ratios} must not increase without reactivation (the kept set can only shrink)"
        )


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _fresh_selectors_hook(module: PrunedBackbone, incompatible_keys) -> None:
    """Let a dense checkpoint load into a pruned model: missing selector (and a method's class
    token) keys start fresh."""
    fresh = [k for k in incompatible_keys.missing_keys if any(p in k for p in PrunedBackbone.FRESH)]
    if fresh:
        for k in fresh:
            incompatible_keys.missing_keys.remove(k)
        modules = sorted({re.sub(r"(selectors\.\d+|mechanism)\..*", r"\1", k) for k in fresh})
        kind = "selectors" if all(m.startswith("selectors") for m in modules) else "modules"
        print_log(
            f"{type(module).__name__}: {len(modules)} {kind} ({len(fresh)} tensors: "
            f"{', '.join(modules)}) are not in the checkpoint and start fresh",
            logger="current",
            level=logging.WARNING,
        )
