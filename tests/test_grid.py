"""Grid YAML validation and expansion into RunSpecs."""

from pathlib import Path

import pytest

from prunebench.grid import GridError, load_grid
from prunebench.spec import expand

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """\
name: t
base: mask-rcnn-vit-cpu
backbone: {prune_layers: [1, 2], keep_ratios: [0.7, 0.5]}
schedule: {dense: {iters: 2}, finetune: {iters: 1}}
"""


def test_full_matrix_leaves_out_discard_reactivation_with_reason(tmp_path):
    grid = load_grid(write(tmp_path, BASE))
    runs, excluded = expand(grid)
    dense = [r for r in runs if r.stage == "dense"]
    pruned = [r for r in runs if r.stage == "finetune"]
    assert len(dense) == 1 and len(pruned) == 12  # 16 cells - 4 discard+reactivation
    assert len(excluded) == 4
    assert all("discard + reactivation" in reason for _, reason in excluded)
    assert not any(r.axes["pruned_tokens"] == "discard" and r.axes["reactivation"] for r in pruned)
    assert all(r.depends_on == (dense[0].run_id,) for r in pruned)
    assert runs[0].stage == "dense"  # dependencies come first
    assert all(v is None for k, v in dense[0].axes.items())


def test_run_ids_are_stable_readable_and_unique(tmp_path):
    a = [r.run_id for r in expand(load_grid(write(tmp_path, BASE)))[0]]
    b = [r.run_id for r in expand(load_grid(write(tmp_path, BASE, "copy.yaml")))[0]]
    assert a == b and len(set(a)) == len(a)
    assert any(rid.startswith("preserve-react-dyn-mlp-s0-") for rid in a)
    changed = [r.run_id for r in expand(load_grid(write(tmp_path, BASE.replace("iters: 2", "iters: 3"))))[0]]
    assert set(changed).isdisjoint(a)  # a different schedule is a different run
    finetune_only, _ = expand(
        load_grid(write(tmp_path, BASE.replace("finetune: {iters: 1}", "finetune: {iters: 5}")))
    )
    assert finetune_only[0].run_id == a[0]  # ... but the dense run does not depend on the finetune's
    assert set(r.run_id for r in finetune_only[1:]).isdisjoint(a)


def test_exclude_include_and_seeds(tmp_path):
    text = (
        BASE
        + """\
axes:
  pruned_tokens: [preserve]
  reactivation: [false, true]
  rate: [fixed]
  selector: [mlp, gating]
  optim_wrapper.optimizer.lr: [0.001, 0.0001]
exclude:
  - {selector: gating, reactivation: true}
include:
  - {name: dynamicvit, pruned_tokens: discard, reactivation: false, rate: fixed, selector: gating}
seeds: [0, 1]
"""
    )
    grid = load_grid(write(tmp_path, text))
    runs, _ = expand(grid)
    dense = [r for r in runs if r.stage == "dense"]
    pruned = [r for r in runs if r.stage == "finetune"]
    # per seed: one dense per lr value; 4 cells - 1 excluded = 3 per lr, + include (first lr)
    assert len(dense) == 2 * 2
    assert len(pruned) == 2 * (3 * 2 + 1)
    assert sum(r.run_id.startswith("dynamicvit-s") for r in pruned) == 2
    for r in pruned:
        d = next(x for x in dense if x.run_id == r.depends_on[0])
        assert d.seed == r.seed
        assert d.axes["optim_wrapper.optimizer.lr"] == r.axes["optim_wrapper.optimizer.lr"]
        assert r.overrides["optim_wrapper.optimizer.lr"] == r.axes["optim_wrapper.optimizer.lr"]
    assert not any(r.axes["selector"] == "gating" and r.axes["reactivation"] for r in pruned)


