"""GFLOPs of finished runs over all their val images, beside what their metrics.json says.

Runs written before prunebench counted FLOPs over the val set hold the first timed image's
figure; this loads each finished run's config and last checkpoint, runs MMDetection's COCO test
under a FlopsRecorder and prints both (mean, p10, p90, images). metrics.json is left unchanged;
``--json OUT`` writes the table.

    python scripts/flops_over_val.py results/smoke [--json flops.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table


def recount(run_dir: Path) -> dict:
    """``flops_g`` of a finished run over its val images (a COCO test of its last checkpoint)."""
    from mmdet.registry import MODELS
    from mmengine.runner import load_checkpoint

    import prunebench.models  # noqa: F401  (registers the models, allows MMEngine checkpoints)
    from prunebench.bench import FlopsRecorder
    from prunebench.configs import load_config
    from prunebench.evaluate.run import tester
    from prunebench.results import CONFIG_FILE, METRICS_FILE, read_json

    cfg = load_config(run_dir / CONFIG_FILE)
    model = MODELS.build(cfg.model)
    load_checkpoint(model, read_json(run_dir / METRICS_FILE)["checkpoint"], map_location="cpu")
    with tempfile.TemporaryDirectory() as work_dir:
        runner = tester(cfg, model, work_dir)
        with FlopsRecorder(runner.model) as rec:
            runner.test()
    return rec.summary("val")


def _g(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from prunebench.results import scan_results

    rows = []
    for run in scan_results(args.sweep):
        if run.state != "done":
            continue
        before = run.metrics.get("flops_g") or {}
        rows.append({"run_id": run.run_id, "before": before, "after": recount(run.path)})
    table = Table(title=f"{args.sweep}: GFLOPs per image, metrics.json vs mean over the val images")
    for col in ("run", "bb before", "bb mean (p10-p90)", "full before", "full mean (p10-p90)", "images"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        b, a = r["before"], r["after"]
        cells = [r["run_id"]]
        for part in ("backbone", "full"):
            cells += [_g(b.get(part)), f"{_g(a[part])} ({_g(a['p10'][part])}-{_g(a['p90'][part])})"]
        table.add_row(*cells, str(a["images"]))
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
