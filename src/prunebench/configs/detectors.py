"""Any MMDetection detector with a backbone and a neck as a grid's ``base``.

The base's detector becomes ``PrunedDetector`` of that detector (its own heads, losses and
post-processing; the pruning losses added), its backbone prunebench's, and the backbone's maps
follow what the neck takes: the base backbone's ``out_indices`` (ResNet's and Swin's levels at
strides 4, 8, 16, 32 are the pruned backbones' four maps), else the last ``len(in_channels)``
levels.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DetectorError", "LEVELS", "PRUNED_DETECTOR_ARGS", "adapt_detector", "set_num_classes"]

#: PrunedDetector's own arguments (the rest are its detector's).
PRUNED_DETECTOR_ARGS = ("detector", "keep_ratio_loss_weight", "distill")
#: the pruned backbones' maps, by index: strides 4, 8, 16, 32 (ResNet's ``out_indices``).
LEVELS = (0, 1, 2, 3)
#: heads whose ``num_classes`` is not the dataset's (HTC's semantic head: COCO-stuff classes).
_OTHER_CLASSES = ("semantic_head",)


class DetectorError(ValueError):
    """A base model prunebench cannot run; ``key`` is the config key, ``fix`` what to do."""

    def __init__(self, key: str, message: str, fix: str):
        super().__init__(message)
        self.key, self.fix = key, fix


def _detector_type(name: str) -> str:
    """``name`` when it is a registered MMDetection detector, else a DetectorError."""
    from mmdet.models.detectors import BaseDetector
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cls = MODELS.get(name) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, BaseDetector)):
        raise DetectorError(
            "model.type",
            f"{name!r} is not a registered MMDetection detector",
            "use a built-in template or an MMDetection detector config (two-stage, one-stage or "
            "query-based, e.g. mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py)",
        )
    return name


def _levels(backbone: dict, neck: dict) -> list[int]:
    """The backbone maps the neck takes (indices into :data:`LEVELS`)."""
    in_channels = neck.get("in_channels")
    if not isinstance(in_channels, (list, tuple)) or not 1 <= len(in_channels) <= len(LEVELS):
        raise DetectorError(
            "model.neck.in_channels",
            f"the {neck.get('type')} neck takes in_channels={in_channels!r}; the pruned backbones give "
            "1 to 4 maps (strides 4, 8, 16, 32) of equal width, listed per map",
            "use a neck that takes a list of maps (FPN, ChannelMapper, PAFPN, ...)",
        )
    n = len(in_channels)
    levels = backbone.get("out_indices")
    if levels is None:
        return list(LEVELS[-n:])
    levels = [int(i) for i in levels]
    if len(levels) != n or levels != sorted(set(levels)) or not set(levels) <= set(LEVELS):
        raise DetectorError(
            "model.backbone.out_indices",
            f"out_indices {levels} of the base's backbone do not give the {n} maps that "
            f"model.neck.in_channels lists",
            f"set model.backbone.out_indices to {n} increasing levels of {list(LEVELS)} "
            "(strides 4, 8, 16, 32), one per entry of model.neck.in_channels",
        )
    return levels


def adapt_detector(model: dict, families: tuple[str, ...]) -> dict:
    """The base's ``model`` as ``PrunedDetector`` of its detector, with a pruned backbone (the
    base's own when its type is one of ``families``, else ``PrunedViT``) whose ``out_indices``
    the neck takes. Raises DetectorError naming the key and the fix."""
    model = dict(model)
    kind = model.pop("type", None)
    if kind == "PrunedMaskRCNN":  # configs written before PrunedDetector
        kind = "MaskRCNN"
    detector = model.pop("detector") if kind == "PrunedDetector" else _detector_type(kind)
    neck = model.get("neck")
    if not isinstance(neck, dict):
        raise DetectorError(
            "model.neck",
            f"the {detector} base has {'no neck' if neck is None else 'a list of necks'}; the "
            "pruned backbones' maps go to one neck (FPN, ChannelMapper, ...)",
            "use a base whose model has one neck taking the backbone's maps",
        )
    backbone = dict(model.get("backbone") or {})
    levels = _levels(backbone, neck)
    if backbone.get("type") not in families:
        backbone = dict(type=families[0], out_channels=neck.get("out_channels", 256))
    backbone["out_indices"] = levels
    return {"type": "PrunedDetector", "detector": detector, **model, "backbone": backbone}


def set_num_classes(node: Any, n: int) -> None:
    """Every head's ``num_classes`` under ``node`` (a model dict) becomes ``n``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "num_classes":
                node[key] = n
            elif key not in _OTHER_CLASSES:
                set_num_classes(value, n)
    elif isinstance(node, (list, tuple)):
        for value in node:
            set_num_classes(value, n)
