"""PrunedMaskRCNN: Mask R-CNN whose losses include the backbone's keep-ratio loss."""
from __future__ import annotations

from mmdet.models.detectors import MaskRCNN
from mmdet.registry import MODELS

__all__ = ["PrunedMaskRCNN"]


@MODELS.register_module()
class PrunedMaskRCNN(MaskRCNN):
    """Mask R-CNN plus ``loss_keep_ratio = weight * backbone.keep_ratio_loss()``.

    The loss is the sum over pruning layers of (batch-mean keep rate - target)^2. It steers the
    dynamic rate; under the fixed rate top-k already keeps the target, so the term is ~0
    (rounding only) and detached: logged for uniform logs, no gradient. A dense backbone gives 0.
    """

    def __init__(self, *args, keep_ratio_loss_weight: float = 4.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_ratio_loss_weight = keep_ratio_loss_weight

    def loss(self, batch_inputs, batch_data_samples) -> dict:
        losses = super().loss(batch_inputs, batch_data_samples)
        losses["loss_keep_ratio"] = self.keep_ratio_loss_weight * self.backbone.keep_ratio_loss()
        return losses

