"""The facts every stage shares: the four pruning axes and their values, the DeiT architectures,
the backbone families, the paper's reference pruning schedule, the discard + reactivation rule
and display labels.

A leaf module: it imports nothing from prunebench, so the grid, the models, the report and the
scripts can all take these facts from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: axis -> its values, in display order.
PRUNING_AXES: dict[str, tuple] = {
    "pruned_tokens": ("discard", "preserve", "merge"),
    "reactivation": (False, True),
    "rate": ("fixed", "dynamic"),
    "selector": ("mlp", "gating"),
}
#: the matrix a grid without ``axes`` sweeps: the paper's 16 cells (``merge`` is swept by naming it).
DEFAULT_MATRIX: dict[str, tuple] = {**PRUNING_AXES, "pruned_tokens": ("discard", "preserve")}
#: value of an axis a grid does not sweep.
AXIS_DEFAULTS: dict[str, Any] = {
    "pruned_tokens": "preserve",
    "reactivation": False,
    "rate": "fixed",
    "selector": "mlp",
}
#: the paper's finding per axis, as (better or equal value, other value).
PAPER_DIRECTION: dict[str, tuple] = {
    "pruned_tokens": ("preserve", "discard"),
    "reactivation": (True, False),
    "rate": ("dynamic", "fixed"),
    "selector": ("mlp", "gating"),
}

#: arch -> (embed_dim, depth, num_heads) of the ViTs: DeiT, timm's ViT-B/L (DeiT-III, AugReg, MAE
#: weights) and DINOv2's.
ARCHS: dict[str, tuple[int, int, int]] = {
    "deit-tiny": (192, 12, 3),
    "deit-small": (384, 12, 6),
    "deit-base": (768, 12, 12),
    "vit-base": (768, 12, 12),
    "vit-large": (1024, 24, 16),
    "dinov2-small": (384, 12, 6),
    "dinov2-base": (768, 12, 12),
    "dinov2-large": (1024, 24, 16),
}
_DINOV2 = dict(layer_scale=1e-5, pretrain_img_size=592)
#: backbone defaults of an arch where they differ from DeiT's: DINOv2's LayerScale and its 37x37
#: position grid (518 px at patch 14; 592 px at patch 16, as ViT-Adapter's DINOv2 configs, whose
#: patch kernel is resized from 14 to 16), ViT-Adapter's deformable heads for the B and L widths.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit-base": dict(deform_num_heads=12, deform_ratio=0.5),
    "vit-large": dict(deform_num_heads=16, deform_ratio=0.5),
    "dinov2-small": _DINOV2,
    "dinov2-base": dict(_DINOV2, deform_num_heads=12, deform_ratio=0.5),
    "dinov2-large": dict(_DINOV2, deform_num_heads=16, deform_ratio=0.5),
}
#: latency timing of a run when its grid's ``bench:`` (or ``prunebench eval``) does not say.
BENCH_DEFAULTS = {"images": 20, "warmup": 2, "repeats": 5}
#: the axis whose values are method presets (``svit``, ``dynamicvit``, ...; :mod:`prunebench.presets`).
METHOD_AXIS = "method"
#: backbone family -> the registered backbone (grid ``backbone.family``, axis ``family``):
#: ``plain`` DeiT with a simple pyramid, ``adapter`` the paper's SViT-Adapter (ViT-Adapter).
FAMILIES: dict[str, str] = {"plain": "PrunedViT", "adapter": "PrunedViTAdapter"}
#: backbone arguments that only one family takes (with their official defaults in the models).
FAMILY_ARGS: dict[str, tuple[str, ...]] = {
    "plain": ("out_channels",),
    "adapter": (
        "conv_inplane",
        "n_points",
        "deform_num_heads",
        "deform_ratio",
        "cffn_ratio",
        "init_values",
        "interaction_indexes",
        "add_vit_feature",
        "use_extra_extractor",
    ),
}


def feature_channels(family: str, backbone_args: Mapping[str, Any]) -> int:
    """Channels of the backbone's four output maps (the FPN's ``in_channels``): the plain
    pyramid's ``out_channels`` (256), the adapter's ``embed_dim`` (that of ``arch``)."""
    if family == "plain":
        return int(backbone_args.get("out_channels", 256))
    return int(backbone_args.get("embed_dim") or ARCHS[backbone_args.get("arch", "deit-small")][0])


#: how fresh selectors start: ``official`` (default layer init, about 50 % kept per selector, as
#: the official code), ``target`` (a ``logit(share)`` bias) or ``calibrated`` (also calibrated on
#: the first training batch).
SELECTOR_INITS: tuple[str, ...] = ("official", "target", "calibrated")
#: how selectors decide at inference: noise-free ``argmax`` or Gumbel-sampled (the official
#: detection code never switches its selectors to inference, so its released AP are sampled).
SELECTOR_INFERENCE: tuple[str, ...] = ("argmax", "gumbel")

#: timm model names of the archs (for checkpoint docs and tests).
TIMM_NAMES: dict[str, str] = {
    "deit-tiny": "deit_tiny_patch16_224",
    "deit-small": "deit_small_patch16_224",
    "deit-base": "deit_base_patch16_224",
    "vit-base": "vit_base_patch16_224",
    "vit-large": "vit_large_patch16_224",
    "dinov2-small": "vit_small_patch14_dinov2",
    "dinov2-base": "vit_base_patch14_dinov2",
    "dinov2-large": "vit_large_patch14_dinov2",
}

#: The paper's schedule: selectors before blocks 4..12 (1-based), keep ratios of all N tokens.
REFERENCE_LAYERS: list[int] = [3, 4, 5, 6, 7, 8, 9, 10, 11]
REFERENCE_RATIOS: list[float] = [0.7, 0.7, 0.7, 0.49, 0.49, 0.49, 0.343, 0.343, 0.343]

#: the finetune-only axis of a keep ratio per stage: pruning layers of stage s (0-based, stages of
#: the run's schedule, its method's own included) keep ``keep ** (s + 1)`` of all tokens.
KEEP_AXIS = "keep"


def keep_schedule(keep_ratios: list[float], keep: float) -> list[float]:
    """``keep_ratios`` of a schedule rewritten for a keep ratio per stage (:data:`KEEP_AXIS`)."""
    return [round(keep ** (s + 1), 9) for s in stages(keep_ratios)]


#: ATC's linkage functions (backbone ``linkage`` of ``method: atc``).
LINKAGES: tuple[str, ...] = ("average", "complete", "single")


def scale_schedule(layers: list[int], ratios: list[float], depth: int) -> tuple[list[int], list[float]]:
    """A schedule of a 12-block ViT (0-based ``layers``, their keep ``ratios``) scaled to ``depth``
    blocks: the same keep ratios at the same relative depth, each 12-block position spanning
    ``depth / 12`` blocks."""
    by_position = dict(zip(layers, ratios))
    scaled = [i for i in range(depth) if i * 12 // depth in by_position]
    return scaled, [by_position[i * 12 // depth] for i in scaled]


def reference_schedule(depth: int) -> tuple[list[int], list[float]]:
    """The reference schedule for ``depth`` blocks (24: selectors before blocks 7..24, 1-based;
    stages of six blocks at 0.7, 0.49, 0.343)."""
    return scale_schedule(REFERENCE_LAYERS, REFERENCE_RATIOS, depth)


#: precisions a benchmark can run in (autocast dtypes besides plain fp32).
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")

IMPOSSIBLE_REASON = (
    "discard + reactivation: a discarded token has no state to come back with "
    "(reactivation needs pruned_tokens=preserve)"
)

MERGE_REACTIVATION_REASON = (
    "merge + reactivation: a merged token has no state of its own to come back with "
    "(pruned_tokens=merge needs reactivation=false)"
)

#: short tags used in run ids (``preserve-react-dyn-mlp``).
_ID_TAGS = {"reactivation": {True: "react", False: "noreact"}, "rate": {"fixed": "fixed", "dynamic": "dyn"}}
#: column headers of the axes in tables.
AXIS_HEADERS = {"pruned_tokens": "pruned tokens", "reactivation": "react."}


def impossible(cell: Mapping[str, Any]) -> str | None:
    """Why a combination of axis values cannot run, or None when it can."""
    if cell.get("pruned_tokens") == "discard" and cell.get("reactivation"):
        return IMPOSSIBLE_REASON
    if cell.get("pruned_tokens") == "merge" and cell.get("reactivation"):
        return MERGE_REACTIVATION_REASON
    return None


def id_prefix(cell: Mapping[str, Any]) -> str:
    """Readable run-id prefix of a pruned cell, e.g. ``preserve-react-dyn-mlp``."""
    parts = [str(cell["pruned_tokens"])]
    parts += [_ID_TAGS[k][cell[k]] for k in ("reactivation", "rate")]
    parts.append(str(cell["selector"]))
    return "-".join(parts)


def value_label(axis: str, value: Any) -> str:
    """How one pruning-axis value reads in sentences and legends."""
    if axis == "reactivation":
        return "reactivation" if value else "no reactivation"
    return str(value)


def stages(keep_ratios: list[float]) -> list[int]:
    """Stage index of each pruning layer: consecutive layers with the same target ratio form a
    stage, as in the official code (reference schedule: [0, 0, 0, 1, 1, 1, 2, 2, 2])."""
    out: list[int] = []
    for i, r in enumerate(keep_ratios):
        out.append(0 if i == 0 else out[-1] + (r != keep_ratios[i - 1]))
    return out
