"""A dense parent from a checkpoint (no dense training) and off-the-shelf cells (finetune length 0)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from typer.testing import CliRunner

from prunebench.cli import app
from prunebench.grid import GridError, load_grid
from prunebench.parent import content_hash
from prunebench.spec import expand
from prunebench.sweep import prepare

GRID = """\
name: parent
base: mask-rcnn-vit-cpu
backbone: {{embed_dim: {dim}, depth: 12, num_heads: 2, prune_layers: [3, 6], keep_ratios: [0.7, 0.5], out_channels: 16}}
data: {{type: synthetic, num_train: 4, num_val: 2, image_size: [64, 64], num_classes: 2, img_scale: [64, 64], cache_dir: {cache}}}
schedule: {{dense: {dense}, finetune: {{iters: {ft}}}}}
axes:
  method: {methods}
seeds: {seeds}
"""


def grid(
    tmp_path: Path, dense="{checkpoint: parent.pth}", methods="[svit, evit]", ft=2, seeds="[0, 1]", dim=32
):
    path = tmp_path / "g.yaml"
    path.write_text(
        GRID.format(dense=dense, methods=methods, ft=ft, seeds=seeds, dim=dim, cache=tmp_path / "cache")
    )
    return path


def save_parent(tmp_path: Path, name: str = "parent.pth", dim: int = 32) -> Path:
    """A dense detector's weights saved as an MMEngine checkpoint, built from a training grid's config."""
    from mmdet.registry import MODELS

    import prunebench.models  # noqa: F401

    sub = tmp_path / f"build-{name}"
    sub.mkdir()
    s = prepare(grid(sub, dense="{iters: 1}", methods="[evit]", seeds="[0]", dim=dim), sub / "results")
    cfg = Config.fromfile(str(s.sweep_dir / s.runs[0].run_id / "config.py"))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    path = tmp_path / name
    torch.save({"meta": {}, "state_dict": model.state_dict()}, path)
    return path


def test_checkpoint_parent_plans_no_dense_training_and_finetunes_load_it(tmp_path):
    ckpt = save_parent(tmp_path)
    s = prepare(grid(tmp_path), tmp_path / "results")
    dense = [r for r in s.runs if r.stage == "dense"]
    assert len(dense) == 1 and not dense[0].trains  # one parent for both seeds, evaluated only
    assert dense[0].seed is None and "-ckpt-" in dense[0].run_id
    assert dense[0].schedule["sha256"] == content_hash(ckpt)
    from mmengine.logging import HistoryBuffer

    assert HistoryBuffer in torch.serialization.get_safe_globals()  # the check left MMEngine files loadable
    cfg = Config.fromfile(str(s.sweep_dir / dense[0].run_id / "config.py"))
    assert cfg.load_from == str(ckpt.resolve())
    finetunes = [r for r in s.runs if r.stage == "finetune"]
    assert sorted(r.seed for r in finetunes) == [0, 0, 1, 1]
    for r in finetunes:
        assert r.trains and r.depends_on == (dense[0].run_id,)
        assert Config.fromfile(str(s.sweep_dir / r.run_id / "config.py")).load_from == str(ckpt.resolve())
    out = CliRunner().invoke(
        app, ["plan", str(grid(tmp_path)), "--results", str(tmp_path / "results")], env={"COLUMNS": "250"}
    )
    assert out.exit_code == 0, out.output
    rows = [line.split() for line in out.output.splitlines() if "-s0-" in line or "-ckpt-" in line]
    stages = {row[0]: row[1] for row in rows}
    assert stages[dense[0].run_id] == "parent" and set(stages.values()) == {"parent", "finetune"}
    size = out.output.split("study size")[1]
    assert "parent           1 runs           0 training iterations" in size and "dense " not in size


def test_parent_run_id_follows_the_file_content_not_its_name(tmp_path):
    ckpt = save_parent(tmp_path)
    first = {r.stage: r.run_id for r in expand(load_grid(grid(tmp_path)))[0]}
    ckpt.rename(tmp_path / "moved.pth")
    moved = {r.stage: r.run_id for r in expand(load_grid(grid(tmp_path, dense="{checkpoint: moved.pth}")))[0]}
    assert moved == first
    data = torch.load(tmp_path / "moved.pth", weights_only=True)
    data["state_dict"]["backbone.pos_embed"] += 1
    torch.save(data, tmp_path / "moved.pth")
    changed = {
        r.stage: r.run_id for r in expand(load_grid(grid(tmp_path, dense="{checkpoint: moved.pth}")))[0]
    }
    assert changed["dense"] != first["dense"] and changed["finetune"] != first["finetune"]


def test_one_checkpoint_per_seed(tmp_path):
    a, b = save_parent(tmp_path, "a.pth"), save_parent(tmp_path, "b.pth")
    data = torch.load(b, weights_only=True)
    data["state_dict"]["backbone.pos_embed"] += 1
    torch.save(data, b)
    runs, _ = expand(load_grid(grid(tmp_path, dense="{checkpoint: [a.pth, b.pth]}")))
    dense = {r.seed: r for r in runs if r.stage == "dense"}
    assert {s: d.schedule["checkpoint"] for s, d in dense.items()} == {
        0: str(a.resolve()),
        1: str(b.resolve()),
    }
    for r in runs:
        if r.stage == "finetune":
            assert r.depends_on == (dense[r.seed].run_id,)
    with pytest.raises(GridError, match=r"schedule.dense.checkpoint: 2 checkpoints for 3 seeds"):
        load_grid(grid(tmp_path, dense="{checkpoint: [a.pth, b.pth]}", seeds="[0, 1, 2]"))


@pytest.mark.parametrize(
    ("dense", "match"),
    [
        (
            "{checkpoint: nowhere.pth}",
            r"g.yaml:\d+: schedule.dense.checkpoint: checkpoint 'nowhere.pth' not found",
        ),
        (
            "{checkpoint: parent.pth, iters: 3}",
            r"schedule.dense.iters: a dense parent from a checkpoint is not trained",
        ),
    ],
)
def test_bad_parent_entries_are_rejected(tmp_path, dense, match):
    (tmp_path / "parent.pth").write_bytes(b"x")
    with pytest.raises(GridError, match=match):
        load_grid(grid(tmp_path, dense=dense))


def test_parent_of_another_arch_is_rejected_before_any_job(tmp_path):
    save_parent(tmp_path, dim=64)  # the grid builds embed_dim 32
    with pytest.raises(GridError) as e:
        prepare(grid(tmp_path), tmp_path / "results")
    msg = str(e.value)
    assert "parent.pth: does not fit the grid's detector" in msg and "embed_dim 64" in msg
    assert "backbone.patch_embed.proj.weight (64, 3, 16, 16) vs (32, 3, 16, 16)" in msg
    assert not (tmp_path / "results" / "parent").exists()  # nothing written, nothing run


def test_parent_of_another_family_is_rejected(tmp_path):
    save_parent(tmp_path)
    path = grid(tmp_path)
    path.write_text(
        path.read_text().replace("out_channels: 16", "family: adapter, conv_inplane: 8, deform_num_heads: 2")
    )
    with pytest.raises(
        GridError,
        match=r"holds a plain backbone.*builds PrunedViTAdapter.*weights missing, e\.g\. backbone\.(spm|level)",
    ):
        prepare(path, tmp_path / "results")


def test_off_the_shelf_cells_need_a_training_free_method(tmp_path):
    save_parent(tmp_path)
    runs, _ = expand(load_grid(grid(tmp_path, methods="[evit, evo-vit, ats]", ft=0)))
    assert [r.trains for r in runs] == [False] * 7  # the parent and 2 seeds x 3 methods
    with pytest.raises(
        GridError, match=r"method 'svit' has learned parameters.*Fix: give it a finetune length"
    ):
        expand(load_grid(grid(tmp_path, ft=0)))
    per_method = grid(tmp_path, ft=2)  # off the shelf for evit only, through per_value
    per_method.write_text(
        per_method.read_text() + "per_value:\n  method:\n    evit: {schedule.finetune.iters: 0}\n"
    )
    runs, _ = expand(load_grid(per_method))
    assert {r.axes["method"]: r.trains for r in runs if r.stage == "finetune"} == {
        "svit": True,
        "evit": False,
    }


def test_four_axis_grid_cannot_go_off_the_shelf(tmp_path):
    path = grid(tmp_path, dense="{iters: 1}", ft=0)
    path.write_text(path.read_text().replace("  method: [svit, evit]", "  selector: [mlp]"))
    with pytest.raises(GridError, match=r"selector 'mlp' has learned parameters"):
        expand(load_grid(path))


def test_shipped_grid_from_the_released_parent(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "vit-adapter-s-3x.prunebench.pth").write_bytes(b"stand-in")
    monkeypatch.chdir(tmp_path)  # the converted file where `prunebench zoo` puts it
    runs, _ = expand(load_grid(root / "ablations" / "grid-from-parent.yaml"))
    assert [r.trains for r in runs if r.stage == "dense"] == [False]
    assert len(runs) == 1 + 12 * 2 and all(r.trains for r in runs if r.stage == "finetune")


def test_report_pairs_every_seed_with_a_shared_parent_and_keeps_off_the_shelf_apart(tmp_path, make_run):
    import json

    from prunebench.report import build_report

    sweep = tmp_path / "s"
    make_run(sweep, "dense-ckpt-aaaaaa", seed=None, box=40.0, mask=36.0, full=10.0)
    cell = {"pruned_tokens": "discard", "reactivation": False, "rate": "fixed", "selector": "class-attention"}
    for seed, box in ((0, 38.0), (1, 37.0)):
        make_run(
            sweep, f"evit-s{seed}-b", {**cell, "method": "evit"}, seed=seed, box=box, mask=34.0, full=8.0
        )
        run = make_run(
            sweep, f"evit-s{seed}-c", {**cell, "method": "evit"}, seed=seed, box=30.0, mask=30.0, full=8.0
        )
        spec = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**spec, "schedule": {"iters": 0}}))  # off the shelf
    report = build_report(sweep)
    rows = {(r["stage"], r["label"]): r for r in report.rows}
    assert (
        rows[("finetune", "evit")]["d_box_ap"] == pytest.approx(-2.5) and rows[("finetune", "evit")]["n"] == 2
    )
    shelf = rows[("off-the-shelf", "evit (off-the-shelf)")]
    assert shelf["d_box_ap"] == pytest.approx(-10.0) and shelf["n"] == 2
    assert rows[("dense", "dense")]["n"] == 1


def test_keep_ratio_axis_gives_an_off_the_shelf_curve_from_one_parent(tmp_path):
    save_parent(tmp_path)
    path = grid(tmp_path, methods="[evit]", ft=0, seeds="[0]")
    ratios = "[[0.7, 0.49, 0.343], [0.5, 0.25, 0.125]]"
    path.write_text(
        path.read_text().replace(
            "  method: [evit]\n", f"  method: [evit]\n  model.backbone.keep_ratios: {ratios}\n"
        )
    )
    s = prepare(path, tmp_path / "results")
    dense, *cells = s.runs
    assert dense.stage == "dense" and len(cells) == 2 and not any(r.trains for r in s.runs)
    built = [Config.fromfile(str(s.sweep_dir / r.run_id / "config.py")).model.backbone for r in s.runs]
    assert built[0].keep_ratios == [] and [b.keep_ratios for b in built[1:]] == [
        [0.7, 0.49, 0.343],
        [0.5, 0.25, 0.125],
    ]
    assert all(r.depends_on == (dense.run_id,) for r in cells)


def test_parent_with_more_blocks_than_the_grid_is_rejected(tmp_path):
    save_parent(tmp_path)  # 12 blocks
    path = grid(tmp_path)
    path.write_text(path.read_text().replace("depth: 12", "depth: 10").replace("[svit, evit]", "[svit]"))
    with pytest.raises(
        GridError,
        match=r"12 blocks.*24 backbone weights the grid's detector lacks, e\.g\. backbone\.blocks\.10\.",
    ):
        prepare(path, tmp_path / "results")
