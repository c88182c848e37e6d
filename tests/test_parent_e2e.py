"""End-to-end: a tiny sweep's dense checkpoint becomes the parent of a second study, whose
off-the-shelf EViT cell trains nothing and scores as the parent with EViT applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunebench.mmdet_config import own_visualizer
from prunebench.report import build_report
from prunebench.results import read_json
from prunebench.sweep import run_sweep

pytestmark = pytest.mark.slow

GRID = """\
name: {name}
base: mask-rcnn-vit-cpu
backbone: {{embed_dim: 32, depth: 10, num_heads: 2, prune_layers: [3], keep_ratios: [0.5], out_channels: 16}}
data: {{type: synthetic, num_train: 8, num_val: 4, image_size: [64, 64], num_classes: 2, img_scale: [64, 64], batch_size: 2, cache_dir: {cache}, colour_by_class: true, min_size: 0.4, max_size: 0.7, max_objects: 1}}
schedule: {{dense: {dense}, finetune: {{iters: {ft}}}, warmup_iters: 0, checkpoint_interval: 2}}
bench: {{warmup: 1, repeats: 1, images: 1}}
axes:
  method: [evit]
"""


def write(tmp_path: Path, name: str, dense: str, ft: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(GRID.format(name=name, dense=dense, ft=ft, cache=tmp_path / "cache"))
    return path


def test_checkpoint_parent_and_off_the_shelf_evit(tmp_path):
    first = run_sweep(write(tmp_path, "trained", "{iters: 24, lr: 0.0005}", 2), tmp_path / "results")
    dense_id = next(r for r in first if r.startswith("dense"))
    trained = read_json(tmp_path / "results" / "trained" / dense_id / "metrics.json")
    ckpt = tmp_path / "results" / "trained" / dense_id / trained["checkpoint"]  # relative to the run
    assert ckpt.is_file()

    grid = write(tmp_path, "reuse", f"{{checkpoint: {ckpt}}}", 0)
    states = run_sweep(grid, tmp_path / "results")
    assert sorted(states.values()) == ["done", "done"], states
    sweep = tmp_path / "results" / "reuse"
    parent_id = next(r for r in states if r.startswith("dense"))
    evit_id = next(r for r in states if r.startswith("evit"))
    parent = read_json(sweep / parent_id / "metrics.json")
    evit = read_json(sweep / evit_id / "metrics.json")
    # the parent is evaluated, not trained, and scores as the sweep that wrote it
    assert parent["trained"] is False and parent["train_time_s"] < 1 and parent["checkpoint"] == str(ckpt)
    assert parent["coco"] == trained["coco"]
    for run_id in (parent_id, evit_id):
        log = (sweep / run_id / "train.log").read_text()
        assert f"Load checkpoint from {ckpt}" in log and "Iter(train)" not in log
    assert evit["trained"] is False and 0 < evit["keep_ratio"]["mean"] < 1  # EViT applied
    assert evit["paired"]["dense_run_id"] == parent_id  # timed beside the parent

    # the parent evaluated directly with EViT applied gives the cell's COCO numbers
    from mmengine.config import Config
    from mmengine.runner import Runner

    import prunebench.models  # noqa: F401

    cfg = Config.fromfile(str(tmp_path / "results" / "trained" / dense_id / "config.py"))
    spec = json.loads((sweep / evit_id / "run.json").read_text())
    cfg.model.backbone.update({k: v for k, v in spec["backbone_args"].items() if k != "family"})
    cfg.load_from, cfg.work_dir, cfg.randomness = str(ckpt), str(tmp_path / "direct"), dict(seed=0)
    own_visualizer(cfg)  # not an earlier test's, with its deleted folder
    raw = Runner.from_cfg(cfg).test()
    assert raw["coco/bbox_mAP"] * 100 == pytest.approx(evit["box_ap"])
    assert raw["coco/segm_mAP"] * 100 == pytest.approx(evit["mask_ap"])

    report = build_report(sweep)
    rows = {r["run_id"]: r for r in report.rows}
    assert rows[parent_id]["dense"] and rows[parent_id]["box_ap"] == parent["box_ap"]
    assert rows[evit_id]["stage"] == "off-the-shelf" and rows[evit_id]["label"].endswith("(off-the-shelf)")
    assert rows[evit_id]["d_box_ap"] == pytest.approx(evit["box_ap"] - parent["box_ap"])
