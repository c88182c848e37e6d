"""Generated MMDetection configs carry the paper's schedule and work from MMDetection's own bases."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

from prunebench.grid import GridError
from prunebench.sweep import prepare

GRID = """\
name: cfg
base: {base}
backbone: {{embed_dim: 32, depth: 2, num_heads: 2, prune_layers: [1], keep_ratios: [0.5], out_channels: 16{extra_bb}}}
data: {{type: synthetic, num_train: 4, num_val: 2, image_size: [64, 64], num_classes: 2, img_scale: [64, 64], cache_dir: {cache}}}
schedule:
  dense: {{epochs: 36, milestones: [27, 33]}}
  finetune: {{epochs: 4}}
axes: {{pruned_tokens: [preserve], reactivation: [false], rate: [dynamic], selector: [mlp]}}
"""


def sweep(tmp_path: Path, base: str = "mask-rcnn-vit", extra_bb: str = ""):
    path = tmp_path / "g.yaml"
    path.write_text(GRID.format(base=base, cache=tmp_path / "cache", extra_bb=extra_bb))
    s = prepare(path, tmp_path / "results")
    dense, finetune = s.runs
    load = lambda spec: Config.fromfile(str(s.sweep_dir / spec.run_id / "config.py"))  # noqa: E731
    return load(dense), load(finetune)


def test_paper_schedule_in_generated_configs(tmp_path):
    (tmp_path / "deit.pth").write_bytes(b"x")
    dense, ft = sweep(tmp_path, extra_bb=", pretrained: deit.pth")
    opt = dense.optim_wrapper
    assert opt.type == "OptimWrapper" and opt.optimizer.type == "AdamW" and opt.clip_grad is None
    assert (opt.optimizer.lr, opt.optimizer.weight_decay) == (1e-4, 0.05)
    assert opt.paramwise_cfg.norm_decay_mult == 0 and opt.paramwise_cfg.bias_decay_mult == 0
    assert opt.paramwise_cfg.custom_keys["pos_embed"]["decay_mult"] == 0
    assert dense.param_scheduler[0]["end"] == 500 and dense.param_scheduler[1]["milestones"] == [27, 33]
    assert dense.train_cfg.max_epochs == 36 and dense.train_dataloader.batch_size == 16
    assert dense.model.backbone.pretrained == str(tmp_path / "deit.pth")
    train_types = [step["type"] for step in dense.train_dataloader.dataset.pipeline]
    assert "RandomChoice" in train_types and "RandomCrop" in train_types  # multi-scale + crop
    assert (ft.optim_wrapper.optimizer.lr, ft.optim_wrapper.optimizer.weight_decay) == (1e-5, 1e-6)
    assert ft.param_scheduler[1]["milestones"] == [3] and ft.train_cfg.max_epochs == 4
    assert ft.model.backbone.pretrained is None and ft.load_from.endswith("epoch_36.pth")
    assert ft.model.keep_ratio_loss_weight == 4.0


def test_amp_uses_mmengine_amp_wrapper(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        GRID.format(base="mask-rcnn-vit-cpu", cache=tmp_path / "cache", extra_bb="").replace(
            "finetune: {epochs: 4}", "finetune: {epochs: 4}\n  amp: true"
        )
    )
    s = prepare(path, tmp_path / "results")
    cfg = Config.fromfile(str(s.sweep_dir / s.runs[0].run_id / "config.py"))
    assert cfg.optim_wrapper.type == "AmpOptimWrapper"


def test_mmdetection_mask_rcnn_config_as_base(tmp_path):
    """A stock MMDetection Mask R-CNN config works as `base`: backbone and detector replaced."""
    dense, ft = sweep(tmp_path, base="mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py")
    for cfg in (dense, ft):
        assert cfg.model.type == "PrunedMaskRCNN" and cfg.model.backbone.type == "PrunedViT"
        assert cfg.model.backbone.embed_dim == 32 and cfg.model.neck.in_channels == [16] * 4
        assert "prunebench.models" in cfg.custom_imports.imports
        assert cfg.val_dataloader is None and cfg.model.roi_head.mask_head.num_classes == 2
    assert ft.model.backbone.rate == "dynamic"


def test_non_mask_rcnn_base_is_rejected(tmp_path):
    with pytest.raises(GridError, match="not a Mask R-CNN"):
        sweep(tmp_path, base="mmdet::retinanet/retinanet_r50_fpn_1x_coco.py")


@pytest.mark.parametrize("section", ["overrides: {%s: 3}", "axes: {%s: [1, 2]}"])
def test_unknown_component_argument_is_a_grid_error(tmp_path, section):
    path = tmp_path / "g.yaml"
    text = GRID.format(base="mask-rcnn-vit-cpu", cache=tmp_path / "cache", extra_bb="")
    text = text.replace("axes: {", "axes_: {") if section.startswith("axes") else text
    text = (
        text.replace("axes_: {", "axes: {model.backbone.no_such_key: [1, 2], ")
        if section.startswith("axes")
        else text + section % "model.backbone.no_such_key" + "\n"
    )
    path.write_text(text)
    with pytest.raises(GridError) as err:
        prepare(path, tmp_path / "results")
    msg = str(err.value)
    assert "PrunedViT (at model.backbone) takes no argument 'no_such_key'" in msg
    assert "keep_ratios" in msg and "pretrained" in msg and "g.yaml:" in msg
    assert not (tmp_path / "results" / "cfg").exists()


def test_known_component_arguments_pass(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        GRID.format(base="mask-rcnn-vit-cpu", cache=tmp_path / "cache", extra_bb="")
        + "overrides: {model.backbone.tau: 0.5, model.keep_ratio_loss_weight: 2.0, "
        "model.roi_head.bbox_head.reg_class_agnostic: true}\n"
    )
    s = prepare(path, tmp_path / "results")
    cfg = Config.fromfile(str(s.sweep_dir / s.runs[1].run_id / "config.py"))
    assert cfg.model.backbone.tau == 0.5 and cfg.model.keep_ratio_loss_weight == 2.0
