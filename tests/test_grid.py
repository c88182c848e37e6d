"""Grid YAML validation and expansion into RunSpecs."""
from pathlib import Path

import pytest

from prunebench.grid import GridError, expand, load_grid

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
    runs = expand(grid)
    dense = [r for r in runs if r.stage == "dense"]
    pruned = [r for r in runs if r.stage == "finetune"]
    assert len(dense) == 1 and len(pruned) == 12  # 16 cells - 4 discard+reactivation
    assert len(grid.excluded) == 4
    assert all("discard + reactivation" in reason for _, reason in grid.excluded)
    assert not any(r.axes["pruned_tokens"] == "discard" and r.axes["reactivation"] for r in pruned)
    assert all(r.depends_on == (dense[0].run_id,) for r in pruned)
    assert runs[0].stage == "dense"  # dependencies come first
    assert all(v is None for k, v in dense[0].axes.items())


def test_run_ids_are_stable_readable_and_unique(tmp_path):
    a = [r.run_id for r in expand(load_grid(write(tmp_path, BASE)))]
    b = [r.run_id for r in expand(load_grid(write(tmp_path, BASE, "copy.yaml")))]
    assert a == b and len(set(a)) == len(a)
    assert any(rid.startswith("preserve-react-dyn-mlp-s0-") for rid in a)
    changed = [r.run_id for r in expand(load_grid(write(tmp_path, BASE.replace("iters: 2", "iters: 3"))))]
    assert set(changed).isdisjoint(a)  # a different schedule is a different run
    finetune_only = expand(load_grid(write(tmp_path, BASE.replace("finetune: {iters: 1}", "finetune: {iters: 5}"))))
    assert finetune_only[0].run_id == a[0]  # ... but the dense run does not depend on the finetune's
    assert set(r.run_id for r in finetune_only[1:]).isdisjoint(a)


def test_exclude_include_and_seeds(tmp_path):
    text = BASE + """\
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
    grid = load_grid(write(tmp_path, text))
    runs = expand(grid)
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


@pytest.mark.parametrize("text, expected", [
    (BASE + "axis:\n  rate: [fixed]\n", ["g.yaml", "axis", "unknown key", "did you mean `axes`?"]),
    (BASE + "axes:\n  rate: [fixed, adaptive]\n", ["g.yaml:6", "axes.rate[1]", "unknown value 'adaptive'",
                                                  "['fixed', 'dynamic']"]),
    (BASE + "axes:\n  selektor: [mlp]\n", ["axes.selektor", "unknown axis", "did you mean `selector`?"]),
    (BASE + "seeds: zero\n", ["seeds", "expected a non-empty list of integers"]),
    (BASE.replace("iters: 2", "iters: two"), ["schedule.dense.iters", "expected a positive integer"]),
    (BASE + "data: {type: coco, root: /nonexistent/coco}\n", ["data.train_ann", "/nonexistent/coco",
                                                              "prunebench data subset"]),
    (BASE.replace("base: mask-rcnn-vit-cpu", "base: nope.py"), ["base", "neither a built-in template"]),
    (BASE + "axes:\n  rate: fixed\n", ["axes.rate", "non-empty list", "write `rate: [value1, value2]`"]),
    ("name: t\nbackbone: [1\n", ["g.yaml:", "not valid YAML"]),
    (BASE + "data: {num_classes: 9}\n", ["g.yaml:5: data:", "num_classes must be 1..6"]),
])
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
    runs = expand(load_grid(ROOT / "ablations" / "smoke.yaml"))
    assert len(runs) == 13
    coco = (ROOT / "ablations" / "grid.yaml").read_text()
    with pytest.raises(GridError, match="data.train_ann"):  # no COCO on this machine
        load_grid(write(tmp_path, coco))
