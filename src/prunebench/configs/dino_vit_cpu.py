# CPU-sized variant of dino_vit.py: tiny ViT, a transformer of one encoder and two decoder layers
# with slim FFNs, few queries, small images, single-scale training (tests and CPU smoke grids).
_base_ = ['./dino_vit.py']

# the transformer stays 256 wide: MMDetection's DINO decoder encodes reference points in 256 channels
model = dict(
    num_queries=30,
    backbone=dict(arch='deit-tiny', embed_dim=96, depth=4, num_heads=3, out_channels=64,
                  drop_path_rate=0.0),
    neck=dict(in_channels=[64, 64, 64]),
    encoder=dict(num_layers=1, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=256))),
    decoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=256))),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=10)),
    test_cfg=dict(max_per_img=20))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, batch_sampler=None,
                        dataset=dict(pipeline=train_pipeline))
test_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False)
default_hooks = dict(logger=dict(interval=10))
log_processor = dict(window_size=10)
