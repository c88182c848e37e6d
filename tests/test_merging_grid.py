"""Prune or merge in grids and reports: the ``merge`` fate and the merging methods in a grid, the
``keep`` axis, merge + reactivation rejected before any job, and ``pruned_tokens`` as a
three-valued axis in the report's effects."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunebench.axes import keep_schedule
from prunebench.grid import GridError, load_grid
from prunebench.report import build_report
from prunebench.spec import expand

ABLATIONS = Path(__file__).resolve().parents[1] / "ablations"


def test_smoke_merging_grid_runs_three_fates_and_both_methods_from_one_dense_parent():
    runs, excluded = expand(load_grid(ABLATIONS / "smoke-merging.yaml"))
    dense = [r for r in runs if r.stage == "dense"]
    finetunes = [r for r in runs if r.stage == "finetune"]
    assert len(dense) == 1 and not excluded
    assert all(r.depends_on == (dense[0].run_id,) for r in finetunes)
    cells = {(r.axes["pruned_tokens"], r.axes.get("method")) for r in finetunes}
    assert cells == {
        ("discard", None),
        ("preserve", None),
        ("merge", None),
        ("merge", "tome"),
        ("merge", "atc"),
    }
    tome = next(r for r in finetunes if r.axes.get("method") == "tome")
    assert tome.backbone_args["method"] == "tome" and "selector" not in tome.backbone_args
    assert tome.backbone_args["keep_ratios"] == [0.7, 0.49, 0.343]


def test_keep_axis_rescales_each_methods_own_schedule_and_shares_the_dense_parent(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ("deit_small_patch16_224-cd65a155.pth", "deit_tiny_patch16_224-a1311bcf.pth"):
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    coco = tmp_path / "merging.yaml"
    coco.write_text((ABLATIONS / "merging.yaml").read_text())
    runs, _ = expand(load_grid(coco))
    dense = [r for r in runs if r.stage == "dense"]
    assert len(dense) == 2 * 3  # per arch and seed, whatever the keep ratio
    finetunes = [r for r in runs if r.stage == "finetune"]
    assert len(finetunes) == 2 * 3 * 4 * 3
    by = {(r.axes["method"], r.axes["keep"], r.backbone, r.seed): r for r in finetunes}
    assert by[("atc", 0.5, "deit-tiny", 0)].backbone_args["keep_ratios"] == [0.5, 0.25, 0.125]
    svit = by[("svit", 0.9, "deit-small", 1)]
    assert svit.backbone_args["keep_ratios"] == [0.9] * 3 + [0.81] * 3 + [0.729] * 3
    assert len({r.depends_on for r in finetunes if r.backbone == "deit-tiny" and r.seed == 0}) == 1
    assert "-k0.25-" in by[("tome", 0.25, "deit-small", 2)].run_id
    assert keep_schedule([0.7, 0.7, 0.49], 0.5) == [0.5, 0.5, 0.25]


def _grid(tmp_path, body: str) -> Path:
    base = (ABLATIONS / "smoke-merging.yaml").read_text().split("axes:")[0]
    path = tmp_path / "g.yaml"
    path.write_text(base + body)
    return path


def test_merge_with_reactivation_is_rejected_before_any_job_naming_both_keys(tmp_path):
    grid = load_grid(_grid(tmp_path, "axes:\n  pruned_tokens: [merge]\n  reactivation: [true, false]\n"))
    runs, excluded = expand(grid)
    assert [reason for _, reason in excluded] == [
        "merge + reactivation: a merged token has no state of its own to come back with "
        "(pruned_tokens=merge needs reactivation=false)"
    ]
    assert all(not r.axes.get("reactivation") for r in runs if r.stage == "finetune")
    included = "axes:\n  pruned_tokens: [merge]\ninclude:\n  - {reactivation: true}\n"
    with pytest.raises(GridError, match="pruned_tokens=merge needs reactivation=false"):
        expand(load_grid(_grid(tmp_path, included)))


@pytest.mark.parametrize("bad", ["[0]", "[1.5]", "[true]"])
def test_a_keep_ratio_outside_0_1_is_an_error(tmp_path, bad):
    with pytest.raises(GridError, match=r"axes.keep\[0\]"):
        load_grid(_grid(tmp_path, f"axes:\n  keep: {bad}\n"))


def test_pruned_tokens_is_a_three_valued_axis_in_the_effects(tmp_path, make_run):
    s = tmp_path / "abl"
    make_run(s, "dense", box=40.0, mask=36.0, full=100.0, bb=60.0)
    boxes = {"discard": 37.0, "preserve": 38.0, "merge": 38.5}
    for rate in ("fixed", "dynamic"):
        for fate, box in boxes.items():
            axes = {"pruned_tokens": fate, "reactivation": False, "rate": rate, "selector": "mlp"}
            make_run(
                s, f"{fate}-{rate}", axes, box=box + (rate == "dynamic"), mask=box - 3, full=80.0, bb=40.0
            )
    rep = build_report(s)
    pt = [e for e in rep.effects if e.axis == "pruned_tokens" and e.metric == "box_ap"]
    assert [(e.first, e.second) for e in pt][0] == ("preserve", "discard")  # the paper's pair first
    means = {(e.first, e.second): (e.mean, e.pairs) for e in pt}
    assert means == {
        ("preserve", "discard"): (pytest.approx(1.0), 2),
        ("merge", "discard"): (pytest.approx(1.5), 2),
        ("preserve", "merge"): (pytest.approx(-0.5), 2),
    }
    from rich.console import Console

    from prunebench.report import print_table

    console = Console(record=True, width=200)
    print_table(rep, console)
    effects = console.export_text().split("Per-axis effects")[1].split("note:")[0]
    for label in ("preserve vs discard", "merge vs discard", "preserve vs merge"):
        assert label in effects  # each comparison of the axis is named in the effects table


def test_paper_comparison_puts_the_fates_beside_the_merging_methods(tmp_path, make_run):
    s = tmp_path / "smoke-merging"
    make_run(s, "dense", {"method": None}, box=40.0, mask=36.0, full=100.0, bb=60.0)
    cells = {
        "tome": {
            "pruned_tokens": "merge",
            "reactivation": False,
            "rate": "fixed",
            "selector": "key-similarity",
        },
        "atc": {
            "pruned_tokens": "merge",
            "reactivation": False,
            "rate": "fixed",
            "selector": "key-similarity",
        },
        None: {"pruned_tokens": "merge", "reactivation": False, "rate": "fixed", "selector": "mlp"},
    }
    for i, (method, axes) in enumerate(cells.items()):
        make_run(
            s, f"run{i}", {**axes, "method": method}, box=39.0 - i, mask=35.0, full=80.0, bb=40.0, keep=0.5
        )
    rep = build_report(s, paper=True)
    rows = {r.method: r for r in rep.paper.methods}
    assert list(rows) == ["tome", "atc", "merge-noreact-fixed-mlp"]
    assert rows["merge-noreact-fixed-mlp"].d_box_ap.mean == pytest.approx(-3.0)
