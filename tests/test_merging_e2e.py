"""End-to-end: ``ablations/smoke-merging.yaml`` (shortened) trains, COCO-evaluates and times the
three fates and both merging methods from one dense parent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prunebench.results import read_json
from prunebench.sweep import run_sweep

pytestmark = pytest.mark.slow

SMOKE = Path(__file__).resolve().parents[1] / "ablations" / "smoke-merging.yaml"
SHORTER = {  # the same grid, a few iterations and images
    r"num_train: \d+": "num_train: 8",
    r"num_val: \d+": "num_val: 4",
    r"dense: \{iters: \d+": "dense: {iters: 4",
    r"finetune: \{iters: \d+": "finetune: {iters: 2",
    r"checkpoint_interval: \d+": "checkpoint_interval: 2",
    r"warmup_iters: \d+": "warmup_iters: 0",
    r"images: \d+": "images: 2",
}


def test_smoke_merging_sweep_runs_every_method_and_fate(tmp_path):
    text = SMOKE.read_text()
    for pattern, repl in SHORTER.items():
        text = re.sub(pattern, repl, text)
    grid = tmp_path / "smoke-merging.yaml"
    grid.write_text(text.replace("type: synthetic", f"type: synthetic\n  cache_dir: {tmp_path / 'cache'}"))
    states = run_sweep(grid, tmp_path / "results")
    assert sorted(states.values()) == ["done"] * 6, states
    sweep = tmp_path / "results" / "smoke-merging"
    seen = set()
    for run_id in states:
        m = read_json(sweep / run_id / "metrics.json")
        assert 0 <= m["box_ap"] <= 100 and 0 <= m["mask_ap"] <= 100 and m["latency_ms"]["backbone"] > 0
        if run_id.startswith("dense"):
            continue
        seen.add((m["axes"]["pruned_tokens"], m["axes"].get("method")))
        keep = m["keep_ratio"]["per_layer"]
        assert len(keep) == 3 and 0 < keep[-1] < keep[0] < 1, (run_id, keep)
        if m["axes"].get("method") in ("tome", "atc"):  # int(0.7 T) of 64 tokens: 44, 30, 21
            assert keep == pytest.approx([44 / 64, 30 / 64, 21 / 64])
    assert seen == {
        ("discard", None),
        ("preserve", None),
        ("merge", None),
        ("merge", "tome"),
        ("merge", "atc"),
    }
