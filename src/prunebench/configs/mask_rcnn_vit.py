# Mask R-CNN + PrunedViT (simple pyramid) + FPN on COCO: the paper's setting and schedule
# (official SViT / ViT-Adapter 3x+MS configs). MMDetection's own Mask R-CNN with the ResNet-50
# backbone replaced by PrunedViT and the pruning losses added (PrunedDetector), on the 3x+MS
# recipe; prunebench fills in the pruning axes, data paths and each stage's schedule per run.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './recipe_vit_3x_ms.py',
]

model = dict(
    type='PrunedDetector',
    detector='MaskRCNN',
    keep_ratio_loss_weight=4.0,
    backbone=dict(_delete_=True, type='PrunedViT', arch='deit-small', out_channels=256,
                  drop_path_rate=0.2, pretrained=None),
    neck=dict(in_channels=[256, 256, 256, 256]))
