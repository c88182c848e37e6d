# Cascade Mask R-CNN + PrunedViT + FPN on COCO: ViT-Adapter's Cascade Mask R-CNN 3x+MS recipe
# (its cascade_mask_rcnn_deit_adapter_small_fpn_3x_coco.py): MMDetection's Cascade Mask R-CNN
# with three 4conv-1fc box heads (SyncBN, GIoU loss on decoded boxes), the ResNet-50 backbone
# replaced by PrunedViT and the pruning losses added (PrunedDetector), on the 3x+MS recipe.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    './recipe_vit_3x_ms.py',
]

# the three stages' box-delta normalisation (MMDetection's and ViT-Adapter's)
_stage_stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
model = dict(
    type='PrunedDetector',
    detector='CascadeRCNN',
    keep_ratio_loss_weight=4.0,
    backbone=dict(_delete_=True, type='PrunedViT', arch='deit-small', out_channels=256,
                  drop_path_rate=0.2, pretrained=None),
    neck=dict(in_channels=[256, 256, 256, 256]),
    roi_head=dict(bbox_head=[
        dict(type='Shared4Conv1FCBBoxHead', in_channels=256, conv_out_channels=256,
             fc_out_channels=1024, roi_feat_size=7, num_classes=80,
             bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                             target_stds=stds),
             reg_class_agnostic=False, reg_decoded_bbox=True,
             norm_cfg=dict(type='SyncBN', requires_grad=True),
             loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
             loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        for stds in _stage_stds]))
