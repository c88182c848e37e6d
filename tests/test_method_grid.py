"""The ``method`` axis in grids, run ids, generated configs and ``report --paper``."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

from prunebench.grid import GridError, load_grid
from prunebench.presets import PRESETS
from prunebench.report import build_report
from prunebench.spec import expand
from prunebench.sweep import prepare

ROOT = Path(__file__).resolve().parents[1]
GRID = """\
name: methods
base: mask-rcnn-vit-cpu
backbone: {{embed_dim: 32, depth: {depth}, num_heads: 2, prune_layers: [3, 6], keep_ratios: [0.7, 0.5], out_channels: 16}}
data: {{type: synthetic, num_train: 4, num_val: 2, image_size: [64, 64], num_classes: 2, img_scale: [64, 64], cache_dir: {cache}}}
schedule: {{dense: {{iters: 2}}, finetune: {{iters: 1}}}}
axes:
  method: {methods}
{extra}"""
ALL = f"[{', '.join(PRESETS)}]"


def grid(tmp_path: Path, methods: str = ALL, extra: str = "", depth: int = 12) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(GRID.format(methods=methods, extra=extra, depth=depth, cache=tmp_path / "cache"))
    return path


def test_every_method_finetunes_from_one_dense_parent(tmp_path):
    runs, excluded = expand(load_grid(grid(tmp_path)))
    dense, finetunes = runs[0], runs[1:]
    assert dense.stage == "dense" and not excluded and len(finetunes) == len(PRESETS)
    assert all(r.depends_on == (dense.run_id,) for r in finetunes)
    assert dense.axes["method"] is None and dense.backbone_args["prune_layers"] == []
    by = {r.axes["method"]: r for r in finetunes}
    assert all(r.run_id.startswith(f"{m}-s0-") for m, r in by.items())
    for m, r in by.items():  # each run records its method's four axes
        assert {k: r.axes[k] for k in PRESETS[m].axes} == PRESETS[m].axes
    assert by["svit"].backbone_args["prune_layers"] == [3, 6]  # svit takes the grid's schedule
    assert by["svit"].backbone_args["selector"] == "mlp" and "method" not in by["svit"].backbone_args
    assert by["dynamicvit"].backbone_args["prune_layers"] == [3, 6, 9]
    assert by["dynamicvit"].backbone_args["keep_ratios"] == [0.7, 0.49, 0.343]
    assert by["dynamicvit"].backbone_args["selector"] == "gating"
    assert by["dynamicvit"].schedule["keep_ratio_loss_weight"] == 2.0
    assert "keep_ratio_loss_weight" not in by["svit"].schedule
    assert by["evo-vit"].backbone_args["prune_layers"] == list(range(4, 12))
    for m in ("evit", "evo-vit", "ats"):  # class-attention methods: their mechanism, no selector
        assert by[m].backbone_args["method"] == m and "selector" not in by[m].backbone_args


def test_generated_configs_build_each_method_and_distill_from_the_dense_checkpoint(tmp_path):
    extra = "per_value:\n  method:\n    dynamicvit: {schedule.distill: true}\n"
    s = prepare(grid(tmp_path, "[dynamicvit, evit]", extra), tmp_path / "results")
    dense, dyn, evit = (Config.fromfile(str(s.sweep_dir / r.run_id / "config.py")) for r in s.runs)
    assert dyn.model.keep_ratio_loss_weight == 2.0 and dyn.model.backbone.pruned_tokens == "discard"
    assert dyn.model.distill == {"teacher": dyn.load_from}
    assert Path(dyn.load_from).parent.parent.name == s.runs[0].run_id
    assert "distill" not in evit.model and "distill" not in dense.model
    assert evit.model.backbone.method == "evit" and evit.model.backbone.prune_layers == [3, 6, 9]


def test_method_protocol_writes_dynamicvits_optimizer_for_its_rows_only(tmp_path):
    extra = "per_value:\n  method:\n    dynamicvit: {schedule.method_protocol: true}\n"
    s = prepare(grid(tmp_path, "[svit, dynamicvit]", extra), tmp_path / "results")
    dense, svit, dyn = (Config.fromfile(str(s.sweep_dir / r.run_id / "config.py")) for r in s.runs)
    assert dyn.optim_wrapper.constructor == "SelectorLrConstructor"
    assert dyn.optim_wrapper.paramwise_cfg.selector_lr_mult == 100.0
    assert dict(type="FrozenStartHook", share=5 / 30) in dyn.custom_hooks
    for cfg in (dense, svit):
        assert "constructor" not in cfg.optim_wrapper
        assert not [h for h in cfg.custom_hooks if h["type"] == "FrozenStartHook"]
        assert cfg.optim_wrapper.paramwise_cfg.custom_keys.cls_token == dict(decay_mult=0.0)
    assert dyn.model.backbone.masking == "policy" and dyn.model.backbone.rounding == "floor"


def test_sweeping_method_with_an_axis_it_fixes_is_an_error_naming_both(tmp_path):
    path = grid(tmp_path, extra="  rate: [fixed, dynamic]\n")
    with pytest.raises(GridError, match=r"g\.yaml:\d+: axes\.rate: swept together with axes\.method"):
        load_grid(path)


def test_unknown_method_lists_the_presets_with_its_line(tmp_path):
    with pytest.raises(GridError, match=r"g\.yaml:7: axes\.method\[1\]: unknown method 'tomato'.*dynamicvit"):
        load_grid(grid(tmp_path, "[svit, tomato]"))


def test_a_method_needs_the_blocks_of_its_schedule(tmp_path):
    with pytest.raises(GridError, match=r"axes\.method\[1\]: evit prunes before block 10.*depth is 4"):
        load_grid(grid(tmp_path, "[svit, evit]", depth=4))


def test_shipped_method_grids_expand(tmp_path):
    runs, _ = expand(load_grid(ROOT / "ablations" / "smoke-methods.yaml"))
    assert [r.axes["method"] for r in runs] == [None, *PRESETS]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "deit_tiny_patch16_224-a1311bcf.pth").write_bytes(b"x")
    coco = tmp_path / "methods.yaml"
    coco.write_text((ROOT / "ablations" / "methods.yaml").read_text())
    grid = load_grid(coco)
    runs, _ = expand(grid)
    dense = [r for r in runs if r.stage == "dense"]
    assert len(dense) == 3 and len(runs) == 3 * (1 + len(grid.axes["method"]))  # three seeds
    assert {r.backbone_args["family"] for r in runs} == {"adapter"}
    assert {r.backbone for r in runs} == {"deit-tiny"}
    assert all(r.schedule["epochs"] == 6 for r in runs if r.stage == "finetune")


# --- report --paper ------------------------------------------------------------------------------


def method_runs(root: Path, make_run, drops: dict[str, list[float]]) -> None:
    """One dense run per seed (box 40, mask 36) and per method a finetune with the given drops."""
    for seed in range(len(next(iter(drops.values())))):
        make_run(
            root, f"dense-s{seed}", {"method": None}, seed=seed, box=40.0, mask=36.0, full=100.0, bb=50.0
        )
        for method, d in drops.items():
            axes = {**PRESETS[method].axes, "method": method}
            make_run(
                root,
                f"{method}-s{seed}",
                axes,
                seed=seed,
                box=40.0 + d[seed],
                mask=36.0 + d[seed],
                full=80.0,
                bb=40.0,
                keep=0.5,
            )


def test_report_paper_compares_methods_with_intervals_and_a_verdict(tmp_path, make_run):
    drops = {
        "svit": [-0.2, -0.4, -0.3],
        "dynamicvit": [-1.4, -1.8, -1.6],
        "evit": [-1.2, -1.6, -1.0],
        "dynamicvit-preserve": [-0.9, -0.8, -0.7],  # the paper's ablation row: not a prior method
    }
    method_runs(tmp_path / "sweep", make_run, drops)
    report = build_report(tmp_path, paper=True)
    rows = {r.method: r for r in report.paper.methods}
    assert list(rows) == ["svit", "dynamicvit", "dynamicvit-preserve", "evit"]
    svit = rows["svit"]
    assert svit.seeds == 3 and svit.d_box_ap.mean == pytest.approx(-0.3)
    assert svit.d_box_ap.low < -0.3 < svit.d_box_ap.high
    assert svit.speedup_full == pytest.approx(100 / 80) and svit.keep_ratio == pytest.approx(0.5)
    assert svit.published["d_box_ap"] == pytest.approx(-0.3) and "README" in svit.published["source"]
    assert rows["evit"].published == {}  # no primary source read for the prior methods' rows
    box = next(v for v in report.paper.method_verdicts if v.metric == "box AP")
    assert box.prior == ["dynamicvit", "evit"]
    gaps = [(-1.4 - 1.2) / 2 + 0.2, (-1.8 - 1.6) / 2 + 0.4, (-1.6 - 1.0) / 2 + 0.3]
    assert box.gap.mean == pytest.approx(sum(gaps) / 3) and box.gap.n == 3
    assert box.verdict == "reproduced" and box.paper_gap == pytest.approx(-1.2)


def test_report_paper_method_verdict_is_inconclusive_with_one_seed_and_rendered(tmp_path, make_run):
    from prunebench.report.render import render

    method_runs(tmp_path / "sweep", make_run, {"svit": [-0.3], "ats": [-2.0]})
    report = build_report(tmp_path, paper=True)
    assert [v.verdict for v in report.paper.method_verdicts] == ["inconclusive", "inconclusive"]
    assert "one seed" in report.paper.method_verdicts[0].reason
    md = render(report, "markdown")
    assert "The paper's comparison" in md and "| ats |" in md
    assert '"method": "ats"' in render(report, "json")
    assert render(report, "csv").count("method_verdict,") == 2


def test_labels_plot_and_keep_maps_name_the_method(tmp_path, make_run):
    from types import SimpleNamespace

    from prunebench.report.plot import METHOD_STYLE, _style, plot_pareto
    from prunebench.viz import method_label

    method_runs(tmp_path / "sweep", make_run, {"svit": [-0.3], "evit": [-1.0]})
    report = build_report(tmp_path)
    labels = {r["axes"].get("method"): r["label"] for r in report.rows}
    assert labels == {None: "dense", "svit": "svit", "evit": "evit"}
    assert len(set(METHOD_STYLE.values())) == len(PRESETS)  # each method its own marker and colour
    evit_row = next(r for r in report.rows if r["axes"].get("method") == "evit")
    assert _style(evit_row) == (("method", "evit"), ("method", "evit"))
    assert plot_pareto(report, tmp_path / "p.png") == 3
    bb = SimpleNamespace(
        method="selector", pruned_tokens="preserve", reactivation=True, rate="dynamic", selector="mlp"
    )
    assert method_label(tmp_path / "sweep" / "evit-s0", bb) == "method evit"  # from run.json
    assert (
        method_label(tmp_path / "elsewhere.py", SimpleNamespace(**{**vars(bb), "method": "ats"}))
        == "method ats"
    )
    assert method_label(tmp_path / "sweep" / "dense-s0", bb) == "preserve, reactivation, dynamic, mlp"
