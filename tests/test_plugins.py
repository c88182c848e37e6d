"""A user's own selector as a grid value: registered in ``SELECTORS`` by a module the grid
imports, validated like the built-in values, imported by every job through ``custom_imports``.
This module is that user module (the grids below list it under ``imports``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from prunebench.grid import GridError, load_grid
from prunebench.models import SELECTORS
from prunebench.report import build_report
from prunebench.results import read_json
from prunebench.spec import expand
from prunebench.sweep import prepare, run_sweep

PLUGIN = "test-plugin-norm"


@SELECTORS.register_module(PLUGIN)
class NormSelector(nn.Module):
    """Keep logit from the token's norm after a learned projection; prune logit 0."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim // 4)
        self.score = nn.Linear(1, 1)

    def forward(self, x, available=None):
        s = self.score(self.proj(x).norm(dim=-1, keepdim=True))
        return torch.cat([s, torch.zeros_like(s)], dim=-1)


GRID = """\
name: plugins
base: mask-rcnn-vit-cpu
imports: [{module}]
backbone: {{embed_dim: 32, depth: 2, num_heads: 2, prune_layers: [1], keep_ratios: [0.5], out_channels: 16, selector_init: calibrated}}
data: {{type: synthetic, num_train: 8, num_val: 4, image_size: [64, 64], num_classes: 2, img_scale: [64, 64], batch_size: 2, cache_dir: {cache}}}
schedule: {{dense: {{iters: 4}}, finetune: {{iters: 2}}, warmup_iters: 1, checkpoint_interval: 2}}
bench: {{images: 2, warmup: 1, repeats: 1}}
axes:
  pruned_tokens: [preserve]
  reactivation: [true]
  rate: [dynamic]
  selector: {selectors}
"""


def grid(tmp_path: Path, selectors: str = f"[mlp, {PLUGIN}]", module: str = "test_plugins") -> Path:
    path = tmp_path / "plugins.yaml"
    path.write_text(GRID.format(module=module, selectors=selectors, cache=tmp_path / "cache"))
    return path


def test_a_registered_selector_is_a_grid_value_and_its_module_joins_custom_imports(tmp_path):
    s = prepare(grid(tmp_path), tmp_path / "results")
    plugin_run = next(r for r in s.runs if r.axes["selector"] == PLUGIN)
    assert plugin_run.backbone_args["selector"] == PLUGIN
    config = s.sweep_dir / plugin_run.run_id / "config.py"
    assert Config.fromfile(str(config)).custom_imports["imports"] == [
        "prunebench.models",
        "prunebench.hooks",
        "test_plugins",
    ]
    # a fresh interpreter that loads the config (as MMDetection's tools/train.py does) builds it
    code = (
        "import sys; from mmengine.config import Config; from mmdet.registry import MODELS; "
        "from mmdet.utils import register_all_modules; register_all_modules(); "
        "m = MODELS.build(Config.fromfile(sys.argv[1]).model); print(type(m.backbone.selectors[0].inner).__name__)"
    )
    tests = str(Path(__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        capture_output=True,
        text=True,
        cwd=tests,  # the user's module is importable from the working directory
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("NormSelector")


def test_a_registered_selector_is_also_a_method_value(tmp_path):
    text = grid(tmp_path).read_text().split("axes:")[0] + f"axes:\n  method: [svit, {PLUGIN}]\n"
    path = tmp_path / "m.yaml"
    path.write_text(text.replace("depth: 2", "depth: 12"))
    runs, _ = expand(load_grid(path))
    plugin_run = next(r for r in runs if r.axes.get("method") == PLUGIN)
    assert plugin_run.run_id.startswith(f"{PLUGIN}-s0-")
    assert plugin_run.axes["selector"] == PLUGIN and plugin_run.axes["pruned_tokens"] == "preserve"


def test_an_unknown_name_fails_before_any_job_and_lists_the_registered_ones(tmp_path):
    with pytest.raises(
        GridError,
        match=rf"plugins\.yaml:12: axes\.selector\[1\]: unknown selector 'nope'.*mlp, gating.*{PLUGIN}",
    ):
        run_sweep(grid(tmp_path, "[mlp, nope]"), tmp_path / "results")
    assert not (tmp_path / "results").exists()
    with pytest.raises(GridError, match=r"plugins\.yaml:3: imports\[0\]: cannot import 'no_such_module'"):
        load_grid(grid(tmp_path, module="no_such_module"))


@pytest.mark.slow
def test_a_plugin_selector_trains_evaluates_and_shows_in_the_report(tmp_path, job_processes_see_tests):
    states = run_sweep(grid(tmp_path), tmp_path / "results")
    assert sorted(states.values()) == ["done"] * 3, states
    plugin_id = next(r for r in states if PLUGIN in r)
    metrics = read_json(tmp_path / "results" / "plugins" / plugin_id / "metrics.json")
    assert metrics["axes"]["selector"] == PLUGIN and 0 < metrics["keep_ratio"]["mean"] < 1
    report = build_report(tmp_path / "results")
    plugin_rows = [r for r in report.rows if r["axes"].get("selector") == PLUGIN]
    assert len(plugin_rows) == 1 and plugin_rows[0]["box_ap"] is not None
    assert any(e.axis == "selector" and PLUGIN in (e.first, e.second) for e in report.effects)
