"""Token-pruning models; importing this package registers ``PrunedViT`` and ``PrunedMaskRCNN``
in MMDetection's ``MODELS`` registry."""
from mmdet.registry import MODELS

from .detector import PrunedMaskRCNN
from .pruned_vit import ARCHS, PrunedViT
from .selectors import GatingSelector, MlpSelector, keep_decision

MODELS.register_module(module=PrunedViT)

__all__ = ["PrunedViT", "PrunedMaskRCNN", "ARCHS", "MlpSelector",
           "GatingSelector", "keep_decision"]
