# DINO (4 scales) + PrunedViT + ChannelMapper on COCO boxes: MMDetection's DINO 12-epoch recipe
# (dino-4scale_r50_8xb2-12e_coco.py) with the ResNet-50 backbone replaced by PrunedViT (its maps
# at strides 8, 16, 32, as ResNet's out_indices (1, 2, 3); the neck adds the stride-64 one) and
# the pruning losses added (PrunedDetector). Box-only: runs report box AP, no mask AP.
_base_ = ['mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py']
custom_imports = dict(imports=['prunebench.models'], allow_failed_imports=False)

model = dict(
    type='PrunedDetector',
    detector='DINO',
    keep_ratio_loss_weight=4.0,
    backbone=dict(_delete_=True, type='PrunedViT', arch='deit-small', out_channels=256,
                  out_indices=[1, 2, 3], drop_path_rate=0.2, pretrained=None),
    neck=dict(in_channels=[256, 256, 256]))
# batch_size: the run's total batch (8 GPUs x 2 images in the recipe)
train_dataloader = dict(batch_size=16)
# Validation during training is off: each run is tested once at the end (tools/test.py).
val_dataloader = None
val_evaluator = None
val_cfg = None
