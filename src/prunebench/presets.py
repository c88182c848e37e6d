"""The ``method`` axis: named presets of prior token-pruning methods and the paper's own choice.

Each preset fixes the four pruning axes (so a grid cannot sweep ``method`` together with one of
them) and the backbone settings its method needs, on either backbone family; every preset
finetunes from the same dense parent under the same schedule and latency measurement. The
schedules are the methods' own, for the 12 blocks of a DeiT (0-based block indices).

A leaf module (no torch): the grid, the run ids and the report read it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from .axes import ARCHS, METHOD_AXIS, PRUNING_AXES, scale_schedule

__all__ = [
    "Preset",
    "PRESETS",
    "OURS",
    "CLASS_ATTENTION",
    "KEY_SIMILARITY",
    "preset",
    "plugin_selectors",
    "method_cell",
    "backbone_args",
    "blocks_needed",
]

#: the ``selector`` axis value of the methods that rank by class attention (no learned selector).
CLASS_ATTENTION = "class-attention"
#: the ``selector`` axis value of the merging methods (key similarity, nothing learned).
KEY_SIMILARITY = "key-similarity"
_STAGES = [3, 6, 9]  # before blocks 4, 7, 10 (1-based)
_STAGE_RATIOS = [0.7, 0.49, 0.343]  # 0.7 of the previous stage each
#: DynamicViT's own settings: its attention masking in training, its ``int(r*N)`` token counts
_DYNAMICVIT = dict(
    method="selector", prune_layers=_STAGES, keep_ratios=_STAGE_RATIOS, masking="policy", rounding="floor"
)
#: DynamicViT's optimisation protocol (its released DeiT scripts, ``optim_factory.py`` and
#: ``engine.py``): the backbone's lr is ``lr_scale`` 0.01 of the predictors' (the predictors at
#: 100x the grid's lr) and it is frozen (lr 0) for the first 5 of its 30 epochs.
_DYNAMICVIT_PROTOCOL = dict(selector_lr_mult=100.0, frozen_share=5 / 30)


@dataclass(frozen=True)
class Preset:
    """A method as a grid value.

    ``axes``: the four axes' values it fixes; ``backbone``: backbone arguments it sets (the grid's
    ``prune_layers`` / ``keep_ratios`` apply where it sets none); ``keep_ratio_loss_weight``: the
    detector's weight of the keep-ratio loss (None: the grid's); ``protocol``: the method's own
    optimisation protocol, applied where the grid sets ``schedule.method_protocol: true``
    (``selector_lr_mult``: the selectors' lr multiplier; ``frozen_share``: the share of the
    finetune at its start during which every other parameter has lr 0); ``source``: where its
    semantics come from; ``prior``: a prior method of the paper's headline comparison (~1.5 vs
    ~0.3 mAP drop);
    ``off_the_shelf``: the method adds no parameters, so a dense checkpoint runs it as it is
    (no finetune needed).
    """

    name: str
    axes: dict[str, Any]
    backbone: dict[str, Any] = field(default_factory=dict)
    keep_ratio_loss_weight: Optional[float] = None
    protocol: dict[str, float] = field(default_factory=dict)
    source: str = ""
    prior: bool = False
    off_the_shelf: bool = False


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # the paper's choice: pruned tokens preserved, reactivation, dynamic rate, MLP selector
        Preset(
            "svit",
            dict(pruned_tokens="preserve", reactivation=True, rate="dynamic", selector="mlp"),
            source="Liu et al., WACV 2024; uzh-rpg/svit",
        ),
        # the gating predictor before blocks 4/7/10 keeping int(r*N) of 0.7/0.49/0.343 (top-k at
        # inference), DynamicViT's attention masking in training, pruned tokens discarded, no
        # reactivation; keep-ratio loss weight 2.0
        Preset(
            "dynamicvit",
            dict(pruned_tokens="discard", reactivation=False, rate="fixed", selector="gating"),
            _DYNAMICVIT,
            keep_ratio_loss_weight=2.0,
            protocol=_DYNAMICVIT_PROTOCOL,
            source="Rao et al., NeurIPS 2021; raoyongming/DynamicViT",
            prior=True,
        ),
        # the same with pruned tokens preserved in the feature map (the paper's ablation row)
        Preset(
            "dynamicvit-preserve",
            dict(pruned_tokens="preserve", reactivation=False, rate="fixed", selector="gating"),
            _DYNAMICVIT,
            keep_ratio_loss_weight=2.0,
            protocol=_DYNAMICVIT_PROTOCOL,
            source="Rao et al., NeurIPS 2021, with the paper's preserve ablation",
        ),
        # keep the ceil(0.7 W) tokens with the most class attention at blocks 4/7/10 (W: the tokens
        # of the previous stage, its fused token included), fuse the rest into one new token
        Preset(
            "evit",
            dict(pruned_tokens="discard", reactivation=False, rate="fixed", selector=CLASS_ATTENTION),
            dict(method="evit", prune_layers=_STAGES, keep_ratios=_STAGE_RATIOS),
            source="Liang et al., ICLR 2022; youweiliang/evit",
            prior=True,
        ),
        # from block 5 on, the int(N/2) tokens with the most (momentum) class attention take the
        # slow path; placeholders get a representative token's update (the fast path)
        Preset(
            "evo-vit",
            dict(pruned_tokens="preserve", reactivation=True, rate="fixed", selector=CLASS_ATTENTION),
            dict(method="evo-vit", prune_layers=list(range(4, 12)), keep_ratios=[0.5] * 8),
            source="Xu et al., AAAI 2022; YifanXu74/Evo-ViT; uzh-rpg/svit evovit_adapter.py",
            prior=True,
        ),
        # ATS's own DeiT-S schedule: inverse-transform sampling of class-attention significance
        # in every block from the 4th on, each with the full budget (N levels): the count comes
        # from the significance distribution alone, nine times
        Preset(
            "ats",
            dict(pruned_tokens="discard", reactivation=False, rate="dynamic", selector=CLASS_ATTENTION),
            dict(method="ats", prune_layers=list(range(3, 12)), keep_ratios=[1.0] * 9),
            source="Fayyaz et al., ECCV 2022; adaptivetokensampling/ATS (configs/ImageNet/DeiT_S.yaml)",
            prior=True,
        ),
        # ATS at blocks 4/7/10 with at most 0.7/0.49/0.343 of the tokens: the other methods'
        # budgets, for a matched-budget comparison
        Preset(
            "ats-budget",
            dict(pruned_tokens="discard", reactivation=False, rate="dynamic", selector=CLASS_ATTENTION),
            dict(method="ats", prune_layers=_STAGES, keep_ratios=_STAGE_RATIOS),
            source="adaptivetokensampling/ATS at the other methods' budgets",
        ),
        # token merging at blocks 3/6/9 after the attention residual, int(0.7 * T) tokens each:
        # bipartite soft matching (ToMe) or agglomerative clustering (ATC), proportional attention
        *(
            Preset(
                name,
                dict(pruned_tokens="merge", reactivation=False, rate="fixed", selector=KEY_SIMILARITY),
                dict(method=name, prune_layers=_STAGES, keep_ratios=_STAGE_RATIOS),
                source=f"{source}; JoakimHaurum/ATC (MMDet_setup)",
                off_the_shelf=True,
            )
            for name, source in (("tome", "Bolya et al., ICLR 2023"), ("atc", "Haurum et al., ECCV 2024"))
        ),
    )
}
#: the method whose drop the prior methods' drops are compared with.
OURS = "svit"


def preset(name: str) -> Preset:
    """The preset called ``name``, or a registered plug-in selector ``name`` as a method: the
    paper's choice on the four axes with that selector. ValueError when it is neither."""
    if name in PRESETS:
        return PRESETS[name]
    if name in plugin_selectors():
        ours = PRESETS[OURS]
        return replace(ours, name=name, axes={**ours.axes, "selector": name}, source="plug-in selector")
    raise ValueError(f"unknown method {name!r}; presets: {', '.join(PRESETS)}")


