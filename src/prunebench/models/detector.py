"""The pruning losses on any MMDetection detector: ``PrunedDetector`` builds the detector named by
``detector`` (``MaskRCNN``, ``CascadeRCNN``, ``HybridTaskCascade``, ``RetinaNet``, ``ATSS``,
``GFL``, ``DINO``, ...) with :class:`PruningLosses` mixed in, so its loss dict also holds the
backbone's keep-ratio loss (and, on request, DynamicViT's distillation from the dense parent).

One mechanism for every detector: the detector's own class does the work, the mixin only adds
to what its ``loss`` returns. The built model's modules and state-dict keys are the detector's
own, so checkpoints carry over between ``PrunedDetector`` and the plain detector. The class for
``MaskRCNN`` is ``PrunedMaskRCNN``, still registered under that name for earlier configs.
"""

from __future__ import annotations

import functools
from typing import Optional

from mmdet.models.detectors import BaseDetector, MaskRCNN
from mmdet.registry import MODELS

from .distill import Distiller

__all__ = ["PrunedDetector", "PruningLosses", "PrunedMaskRCNN", "pruned_class"]


class PruningLosses:
    """Mixin for a detector class: ``loss_keep_ratio = weight * backbone.keep_ratio_loss()``.

    The backbone's loss is the official code's: squared gap between kept and target share per
    selector decision, averaged over decisions (per image for the fixed rate, per batch for the
    dynamic rate); the weight (4.0 in the paper, 2.0 in DynamicViT) is ``keep_ratio_loss_weight``.
    A dense backbone gives 0.

    ``distill=dict(teacher=CHECKPOINT, weight=0.5)`` adds DynamicViT's teacher terms
    (:class:`~prunebench.models.distill.Distiller`; the teacher is the dense parent's checkpoint).
    """

    def __init__(self, *, keep_ratio_loss_weight: float = 4.0, distill: Optional[dict] = None, **kwargs):
        super().__init__(**kwargs)  # the detector's own arguments, by keyword (as the registry builds)
        self.keep_ratio_loss_weight = keep_ratio_loss_weight
        self.distiller = Distiller(kwargs["backbone"], **distill) if distill else None
        self._maps = None
        if self.distiller is not None:  # the backbone's maps of the training forward, for the teacher terms
            self.backbone.register_forward_hook(self._remember_maps)

    def _remember_maps(self, module, args, maps) -> None:
        self._maps = maps if self.training else None

    def loss(self, batch_inputs, batch_data_samples) -> dict:
        losses = super().loss(batch_inputs, batch_data_samples)
        losses["loss_keep_ratio"] = self.keep_ratio_loss_weight * self.backbone.keep_ratio_loss()
        if self.distiller is not None:
            losses.update(self.distiller.losses(self.backbone, self._maps, batch_inputs))
            self._maps = None
        return losses


@functools.cache
def pruned_class(detector: type) -> type:
    """``detector`` with :class:`PruningLosses` mixed in, named ``Pruned<Detector>`` (one class per
    detector class, made once; reachable by name in this module, so its instances pickle)."""
    if issubclass(detector, PruningLosses):
        return detector
    name = f"Pruned{detector.__name__}"
    cls = type(name, (PruningLosses, detector), {"__module__": __name__, "__qualname__": name})
    globals()[name] = cls
    return cls


@MODELS.register_module()
class PrunedDetector:
    """``dict(type='PrunedDetector', detector='CascadeRCNN', keep_ratio_loss_weight=4.0,
    distill=None, backbone=..., neck=..., <the detector's own arguments>)`` builds the registered
    detector ``detector`` with the pruning losses added (an instance of ``pruned_class(...)``)."""

    def __new__(cls, detector: str, **kwargs):
        base = MODELS.get(detector)
        if not (isinstance(base, type) and issubclass(base, BaseDetector)):
            raise ValueError(
                f"PrunedDetector: detector={detector!r} is not a registered MMDetection detector; "
                "use a detector type such as 'MaskRCNN', 'CascadeRCNN', 'RetinaNet' or 'DINO'"
            )
        return pruned_class(base)(**kwargs)


PrunedMaskRCNN = MODELS.register_module(module=pruned_class(MaskRCNN))