@pytest.mark.parametrize(
    "text, expected",
    [
        (BASE + "axis:\n  rate: [fixed]\n", ["g.yaml", "axis", "unknown key", "did you mean `axes`?"]),
        (
            BASE + "axes:\n  rate: [fixed, adaptive]\n",
            ["g.yaml:6", "axes.rate[1]", "unknown value 'adaptive'", "['fixed', 'dynamic']"],
        ),
        (BASE + "axes:\n  selektor: [mlp]\n", ["axes.selektor", "unknown axis", "did you mean `selector`?"]),
        (BASE + "seeds: zero\n", ["seeds", "expected a non-empty list of integers"]),
        (BASE.replace("iters: 2", "iters: two"), ["schedule.dense.iters", "expected a positive integer"]),
        (BASE + "data: {batch_size: -4}\n", ["g.yaml:5: data.batch_size", "expected a positive integer"]),
        (BASE + "data: {num_workers: 1.5}\n", ["data.num_workers", "expected an integer >= 0"]),
        (BASE.replace("iters: 2", "iters: 0"), ["schedule.dense.iters", "expected a positive integer"]),
        (BASE + "bench: {dtype: fp8}\n", ["bench.dtype", "unknown dtype 'fp8'"]),
        (BASE.replace("schedule: {", "schedule: {lr: 0.1, "), ["schedule.lr", "is set per stage"]),
        (BASE + "overrides: {lr: 3}\n", ["overrides.lr", "not a dotted MMEngine config key"]),
        (
            BASE + "per_value: {rate: {adaptive: {backbone.tau: 2}}}\n",
            ["per_value.rate.adaptive", "is not a value of axes.rate"],
        ),
        (
            BASE + "per_value: {rate: {fixed: {backbone.depht: 2}}}\n",
            ["backbone.depht", "did you mean `depth`?"],
        ),
        (BASE.replace("base: mask-rcnn-vit-cpu", "base: nope.py"), ["base", "neither a built-in template"]),
        (BASE + "axes:\n  rate: fixed\n", ["axes.rate", "non-empty list", "write `rate: [value1, value2]`"]),
        ("name: t\nbackbone: [1\n", ["g.yaml:", "not valid YAML"]),
        (BASE + "data: {num_classes: 9}\n", ["g.yaml:5: data:", "num_classes must be 1..6"]),
    ],
)
def test_bad_yaml_errors_name_file_key_and_fix(tmp_path, text, expected):
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, text))
    for part in expected:
        assert part in str(err.value)
    assert "Fix:" in str(err.value)


def test_missing_grid_file(tmp_path):
    with pytest.raises(GridError, match="grid file not found"):
        load_grid(tmp_path / "missing.yaml")


def test_shipped_grids_expand(tmp_path):
    runs, _ = expand(load_grid(ROOT / "ablations" / "smoke.yaml"))
    assert len(runs) == 13
    for name in ("grid.yaml", "grid-plain.yaml"):
        coco = (ROOT / "ablations" / name).read_text()
        with pytest.raises(GridError, match="backbone.pretrained"):  # no DeiT checkpoints here
            load_grid(write(tmp_path, coco))


@pytest.mark.parametrize("grid, family", [("grid.yaml", "adapter"), ("grid-plain.yaml", "plain")])
def test_paper_grid_schedule_per_arch(tmp_path, grid, family):
    """The COCO grids (the paper's adapter, the plain DeiT): per-arch drop-path, checkpoint and
    finetune length; finetunes use their own lr and weight decay, not the dense ones; selectors
    start as the official code's."""
    (tmp_path / "checkpoints").mkdir()
    for name in ("deit_small_patch16_224-cd65a155.pth", "deit_tiny_patch16_224-a1311bcf.pth"):
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    runs, excluded = expand(load_grid(write(tmp_path, (ROOT / "ablations" / grid).read_text())))
    assert {r.backbone_args["family"] for r in runs} == {family}
    assert {r.backbone_args["selector_init"] for r in runs if r.stage == "finetune"} == {"official"}
    dense = {r.backbone: r for r in runs if r.stage == "dense"}
    assert len(dense) == 2 and len(runs) == 2 + 2 * 12 and len(excluded) == 2 * 4
    paper_dense = {"epochs": 36, "lr": 0.0001, "weight_decay": 0.05, "milestones": [27, 33], "amp": True}
    assert {k: dense["deit-small"].schedule[k] for k in paper_dense} == paper_dense
    assert dense["deit-small"].backbone_args["drop_path_rate"] == 0.2
    assert dense["deit-tiny"].backbone_args["drop_path_rate"] == 0.1
    assert dense["deit-tiny"].backbone_args["pretrained"].endswith("deit_tiny_patch16_224-a1311bcf.pth")
    for r in runs:
        if r.stage == "finetune":
            s = r.schedule
            assert (s["lr"], s["weight_decay"]) == (0.00001, 0.000001)
            assert (s["epochs"], s["milestones"]) == ((4, [3]) if r.backbone == "deit-small" else (6, [4]))
            assert r.backbone_args["drop_path_rate"] == dense[r.backbone].backbone_args["drop_path_rate"]
            assert r.depends_on == (dense[r.backbone].run_id,)


