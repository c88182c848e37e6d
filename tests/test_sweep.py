"""Sweep preparation: run folders and generated MMDetection configs."""

from pathlib import Path

import pytest
from mmengine.config import Config

from prunebench.grid import GridError
from prunebench.results import read_json
from prunebench.sweep import prepare

GRID = """\
name: mini
base: mask-rcnn-vit-cpu
backbone: {{embed_dim: 32, depth: 2, num_heads: 2, prune_layers: [1], keep_ratios: [0.5], out_channels: 16}}
data: {{type: synthetic, num_train: 8, num_val: 4, image_size: [64, 64], num_classes: 2, img_scale: [64, 64], batch_size: 2, cache_dir: {cache}}}
schedule: {{dense: {{iters: 4}}, finetune: {{iters: 2}}, warmup_iters: 1}}
bench: {{warmup: 1, repeats: 2}}
axes:
  pruned_tokens: [preserve]
  reactivation: [true]
  rate: [fixed, dynamic]
  selector: [mlp]
{extra}
"""


def make_grid(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "mini.yaml"
    path.write_text(GRID.format(cache=tmp_path / "cache", extra=extra))
    return path


def test_prepare_writes_loadable_configs(tmp_path):
    sweep = prepare(
        make_grid(tmp_path, "overrides: {optim_wrapper.optimizer.weight_decay: 0.01}"), tmp_path / "results"
    )
    assert [r.stage for r in sweep.runs] == ["dense", "finetune", "finetune"]
    dense, pruned = sweep.runs[0], sweep.runs[1]
    for spec in sweep.runs:
        run_dir = sweep.sweep_dir / spec.run_id
        assert read_json(run_dir / "run.json") == spec.to_json()
        assert read_json(run_dir / "status.json")["state"] == "pending"
    cfg = Config.fromfile(str(sweep.sweep_dir / pruned.run_id / "config.py"))
    assert cfg.model.type == "PrunedDetector" and cfg.model.backbone.type == "PrunedViT"
    assert cfg.model.backbone.rate == pruned.axes["rate"] and cfg.model.backbone.reactivation is True
    assert cfg.model.backbone.prune_layers == [1] and cfg.model.neck.in_channels == [16] * 4
    assert cfg.load_from.endswith(f"{dense.run_id}/work_dir/iter_4.pth")
    assert cfg.train_cfg == dict(type="IterBasedTrainLoop", max_iters=2, val_interval=3)
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.01
    assert cfg.model.roi_head.bbox_head.num_classes == 2
    assert cfg.custom_imports.imports == ["prunebench.models", "prunebench.hooks"]
    assert Path(cfg.test_evaluator.ann_file).is_file()
    dense_cfg = Config.fromfile(str(sweep.sweep_dir / dense.run_id / "config.py"))
    assert dense_cfg.model.backbone.prune_layers == [] and dense_cfg.load_from is None


def test_prepare_is_idempotent_and_keeps_state(tmp_path):
    grid = make_grid(tmp_path)
    first = prepare(grid, tmp_path / "results")
    run_dir = first.sweep_dir / first.runs[0].run_id
    (run_dir / "status.json").write_text('{"state": "done"}')
    second = prepare(grid, tmp_path / "results")
    assert [r.run_id for r in second.runs] == [r.run_id for r in first.runs]
    assert read_json(run_dir / "status.json")["state"] == "done"


def test_bad_dotted_key_fails_before_anything_is_written(tmp_path):
    grid = make_grid(tmp_path, "overrides: {optim_wraper.optimizer.lr: 0.1}")
    with pytest.raises(GridError) as err:
        prepare(grid, tmp_path / "results")
    assert "mini.yaml" in str(err.value) and "'optim_wraper'" in str(err.value)
    assert not (tmp_path / "results" / "mini").exists()


def test_generated_config_builds_in_mmdetection(tmp_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import prunebench.models  # noqa: F401

    register_all_modules()
    sweep = prepare(make_grid(tmp_path), tmp_path / "results")
    cfg = Config.fromfile(str(sweep.sweep_dir / sweep.runs[-1].run_id / "config.py"))
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == "PrunedMaskRCNN"
    assert type(model.backbone).__name__ == "PrunedViT"


@pytest.mark.parametrize("under", ["", "sub"])
def test_results_that_is_a_file_is_a_one_line_error(tmp_path, under):
    from typer.testing import CliRunner

    from prunebench.cli import app

    results = tmp_path / "results.txt"
    results.write_text("not a folder")
    target = results / under if under else results
    out = CliRunner().invoke(app, ["sweep", str(make_grid(tmp_path)), "--results", str(target)])
    assert out.exit_code == 2, out.output
    lines = [ln for ln in out.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in out.output, out.output
    assert lines[0].startswith("error: --results") and "not a folder" in lines[0]
    assert results.read_text() == "not a folder"
    with pytest.raises(NotADirectoryError, match="results.txt is a file" if under else "not a folder"):
        prepare(make_grid(tmp_path), target)
