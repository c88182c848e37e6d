# CPU-sized variant of mask_rcnn_vit.py: tiny ViT, slim heads, small images, few proposals,
# single-scale training. Used by ablations/smoke.yaml so a whole ablation matrix trains in
# minutes on 2 cores.
_base_ = ['./mask_rcnn_vit.py']

model = dict(
    backbone=dict(arch='deit-tiny', embed_dim=96, depth=4, num_heads=3, out_channels=64,
                  drop_path_rate=0.0),
    neck=dict(in_channels=[64, 64, 64, 64], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=64)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=20)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
# batch_size: the run's total batch, as in mask_rcnn_vit.py
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, batch_sampler=None,
                        dataset=dict(pipeline=train_pipeline))
test_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False)
default_hooks = dict(logger=dict(interval=10))
log_processor = dict(window_size=10)
