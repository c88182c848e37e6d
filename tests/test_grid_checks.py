"""Every grid error a job would fail on is rejected by ``plan`` before any job or run folder:
one line naming the file, the line (where YAML gives one), the key and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from prunebench.cli import app
from prunebench.sweep import prepare

runner = CliRunner()

GRID = """\
name: checks
base: mask-rcnn-vit-cpu
backbone:
  embed_dim: 32
  depth: 4
  num_heads: 2
  prune_layers: [1, 2]
  keep_ratios: [0.7, 0.5]
data:
  num_train: 4
  num_val: 2
  image_size: [64, 64]
  cache_dir: {cache}
schedule:
  dense: {{iters: 2}}
  finetune: {{iters: 1}}
axes: {{pruned_tokens: [preserve], reactivation: [false], rate: [dynamic], selector: [mlp]}}
"""


def plan(tmp_path: Path, text: str | bytes, *replace: tuple[str, str]) -> tuple[int, str]:
    """``prunebench plan`` on ``text`` (the tests' grid with ``replace`` pairs applied)."""
    if isinstance(text, str):
        for old, new in replace:
            assert old in text, old
            text = text.replace(old, new)
        text = text.encode()
    grid = tmp_path / "g.yaml"
    grid.write_bytes(text)
    result = runner.invoke(
        app, ["plan", str(grid), "--results", str(tmp_path / "results")], env={"COLUMNS": "300"}
    )
    return result.exit_code, " ".join(result.output.split())


def base(tmp_path: Path) -> str:
    return GRID.format(cache=tmp_path / "cache")


def rejected(tmp_path: Path, text, *replace, line: int | None, says: str) -> None:
    code, out = plan(tmp_path, text, *replace)
    assert code == 2, out
    where = f"g.yaml:{line}:" if line else "g.yaml:"
    assert where in out and says in out and "Fix:" in out, out
    assert not (tmp_path / "results" / "checks").exists()  # nothing written, no job started


def test_the_test_grid_itself_plans(tmp_path):
    code, out = plan(tmp_path, base(tmp_path))
    assert code == 0, out


@pytest.mark.parametrize(
    ("layers", "says"),
    [
        ("[1, 4]", "[4] outside the 4 blocks"),
        ("[-1, 2]", "[-1] outside the 4 blocks"),
        ("[2, 2]", "not strictly increasing"),
        ("[2, 1]", "not strictly increasing"),
    ],
)
def test_prune_layers_against_the_depth(tmp_path, layers, says):
    rejected(tmp_path, base(tmp_path), ("prune_layers: [1, 2]", f"prune_layers: {layers}"), line=7, says=says)


def test_increasing_keep_ratios_need_reactivation(tmp_path):
    grid = base(tmp_path).replace("keep_ratios: [0.7, 0.5]", "keep_ratios: [0.5, 0.7]")
    rejected(tmp_path, grid, line=8, says="without reactivation the kept set can only shrink")
    code, out = plan(tmp_path, grid, ("reactivation: [false]", "reactivation: [true]"))
    assert code == 0, out  # with reactivation a later layer may keep more


@pytest.mark.parametrize(("key", "line"), [("num_train", 10), ("num_val", 11)])
def test_empty_datasets(tmp_path, key, line):
    rejected(
        tmp_path,
        base(tmp_path),
        (f"{key}: {4 if key == 'num_train' else 2}", f"{key}: 0"),
        line=line,
        says=f"data.{key}",
    )


def test_backbone_is_built_for_each_configuration(tmp_path):
    rejected(tmp_path, base(tmp_path), ("embed_dim: 32", "embed_dim: 30"), line=3, says="cannot be built")


def test_warmup_longer_than_the_stage(tmp_path):
    rejected(
        tmp_path,
        base(tmp_path),
        ("finetune: {iters: 1}", "finetune: {iters: 4, warmup_iters: 4}"),
        line=16,
        says="would never train at its lr",
    )


def test_duplicate_keys_name_both_lines(tmp_path):
    grid = base(tmp_path) + "data:\n  num_train: 8\n"
    rejected(tmp_path, grid, line=18, says="given twice in the same mapping (lines 9 and 18)")


def test_a_name_too_long_for_the_file_system(tmp_path):
    rejected(
        tmp_path,
        base(tmp_path),
        ("name: checks", "name: " + "x" * 300),
        line=1,
        says="too long for a folder name",
    )


def test_a_grid_that_is_not_utf8(tmp_path):
    rejected(tmp_path, base(tmp_path).encode() + b"# caf\xe9\n", line=None, says="not UTF-8 text (byte 0xe9")


def _coco(root: Path, images: int = 3) -> None:
    (root / "img").mkdir(parents=True)
    for i in range(images):
        Image.new("RGB", (64, 64)).save(root / "img" / f"{i}.png")
    ann = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in range(images)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}
            for i in range(images)
        ],
        "categories": [{"id": 1, "name": "box"}],
    }
    (root / "ann.json").write_text(json.dumps(ann))


COCO = "data: {{type: coco, root: {root}, train_ann: ann.json, train_img: img/, val_ann: ann.json, val_img: img/}}\n"


def coco_grid(tmp_path: Path) -> str:
    text = base(tmp_path)
    start, end = text.index("data:"), text.index("schedule:")
    return text[:start] + COCO.format(root=tmp_path / "coco") + text[end:]


def test_coco_image_missing_other_than_the_first(tmp_path):
    _coco(tmp_path / "coco")
    assert plan(tmp_path, coco_grid(tmp_path))[0] == 0
    shutil.rmtree(tmp_path / "results")
    (tmp_path / "coco" / "img" / "2.png").unlink()
    rejected(tmp_path, coco_grid(tmp_path), line=None, says="1 of the 3 images")


def test_coco_annotation_without_bbox(tmp_path):
    _coco(tmp_path / "coco")
    ann = json.loads((tmp_path / "coco" / "ann.json").read_text())
    del ann["annotations"][1]["bbox"]
    (tmp_path / "coco" / "ann.json").write_text(json.dumps(ann))
    rejected(tmp_path, coco_grid(tmp_path), line=None, says="annotation 1 (id 1) lacks bbox")


def test_an_unwritable_results_folder_is_one_line(tmp_path, monkeypatch):
    mkdir = Path.mkdir

    def denied(self, *args, **kwargs):
        if self.is_relative_to(tmp_path / "results"):
            raise PermissionError(13, "Permission denied", str(self))
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    code, out = plan(tmp_path, base(tmp_path))
    assert code == 2 and "cannot write the run folders" in out and "Permission denied" in out, out
    assert "Traceback" not in out


def test_rerunning_a_prepared_sweep_writes_nothing(tmp_path):
    """So a finished sweep re-runs on a read-only folder: it has nothing to write."""
    grid = tmp_path / "g.yaml"
    grid.write_text(base(tmp_path))
    sweep = prepare(grid, tmp_path / "results")

    def files() -> dict:
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sweep.sweep_dir.rglob("*")}

    before = files()
    prepare(grid, tmp_path / "results")
    assert files() == before
