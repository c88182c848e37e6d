"""Generated MMDetection configs carry the paper's schedule and work from MMDetection's own bases."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

from prunebench.grid import GridError
from prunebench.mmdet_config import own_visualizer
from prunebench.sweep import prepare, run_sweep

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


def write_grid(tmp_path: Path, base: str = "mask-rcnn-vit", extra_bb: str = "") -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(GRID.format(base=base, cache=tmp_path / "cache", extra_bb=extra_bb))
    return path


def sweep(tmp_path: Path, base: str = "mask-rcnn-vit", extra_bb: str = ""):
    s = prepare(write_grid(tmp_path, base, extra_bb), tmp_path / "results")
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
    assert dense.param_scheduler[0]["end"] == 501 and dense.param_scheduler[1]["milestones"] == [27, 33]
    assert dense.train_cfg.max_epochs == 36 and dense.train_dataloader.batch_size == 16
    assert dense.model.backbone.pretrained == str(tmp_path / "deit.pth")
    train_types = [step["type"] for step in dense.train_dataloader.dataset.pipeline]
    assert "RandomChoice" in train_types and "RandomCrop" in train_types  # multi-scale + crop
    assert (ft.optim_wrapper.optimizer.lr, ft.optim_wrapper.optimizer.weight_decay) == (1e-5, 1e-6)
    assert ft.param_scheduler[1]["milestones"] == [3] and ft.train_cfg.max_epochs == 4
    assert ft.model.backbone.pretrained is None and ft.load_from.endswith("epoch_36.pth")
    assert ft.model.keep_ratio_loss_weight == 4.0


@pytest.mark.filterwarnings("ignore:`torch.cuda.amp.GradScaler:FutureWarning")  # MMEngine's call
def test_amp_is_the_official_fp16_dynamic_loss_scaling_from_512(tmp_path, monkeypatch):
    import torch
    from mmengine.optim import build_optim_wrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper

    path = write_grid(tmp_path, "mask-rcnn-vit-cpu")
    path.write_text(path.read_text().replace("finetune: {epochs: 4}", "finetune: {epochs: 4}\n  amp: true"))
    s = prepare(path, tmp_path / "results")
    cfg = Config.fromfile(str(s.sweep_dir / s.runs[0].run_id / "config.py"))
    assert cfg.optim_wrapper.type == "AmpOptimWrapper"
    # MMEngine builds it only where CUDA is; here its checks are bypassed to see what it builds
    monkeypatch.setattr(amp_optimizer_wrapper, "is_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    wrapper = build_optim_wrapper(torch.nn.Linear(2, 2), cfg.optim_wrapper)
    assert wrapper.loss_scaler.get_scale() == 512
    assert wrapper._scale_update_param is None  # dynamic: the scale grows and backs off from there


def _image_with_one_box(tmp_path: Path) -> dict:
    """A 900x1400 image with one 30x30 object in its corner, as CocoDataset hands it to the pipeline."""
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "img.jpg"), np.full((900, 1400, 3), 127, np.uint8))
    box = dict(bbox=[0, 0, 30, 30], bbox_label=0, ignore_flag=0, mask=[[0, 0, 30, 0, 30, 30, 0, 30]])
    return dict(img_path=str(tmp_path / "img.jpg"), img_id=0, height=900, width=1400, instances=[box])


def test_negative_crops_are_kept_and_trained_on_as_in_the_official_pipeline(tmp_path):
    """The template's augmentation is the official one (mmdet 2's AutoAugment as RandomChoice; no
    FilterAnnotations); a crop without boxes is kept, and Mask R-CNN (the CPU template's, for
    speed) trains on such an image: finite loss, weights updated."""
    import copy
    import random

    import numpy as np
    import torch
    from mmdet.registry import MODELS
    from mmengine.dataset import Compose, pseudo_collate
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    import prunebench.models  # noqa: F401

    full, cpu = (
        prepare(write_grid(tmp_path, base), tmp_path / base)
        for base in ("mask-rcnn-vit", "mask-rcnn-vit-cpu")
    )
    cfg, cpu_cfg = (Config.fromfile(str(s.sweep_dir / s.runs[1].run_id / "config.py")) for s in (full, cpu))
    steps = cfg.train_dataloader.dataset.pipeline
    official = ["LoadImageFromFile", "LoadAnnotations", "RandomFlip", "RandomChoice", "RandomCrop"]
    assert [t["type"] for t in steps] == [*official, "PackDetInputs"]
    crops = [steps[4], steps[3]["transforms"][1][1]]
    assert [(c["crop_size"], c["allow_negative_crop"]) for c in crops] == [
        ((1024, 1024), True),
        ((384, 600), True),
    ]
    init_default_scope("mmdet")
    pipeline = Compose(steps)
    info = _image_with_one_box(tmp_path)
    random.seed(0)
    np.random.seed(0)
    samples = [pipeline(copy.deepcopy(info)) for _ in range(10)]
    assert all(sample is not None for sample in samples)  # no image dropped
    negative = [x for x in samples if len(x["data_samples"].gt_instances) == 0]
    assert negative and len(negative) < len(samples)
    torch.manual_seed(0)
    model = MODELS.build(cpu_cfg.model)
    model.init_weights()
    before = [p.detach().clone() for p in model.parameters()]
    losses = model.train_step(pseudo_collate(negative[:1]), build_optim_wrapper(model, cpu_cfg.optim_wrapper))
    assert torch.isfinite(losses["loss"]) and losses["loss_bbox"] == 0 and losses["loss_mask"] == 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_written_config_holds_the_batch_per_gpu_as_mmdetection_does(tmp_path):
    path = write_grid(tmp_path)
    one, two = prepare(path, tmp_path / "r1"), prepare(path, tmp_path / "r2", gpus=2)
    assert [r.run_id for r in one.runs] == [r.run_id for r in two.runs]  # ids ignore the GPU count
    for s, gpus in ((one, 1), (two, 2)):
        file = s.sweep_dir / s.runs[0].run_id / "config.py"
        cfg = Config.fromfile(str(file))
        assert cfg.train_dataloader.batch_size == 16 // gpus and cfg.train_gpus == gpus
        assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)
        header = "".join(line for line in file.read_text().splitlines(True) if line.startswith("#"))
        assert f"#     bash tools/dist_train.sh {file} {gpus}\n" in header
        assert (f"#     python tools/train.py {file}\n" in header) == (gpus == 1)
        assert f"train_gpus = {gpus}" in header and f"is per GPU ({16 // gpus})" in header


def test_a_total_batch_that_does_not_split_over_the_gpus_is_a_grid_error(tmp_path):
    with pytest.raises(GridError) as err:
        prepare(write_grid(tmp_path), tmp_path / "results", gpus=3)
    msg = str(err.value)
    assert (
        "g.yaml" in msg and "data.batch_size: a total batch of 16 images per run is not divisible by 3" in msg
    )
    assert "multiple of 3" in msg and "--gpus-per-job" in msg
    assert not (tmp_path / "results" / "cfg").exists()


@pytest.mark.parametrize(
    "executor, options, gpus",
    [
        ("local", {"gpus": ["0", "1", "2", "3"], "gpus_per_job": 2}, 2),
        ("slurm", {}, 1),
        ("slurm", {"gpus_per_job": 4}, 4),
    ],
)
def test_the_sweep_writes_configs_for_the_gpus_of_one_run(tmp_path, executor, options, gpus):
    from rich.console import Console

    path = write_grid(tmp_path)
    run_sweep(path, tmp_path / "results", executor, options, dry_run=True, console=Console(quiet=True))
    for run_dir in (tmp_path / "results" / "cfg").glob("*-s0-*"):
        cfg = Config.fromfile(str(run_dir / "config.py"))
        assert (cfg.train_gpus, cfg.train_dataloader.batch_size) == (gpus, 16 // gpus)


def test_mmdetection_mask_rcnn_config_as_base(tmp_path):
    """A stock MMDetection Mask R-CNN config works as `base`: backbone and detector replaced."""
    dense, ft = sweep(tmp_path, base="mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py")
    for cfg in (dense, ft):
        assert (cfg.model.type, cfg.model.detector) == ("PrunedDetector", "MaskRCNN")
        assert cfg.model.backbone.type == "PrunedViT"
        assert cfg.model.backbone.embed_dim == 32 and cfg.model.neck.in_channels == [16] * 4
        assert "prunebench.models" in cfg.custom_imports.imports
        assert cfg.val_dataloader is None and cfg.model.roi_head.mask_head.num_classes == 2
    assert ft.model.backbone.rate == "dynamic"


def test_a_base_without_a_neck_for_the_backbone_is_rejected(tmp_path):
    with pytest.raises(GridError, match="model.neck.in_channels"):
        sweep(tmp_path, base="mmdet::yolof/yolof_r50-c5_8xb8-1x_coco.py")


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


def test_two_runners_in_one_process_each_keep_their_own_visualizer(tmp_path):
    from mmdet.registry import VISUALIZERS
    from mmdet.visualization import DetLocalVisualizer  # noqa: F401  (registers it)
    from mmengine.visualization import Visualizer

    folders = []
    for i in range(2):  # MMDetection's configs name every visualizer "visualizer"
        cfg = Config(
            dict(
                visualizer=dict(
                    type="DetLocalVisualizer", name="visualizer", vis_backends=[dict(type="LocalVisBackend")]
                )
            )
        )
        own_visualizer(cfg)
        vis = VISUALIZERS.build({**cfg.visualizer, "save_dir": str(tmp_path / str(i))})
        assert Visualizer.get_current_instance() is vis  # a new instance, not the first one again
        folders.append(vis.get_backend("LocalVisBackend")._save_dir)
    assert folders == [str(tmp_path / str(i) / "vis_data") for i in range(2)]
