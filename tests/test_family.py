"""The backbone family (plain DeiT or the paper's SViT-Adapter) as a grid setting and an axis."""

from pathlib import Path

import pytest
from mmengine.config import Config

from prunebench.grid import GridError, load_grid
from prunebench.spec import expand
from prunebench.sweep import prepare

GRID = """\
name: fam
base: mask-rcnn-vit-cpu
backbone:
  embed_dim: 48
  depth: 2
  num_heads: 3
  out_channels: 16
  prune_layers: [1]
  keep_ratios: [0.5]
{backbone}
data: {{type: synthetic, num_train: 8, num_val: 4, image_size: [64, 64], num_classes: 2, img_scale: [64, 64], cache_dir: {cache}}}
schedule: {{dense: {{iters: 4}}, finetune: {{iters: 2}}, warmup_iters: 1}}
axes:
  rate: [fixed, dynamic]
{axes}
"""


ADAPTER = "  conv_inplane: 8\n  interaction_indexes: [[0, 0], [1, 1]]"


def grid_file(tmp_path: Path, backbone: str = ADAPTER, axes: str = "  family: [plain, adapter]") -> Path:
    path = tmp_path / "fam.yaml"
    path.write_text(GRID.format(cache=tmp_path / "cache", backbone=backbone, axes=axes))
    return path


def test_family_axis_gives_a_dense_parent_per_family(tmp_path):
    runs, _ = expand(load_grid(grid_file(tmp_path)))
    dense = {r.axes["family"]: r for r in runs if r.stage == "dense"}
    assert set(dense) == {"plain", "adapter"}
    for r in runs:
        family = r.axes["family"]
        assert r.run_id.split("-s0-")[0].endswith(f"-{family}")
        assert r.backbone_args["family"] == family
        # another family's own arguments are not passed on
        assert ("out_channels" in r.backbone_args) == (family == "plain")
        assert ("conv_inplane" in r.backbone_args) == (family == "adapter")
        if r.stage == "finetune":
            assert r.depends_on == (dense[family].run_id,)


def test_adapter_config_builds_the_adapter_with_its_feature_channels(tmp_path):
    sweep = prepare(grid_file(tmp_path), tmp_path / "results")
    for spec in sweep.runs:
        cfg = Config.fromfile(str(sweep.sweep_dir / spec.run_id / "config.py"))
        bb = cfg.model.backbone
        if spec.axes["family"] == "adapter":
            assert bb.type == "PrunedViTAdapter" and "out_channels" not in bb
            assert bb.conv_inplane == 8 and bb.interaction_indexes == [[0, 0], [1, 1]]
            assert cfg.model.neck.in_channels == [48] * 4  # the adapter's maps have embed_dim channels
            assert cfg.sync_bn == "torch"
        else:
            assert bb.type == "PrunedViT" and "conv_inplane" not in bb
            assert cfg.model.neck.in_channels == [16] * 4 and "sync_bn" not in cfg
        assert "level_embed" in cfg.optim_wrapper.paramwise_cfg.custom_keys


def test_generated_adapter_config_builds_in_mmdetection(tmp_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import prunebench.models  # noqa: F401

    register_all_modules()
    sweep = prepare(grid_file(tmp_path, backbone="", axes=""), tmp_path / "results")  # default: plain
    assert all(r.backbone_args.get("family", "plain") == "plain" for r in sweep.runs)
    path = grid_file(tmp_path, backbone=f"  family: adapter\n{ADAPTER}", axes="")
    path.write_text(path.read_text().replace("  out_channels: 16\n", ""))  # a plain-only argument
    sweep = prepare(path, tmp_path / "results2")
    finetune = next(r for r in sweep.runs if r.stage == "finetune")
    model = MODELS.build(Config.fromfile(str(sweep.sweep_dir / finetune.run_id / "config.py")).model)
    assert (
        type(model.backbone).__name__ == "PrunedViTAdapter" and model.backbone.rate == finetune.axes["rate"]
    )


def test_selector_init_is_a_finetune_setting(tmp_path):
    """``selector_init`` (default ``official``) reaches the finetunes only: the dense run's id does
    not change with it, the finetunes' ids do."""
    official, _ = expand(load_grid(grid_file(tmp_path, backbone="", axes="")))
    calibrated, _ = expand(load_grid(grid_file(tmp_path, backbone="  selector_init: calibrated", axes="")))
    assert official[0].stage == "dense" and "selector_init" not in official[0].backbone_args
    assert official[0].run_id == calibrated[0].run_id
    assert {r.backbone_args["selector_init"] for r in official[1:]} == {"official"}
    assert {r.backbone_args["selector_init"] for r in calibrated[1:]} == {"calibrated"}
    assert {r.run_id for r in official[1:]}.isdisjoint(r.run_id for r in calibrated[1:])


@pytest.mark.parametrize(
    "backbone, axes, expected",
    [
        (f"  family: plain\n{ADAPTER}", "", ["backbone.conv_inplane", "adapter backbone only", "runs plain"]),
        ("  family: vit", "", ["backbone.family", "unknown family 'vit'", "plain, adapter"]),
        ("", "  family: [plain, swin]", ["axes.family[1]", "unknown family 'swin'"]),
        ("  selector_init: warm", "", ["backbone.selector_init", "official, target, calibrated"]),
        ("  selector_inference: sample", "", ["backbone.selector_inference", "argmax, gumbel"]),
        ("", "  famly: [plain]", ["axes.famly", "did you mean `family`?"]),
    ],
)
def test_family_errors_name_the_key(tmp_path, backbone, axes, expected):
    with pytest.raises(GridError) as err:
        load_grid(grid_file(tmp_path, backbone=backbone, axes=axes))
    for part in expected:
        assert part in str(err.value)
    assert "fam.yaml" in str(err.value) and "Fix:" in str(err.value)
