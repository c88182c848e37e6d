"""The ``method`` axis: named presets of prior token-pruning methods and the paper's own choice.

Each preset fixes the four pruning axes (so a grid cannot sweep ``method`` together with one of
them) and the backbone settings its method needs, on either backbone family; every preset
finetunes from the same dense parent under the same schedule and latency measurement. The
schedules are the methods' own, for the 12 blocks of a DeiT (0-based block indices).

A leaf module (no torch): the grid, the run ids and the report read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["Preset", "PRESETS", "METHOD_DEFAULT", "CLASS_ATTENTION", "preset"]

#: the ``selector`` axis value of the methods that rank by class attention (no learned selector).
CLASS_ATTENTION = "class-attention"
_STAGES = [3, 6, 9]  # before blocks 4, 7, 10 (1-based)
_STAGE_RATIOS = [0.7, 0.49, 0.343]  # 0.7 of the previous stage each


@dataclass(frozen=True)
class Preset:
    """A method as a grid value.

    ``axes``: the four axes' values it fixes; ``backbone``: backbone arguments it sets (the grid's
    ``prune_layers`` / ``keep_ratios`` apply where it sets none); ``keep_ratio_loss_weight``: the
    detector's weight of the keep-ratio loss (None: the grid's); ``options``: settings a grid may
    turn on for it (``distill``); ``source``: where its semantics come from.
    """

    name: str
    summary: str
    axes: dict[str, Any]
    backbone: dict[str, Any] = field(default_factory=dict)
    keep_ratio_loss_weight: Optional[float] = None
    options: tuple[str, ...] = ()
    source: str = ""
    class_token: bool = False


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "svit",
            "the paper's choice: pruned tokens preserved, reactivation, dynamic rate, MLP selector",
            dict(pruned_tokens="preserve", reactivation=True, rate="dynamic", selector="mlp"),
            source="Liu et al., WACV 2024; uzh-rpg/svit",
        ),
        Preset(
            "dynamicvit",
            "DynamicViT: gating predictor before blocks 4/7/10 keeping 0.7/0.49/0.343 (fixed rate), "
            "pruned tokens discarded, no reactivation; keep-ratio loss weight 2.0",
            dict(pruned_tokens="discard", reactivation=False, rate="fixed", selector="gating"),
            dict(method="selector", prune_layers=_STAGES, keep_ratios=_STAGE_RATIOS),
            keep_ratio_loss_weight=2.0,
            options=("distill",),
            source="Rao et al., NeurIPS 2021; raoyongming/DynamicViT",
        ),
        Preset(
            "dynamicvit-preserve",
            "DynamicViT with pruned tokens preserved in the feature map (the paper's ablation row)",
            dict(pruned_tokens="preserve", reactivation=False, rate="fixed", selector="gating"),
            dict(method="selector", prune_layers=_STAGES, keep_ratios=_STAGE_RATIOS),
            keep_ratio_loss_weight=2.0,
            options=("distill",),
            source="Rao et al., NeurIPS 2021; the paper's preserve ablation",
        ),
        Preset(
            "evit",
            "EViT: keep the tokens with the most class attention at blocks 4/7/10 (0.7 of the "
            "previous stage each), fuse the rest into one attention-weighted token",
            dict(pruned_tokens="discard", reactivation=False, rate="fixed", selector=CLASS_ATTENTION),
            dict(method="evit", prune_layers=_STAGES, keep_ratios=_STAGE_RATIOS),
            source="Liang et al., ICLR 2022; youweiliang/evit",
            class_token=True,
        ),
        Preset(
            "evo-vit",
            "Evo-ViT: from block 5 on, the half of the tokens with the most (momentum) class "
            "attention take the slow path; placeholders get a representative token's update",
            dict(pruned_tokens="preserve", reactivation=True, rate="fixed", selector=CLASS_ATTENTION),
            dict(method="evo-vit", prune_layers=list(range(4, 12)), keep_ratios=[0.5] * 8),
            source="Xu et al., AAAI 2022; YifanXu74/Evo-ViT; uzh-rpg/svit evovit_adapter.py",
            class_token=True,
        ),
        Preset(
            "ats",
            "ATS: inverse-transform sampling of class-attention significance at blocks 4/7/10, at "
            "most 0.7/0.49/0.343 of the tokens; the count varies per image",
            dict(pruned_tokens="discard", reactivation=False, rate="dynamic", selector=CLASS_ATTENTION),
            dict(method="ats", prune_layers=_STAGES, keep_ratios=_STAGE_RATIOS),
            source="Fayyaz et al., ECCV 2022; adaptivetokensampling/ATS",
            class_token=True,
        ),
    )
}
#: the preset a grid that does not sweep ``method`` runs (its four axes as the grid sets them).
METHOD_DEFAULT = "svit"


def preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown method {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
