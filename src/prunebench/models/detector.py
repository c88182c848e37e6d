"""PrunedMaskRCNN: Mask R-CNN whose losses include the backbone's keep-ratio loss."""

from __future__ import annotations

from mmdet.models.detectors import MaskRCNN
from mmdet.registry import MODELS

__all__ = ["PrunedMaskRCNN"]


@MODELS.register_module()
class PrunedMaskRCNN(MaskRCNN):
    """Mask R-CNN plus ``loss_keep_ratio = weight * backbone.keep_ratio_loss()``.

    The backbone's loss is the official code's: squared gap between kept and target share per
    selector decision, averaged over decisions (per image for the fixed rate, per batch for the
    dynamic rate); the weight (4.0 in the paper) is ``keep_ratio_loss_weight``. A dense
    backbone gives 0.
    """

    def __init__(self, *args, keep_ratio_loss_weight: float = 4.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_ratio_loss_weight = keep_ratio_loss_weight

    def loss(self, batch_inputs, batch_data_samples) -> dict:
        losses = super().loss(batch_inputs, batch_data_samples)
        losses["loss_keep_ratio"] = self.keep_ratio_loss_weight * self.backbone.keep_ratio_loss()
        return losses