def plugin_selectors() -> tuple[str, ...]:
    """Selectors registered by plug-in modules in this process (none unless a grid's ``imports``
    were imported: this reads the registry without importing torch)."""
    registry = sys.modules.get("prunebench.models.registry")
    if registry is None:
        return ()
    return tuple(n for n in registry.SELECTORS.module_dict if n not in PRUNING_AXES["selector"])


def backbone_args(name: str, args: dict) -> dict:
    """Backbone arguments of a ``name`` finetune: ``args`` (the grid's), the method's four axes
    (the class-attention and merging methods have no selector: their ``selector`` value is a label) and its
    own settings; a method's own 12-block schedule is scaled to a deeper arch
    (:func:`~prunebench.axes.scale_schedule`)."""
    p = preset(name)
    out = {**args, **p.axes, **p.backbone}
    depth = out.get("depth") or ARCHS.get(out.get("arch", "deit-small"), ARCHS["deit-small"])[1]
    if "prune_layers" in p.backbone and depth > 12:  # a 12-block schedule, scaled to a deeper ViT
        out["prune_layers"], out["keep_ratios"] = scale_schedule(
            p.backbone["prune_layers"], p.backbone["keep_ratios"], depth
        )
    if out.get("selector") in (CLASS_ATTENTION, KEY_SIMILARITY):
        del out["selector"]
    return out


def method_cell(cell: dict) -> dict:
    """A grid cell with its method's four axis values filled in (unchanged without ``method``)."""
    if cell.get(METHOD_AXIS) is None:
        return cell
    return {**cell, **preset(cell[METHOD_AXIS]).axes}


def blocks_needed(name: str) -> int:
    """How many ViT blocks the method's own schedule needs (0: it takes the grid's)."""
    layers = preset(name).backbone.get("prune_layers")
    return max(layers) + 1 if layers else 0
