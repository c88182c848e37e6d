"""PrunedMaskRCNN: Mask R-CNN whose losses include the backbone's keep-ratio loss (and, on
request, DynamicViT's distillation from the dense parent)."""

from __future__ import annotations

from typing import Optional

from mmdet.models.detectors import MaskRCNN
from mmdet.registry import MODELS

from .distill import Distiller

__all__ = ["PrunedMaskRCNN"]


@MODELS.register_module()
class PrunedMaskRCNN(MaskRCNN):
    """Mask R-CNN plus ``loss_keep_ratio = weight * backbone.keep_ratio_loss()``.

    The backbone's loss is the official code's: squared gap between kept and target share per
    selector decision, averaged over decisions (per image for the fixed rate, per batch for the
    dynamic rate); the weight (4.0 in the paper, 2.0 in DynamicViT) is ``keep_ratio_loss_weight``.
    A dense backbone gives 0.

    ``distill=dict(teacher=CHECKPOINT, weight=0.5)`` adds DynamicViT's teacher terms
    (:class:`~prunebench.models.distill.Distiller`; the teacher is the dense parent's checkpoint).
    """

    def __init__(
        self,
        backbone: dict,
        *args,
        keep_ratio_loss_weight: float = 4.0,
        distill: Optional[dict] = None,
        **kwargs,
    ):
        super().__init__(backbone, *args, **kwargs)
        self.keep_ratio_loss_weight = keep_ratio_loss_weight
        self.distiller = Distiller(backbone, **distill) if distill else None
        self._maps = None

    def extract_feat(self, batch_inputs):
        maps = self.backbone(batch_inputs)
        self._maps = maps if self.distiller is not None and self.training else None
        return self.neck(maps) if self.with_neck else maps

    def loss(self, batch_inputs, batch_data_samples) -> dict:
        losses = super().loss(batch_inputs, batch_data_samples)
        losses["loss_keep_ratio"] = self.keep_ratio_loss_weight * self.backbone.keep_ratio_loss()
        if self.distiller is not None:
            losses.update(self.distiller.losses(self.backbone, self._maps, batch_inputs))
            self._maps = None
        return losses
