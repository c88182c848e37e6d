# ViT-Adapter's 3x+MS recipe (the official SViT / ViT-Adapter Mask R-CNN and Cascade Mask R-CNN
# configs) without a model: COCO instances, multi-scale training with random crop, AdamW, 36
# epochs. The built-in templates (mask_rcnn_vit.py, cascade_mask_rcnn_vit.py) add their detector;
# prunebench fills in the pruning axes, data paths and each stage's schedule per run.
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['prunebench.models'], allow_failed_imports=False)

# Multi-scale training with random crop (DETR-style AutoAugment of ViT-Adapter's 3x+MS recipe).
# As in the official (mmdet 2) pipeline, a crop that holds no box is trained on as a negative
# image (allow_negative_crop=True), and only RandomCrop drops boxes (those it cuts to nothing): no
# FilterAnnotations, which would also drop slivers under its minimum size, and crops left with none.
_scales = [(1333, s) for s in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(1333, 400), (1333, 500), (1333, 600)],
              keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
              allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)],
    ]),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=(1024, 1024),
         allow_negative_crop=True),
    dict(type='PackDetInputs'),
]
# batch_size: the run's total batch (data.batch_size); the config.py prunebench writes for a run
# holds it per GPU, as MMDetection's configs do.
train_dataloader = dict(batch_size=16, dataset=dict(pipeline=train_pipeline))
# Validation during training is off: each run is tested once at the end (tools/test.py).
val_dataloader = None
val_evaluator = None
val_cfg = None

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=36, val_interval=37)
test_cfg = dict(type='TestLoop')
# AdamW, no weight decay on norms, biases and pos_embed, no gradient clipping (official configs).
# schedule.amp makes it an AmpOptimWrapper with dynamic loss scaling from 512 (the official fp16).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'pos_embed': dict(decay_mult=0.0),
                                    'level_embed': dict(decay_mult=0.0)}),
    clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=36, milestones=[27, 33], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3,
                                     save_last=True))
