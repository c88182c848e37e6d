"""``prunebench zoo`` and the released checkpoints' rows in ``report --paper``."""

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import DENSE_AXES, build_run
from prunebench.cli import app
from prunebench.report import run_report
from prunebench.report.paper import load_paper
from prunebench.zoo import BY_NAME, RELEASED, identify

SVIT = dict(pruned_tokens="preserve", reactivation=True, rate="dynamic", selector="mlp")


def test_zoo_lists_every_released_model_with_its_numbers_link_and_commands():
    result = CliRunner().invoke(app, ["zoo"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    out = result.output
    for r in RELEASED:
        row = next(line for line in out.splitlines() if f" {r.name} " in line and r.file in line)
        assert all(
            f" {v} " in row for v in (r.arch, r.cell, f"{r.box_ap:.1f}", f"{r.mask_ap:.1f}", f"{r.fps:.2f}")
        )
        assert r.url in out
        assert f"prunebench convert pretrained/{r.file} checkpoints/" in out
        gumbel = "--selector-inference gumbel --seed 0"
        assert (f"{r.eval_line}" in out) and ((gumbel in r.eval_line) == (r.cell != "dense"))


def test_the_released_small_models_are_the_papers_reference_values():
    paper = load_paper()
    dense, pruned = BY_NAME["ViT-Adapter-S"], BY_NAME["SViT-Adapter-S"]
    assert (dense.box_ap, dense.mask_ap, dense.fps) == tuple(
        paper["dense"][k] for k in ("box_ap", "mask_ap", "fps")
    )
    assert (pruned.box_ap, pruned.mask_ap, pruned.fps) == tuple(
        paper["pruned"][k] for k in ("box_ap", "mask_ap", "fps")
    )


def test_a_checkpoint_is_identified_by_its_published_name_or_training_config():
    assert identify("/x/svit-adapter-t-0.5x.pth", None) is BY_NAME["SViT-Adapter-T"]
    assert identify("renamed.pth", "vit-adapter-s-3x.py") is BY_NAME["ViT-Adapter-S"]
    assert identify("mine.pth", "my-config.py") is None


def eval_run(results, run_id, zoo, box, mask, full, bb, seed=0, inference="gumbel", as_released=True):
    cell = SVIT if inference else DENSE_AXES
    axes = {
        **cell,
        "family": "adapter",
        "source": "eval",
        "selector_inference": inference,
        "keep_ratios": None,
    }
    run_dir = build_run(results / "eval", run_id, axes, box=box, mask=mask, full=full, bb=bb, seed=seed)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.update(
        source="eval", eval={"zoo": zoo, "as_released": as_released, "selector_inference": inference}
    )
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def results(tmp_path):
    """A study (dense + the paper's cell) and evaluations of the released S models: dense, two
    Gumbel seeds of SViT, and one SViT at another budget (not as released)."""
    study = tmp_path / "study"
    build_run(study, "dense-s0", box=40.0, mask=36.0, full=200.0, bb=100.0)
    build_run(study, "preserve-react-dyn-mlp-s0", SVIT, box=39.5, mask=35.8, full=160.0, bb=70.0)
    eval_run(tmp_path, "vit-adapter-s-3x-s0", "ViT-Adapter-S", 48.4, 42.7, 90.0, 60.0, inference=None)
    eval_run(tmp_path, "svit-adapter-s-0.33x-gumbel-s0", "SViT-Adapter-S", 48.0, 42.5, 70.0, 40.0)
    eval_run(tmp_path, "svit-adapter-s-0.33x-gumbel-s1", "SViT-Adapter-S", 48.2, 42.3, 74.0, 42.0, seed=1)
    eval_run(
        tmp_path,
        "svit-adapter-s-0.33x-keep0.3-s0",
        "SViT-Adapter-S",
        40.0,
        35.0,
        50.0,
        20.0,
        as_released=False,
    )
    return tmp_path


def test_report_paper_puts_released_checkpoints_evaluated_here_beside_paper_and_study(results):
    out = Console(file=io.StringIO(), width=300)
    assert run_report(results, fmt="json", paper=True, console=out) == 0
    rows = {r["label"].split(" (")[0]: r for r in json.loads(out.file.getvalue())["paper"]["headline"]}
    assert list(rows) == [
        "paper: SViT-Adapter-S, 0.33x+MS finetune",
        "paper: prior token-pruning methods",
        "released SViT-Adapter-S evaluated here",
        "this study: best cell = the paper's choices",
    ]
    released = rows["released SViT-Adapter-S evaluated here"]
    assert "(gumbel, 2 runs: box 48.1 / mask 42.4; paper 48.2 / 42.5)" in released["label"]
    assert released["d_box_ap"] == pytest.approx(48.1 - 48.4) and released["d_mask_ap"] == pytest.approx(
        42.4 - 42.7
    )
    assert released["speedup_full"] == pytest.approx(90 / 72) and released[
        "speedup_backbone"
    ] == pytest.approx(60 / 41)
    study = rows["this study: best cell = the paper's choices"]
    assert study["d_box_ap"] == pytest.approx(-0.5) and study["speedup_full"] == pytest.approx(200 / 160)


def test_released_rows_say_when_the_dense_model_was_not_evaluated(results):
    (results / "eval" / "vit-adapter-s-3x-s0" / "metrics.json").unlink()
    (results / "eval" / "vit-adapter-s-3x-s0" / "status.json").unlink()
    out = Console(file=io.StringIO(), width=300)
    run_report(results, fmt="json", paper=True, console=out)
    released = [
        r for r in json.loads(out.file.getvalue())["paper"]["headline"] if r["label"].startswith("released")
    ]
    assert len(released) == 1 and "ViT-Adapter-S not evaluated" in released[0]["label"]
    assert released[0]["d_box_ap"] is None and released[0]["speedup_full"] is None