SYNTH = BASE + "data: {num_train: 4, num_val: 2, image_size: [64, 64], num_workers: 0}\n"


def test_run_ids_follow_meaning_not_paths_or_resources(tmp_path):
    ids = [r.run_id for r in expand(load_grid(write(tmp_path, SYNTH)))[0]]
    for same in (
        SYNTH.replace("num_workers: 0", "num_workers: 3"),
        SYNTH.replace("image_size: [64, 64]", "image_size: [64, 64], cache_dir: /elsewhere"),
        SYNTH.replace("iters: 1}", "iters: 1}, log_interval: 7, checkpoint_interval: 1"),
    ):
        assert [r.run_id for r in expand(load_grid(write(tmp_path, same)))[0]] == ids, same
    lr = SYNTH.replace("finetune: {iters: 1}", "finetune: {iters: 1, lr: 0.5}")
    changed = [r.run_id for r in expand(load_grid(write(tmp_path, lr)))[0]]
    assert changed[0] == ids[0] and set(changed[1:]).isdisjoint(ids)  # finetune lr: finetunes only
    dense_lr = SYNTH.replace("dense: {iters: 2}", "dense: {iters: 2, lr: 0.5}")
    assert set(r.run_id for r in expand(load_grid(write(tmp_path, dense_lr)))[0]).isdisjoint(ids)


def test_coco_ids_ignore_the_root(tmp_path):
    coco = BASE + "data: {type: coco, root: %s}\n"
    a = [r.run_id for r in expand(load_grid(write(tmp_path, coco % "/data/coco")))[0]]
    b = [r.run_id for r in expand(load_grid(write(tmp_path, coco % "/mnt/moved/coco")))[0]]
    c = [
        r.run_id
        for r in expand(
            load_grid(
                write(
                    tmp_path,
                    (coco % "/data/coco").replace(
                        "root: /data/coco", "root: /data/coco, val_ann: annotations/other.json"
                    ),
                )
            )
        )[0]
    ]
    assert a == b and set(a).isdisjoint(c)


def test_per_value_settings(tmp_path):
    text = (
        BASE
        + """\
axes:
  optim_wrapper.optimizer.betas: [[0.9, 0.999], [0.8, 0.99]]
  model.backbone.arch: [deit-small, deit-tiny]
  rate: [fixed, dynamic]
per_value:
  model.backbone.arch:
    deit-tiny: {backbone.tau: 0.5, schedule.finetune: {iters: 9}, model.backbone.drop_path_rate: 0.3}
  rate:
    dynamic: {schedule.keep_ratio_loss_weight: 2.0}
"""
    )
    runs, _ = expand(load_grid(write(tmp_path, text)))
    for r in runs:
        tiny = r.backbone == "deit-tiny"
        assert r.backbone_args.get("tau") == (0.5 if tiny and r.stage == "finetune" else None)
        assert r.overrides.get("model.backbone.drop_path_rate") == (0.3 if tiny else None)
        if r.stage == "finetune":
            assert r.schedule["iters"] == (9 if tiny else 1)
            assert r.schedule.get("keep_ratio_loss_weight") == (2.0 if r.axes["rate"] == "dynamic" else None)
    assert sum(r.stage == "dense" for r in runs) == 4  # per-value settings of `rate` do not split dense runs
