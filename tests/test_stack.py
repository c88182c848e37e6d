"""The installed stack trains: a Mask R-CNN from an MMDetection config, one forward and one step."""

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from prunebench.configs import TEMPLATE_DIR


def test_mask_rcnn_from_config_forward_and_training_step():
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmdet.utils import register_all_modules
    from mmengine.structures import InstanceData

    import prunebench.models  # noqa: F401

    register_all_modules()
    cfg = Config.fromfile(str(TEMPLATE_DIR / "mask_rcnn_vit_cpu.py"))
    cfg.model.roi_head.bbox_head.num_classes = cfg.model.roi_head.mask_head.num_classes = 2
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    h, w = 64, 64
    sample = DetDataSample(
        metainfo=dict(
            img_shape=(h, w),
            ori_shape=(h, w),
            pad_shape=(h, w),
            scale_factor=(1.0, 1.0),
            batch_input_shape=(h, w),
        )
    )
    mask = torch.zeros(1, h, w, dtype=torch.uint8)
    mask[0, 10:40, 12:44] = 1
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[12.0, 10.0, 44.0, 40.0]]),
        labels=torch.tensor([1]),
        masks=BitmapMasks(mask.numpy(), h, w),
    )
    data = dict(inputs=[torch.randint(0, 255, (3, h, w), dtype=torch.uint8)], data_samples=[sample])

    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    before = [p.detach().clone() for p in model.rpn_head.parameters()]
    losses = model.train_step(data, optim)
    assert {"loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"} <= set(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.rpn_head.parameters()))

    model.eval()
    with torch.no_grad():
        out = model.test_step(dict(inputs=data["inputs"], data_samples=[sample.clone()]))
    pred = out[0].pred_instances
    assert pred.bboxes.shape[1] == 4 and len(pred.masks) == len(pred.bboxes)
