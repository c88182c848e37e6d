"""``prunebench eval``: a converted checkpoint -> a run folder that report and status read; other
budgets; reproducible Gumbel sampling; errors before anything runs."""

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from official_format import SLIM_RATIOS, slim_official_file
from prunebench.cli import app
from prunebench.convert import convert_checkpoint
from prunebench.evaluate import EvalError, parse_cell, per_layer, run_eval, run_id
from prunebench.report import run_report
from prunebench.results import read_json
from prunebench.status import print_status

QUICK = dict(images=1, warmup=0, repeats=1)
H, W = 64, 64
TOKENS = (H // 16) * (W // 16)


def quiet() -> Console:
    return Console(quiet=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """Slim random-weight checkpoints, official format -> converted: dense, SViT with the dynamic
    rate (as released) and SViT with the fixed rate (``ratio_per_sample``)."""
    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name, svit, per_sample in (("dense", False, False), ("dyn", True, False), ("fixed", True, True)):
        src = slim_official_file(d / f"{name}-official.pth", svit, per_sample)
        out[name] = d / f"{name}.prunebench.pth"
        convert_checkpoint(src, out[name], console=quiet())
    return out


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """A grid file whose data section is a tiny synthetic set (3 val images of 64x64)."""
    d = tmp_path_factory.mktemp("data")
    path = d / "tiny.yaml"
    path.write_text(
        f"name: tiny\ndata: {{type: synthetic, num_train: 0, num_val: 3, image_size: [{H}, {W}], "
        f"img_scale: [{W}, {H}], num_workers: 0, cache_dir: {d / 'cache'}}}\n"
    )
    return path


# --- fast: input handling ------------------------------------------------------------------


def test_keep_ratios_per_stage_or_per_layer():
    assert (
        per_layer([0.6, 0.36, 0.22], [0.7] * 3 + [0.49] * 3 + [0.343] * 3)
        == [0.6] * 3 + [0.36] * 3 + [0.22] * 3
    )
    assert per_layer([0.5, 0.4, 0.3], SLIM_RATIOS) == [0.5, 0.4, 0.3]
    with pytest.raises(EvalError, match="give one per stage .3 stages"):
        per_layer([0.5, 0.4], [0.7] * 3 + [0.49] * 3 + [0.343] * 3)


def test_cells_parse_back_from_their_names():
    assert parse_cell("preserve-react-dyn-mlp") == dict(
        pruned_tokens="preserve", reactivation=True, rate="dynamic", selector="mlp"
    )
    assert parse_cell("dense") is None
    with pytest.raises(EvalError, match="unknown cell; use dense or one of discard-noreact-dyn-gating"):
        parse_cell("preserve-maybe")


def test_run_id_names_the_evaluation_and_is_stable():
    axes = {"selector_inference": "gumbel", "keep_ratios": "0.6,0.36,0.22"}
    a = run_id(Path("c/svit-adapter-s-0.33x.prunebench.pth"), axes, 1, "fp16", {"x": 1})
    assert a.startswith("svit-adapter-s-0.33x-gumbel-keep0.6-0.36-0.22-fp16-s1-")
    assert a == run_id(Path("c/svit-adapter-s-0.33x.prunebench.pth"), axes, 1, "fp16", {"x": 1})
    assert a != run_id(Path("c/svit-adapter-s-0.33x.prunebench.pth"), axes, 1, "fp16", {"x": 2})


@pytest.mark.parametrize(
    "which, options, message",
    [
        ("dense", dict(keep_ratios=[0.5]), "a dense checkpoint has no selectors"),
        ("dense", dict(selector_inference="gumbel"), "a dense checkpoint has no selectors"),
        ("dyn", dict(keep_ratios=[0.5, 0.4, 0.3]), "Fix: add --rate fixed"),
        ("fixed", dict(keep_ratios=[0.5, 0.4]), "give one per stage (3 stages"),
        ("fixed", dict(cell="preserve-noreact-dyn-mlp"), "records cell preserve-react-fixed-mlp, not"),
        (
            "fixed",
            dict(arch="deit-tiny"),
            "a 96-wide ViT checkpoint (backbone.patch_embed.proj.weight: 96 channels), not deit-tiny (192). Fix: leave --arch out",
        ),
        ("fixed", dict(data="/no/such/folder"), "not 'synthetic', a grid file or a COCO folder"),
    ],
)
def test_bad_options_fail_before_anything_is_written(tmp_path, converted, which, options, message):
    with pytest.raises(ValueError) as err:
        run_eval(converted[which], results=tmp_path, console=quiet(), **options)
    assert message in str(err.value)
    assert not (tmp_path / "eval").exists()


def test_other_classes_than_the_datas_are_refused(tmp_path, converted, grid):
    ckpt = torch.load(converted["fixed"], weights_only=True)
    ckpt["meta"]["dataset_meta"]["classes"] = ["person", "bicycle", "car"]
    torch.save(ckpt, tmp_path / "coco-classes.pth")
    with pytest.raises(
        EvalError,
        match=r"detects 3 classes \(person, bicycle, car\), but .* has 3 \(circle, square, triangle\)",
    ):
        run_eval(tmp_path / "coco-classes.pth", str(grid), tmp_path, console=quiet())


def test_a_checkpoint_without_record_needs_its_cell_and_arch(tmp_path, converted, grid):
    ckpt = torch.load(converted["fixed"], weights_only=True)
    del ckpt["meta"]["prunebench"]
    torch.save(ckpt, tmp_path / "bare.pth")
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "bare.pth"), "--data", str(grid)])
    assert result.exit_code == 2
    assert "Fix: name it, e.g. --cell preserve-react-dyn-mlp --arch deit-small" in " ".join(
        result.output.split()
    )


def test_a_sweep_runs_own_checkpoint_points_at_its_config(tmp_path, converted, grid):
    ckpt = torch.load(converted["fixed"], weights_only=True)
    del ckpt["meta"]["prunebench"]
    run = tmp_path / "smoke" / "dense-s0-abcdef"
    (run / "work_dir").mkdir(parents=True)
    (run / "config.py").write_text("model = dict()\n")
    torch.save(ckpt, run / "work_dir" / "iter_4.pth")
    out = []
    for options in ([], ["--cell", "dense", "--arch", "deit-small"]):  # no loop between two errors
        result = CliRunner().invoke(
            app, ["eval", str(run / "work_dir" / "iter_4.pth"), "--data", str(grid), *options]
        )
        assert result.exit_code == 2
        out.append(" ".join(result.output.split()))
    for text in out:
        assert (
            "a checkpoint of the sweep run dense-s0-abcdef" in text and "--cell" not in text.split("Fix:")[1]
        )
        assert f"python tools/test.py {run / 'config.py'} {run / 'work_dir' / 'iter_4.pth'}" in text


def test_an_official_checkpoint_must_be_converted_first(tmp_path):
    src = slim_official_file(tmp_path / "svit.pth", svit=True)
    with pytest.raises(
        EvalError, match="an official .* checkpoint. Fix: convert it first: prunebench convert"
    ):
        run_eval(src, results=tmp_path, console=quiet())


# --- slow: real evaluations on the synthetic set -----------------------------------------------


@pytest.fixture(scope="module")
def fixed_eval(converted, grid, tmp_path_factory) -> tuple[dict, Path]:
    results = tmp_path_factory.mktemp("results")
    return run_eval(converted["fixed"], str(grid), results, bench=QUICK, console=quiet()), results


@pytest.mark.slow
def test_eval_writes_a_run_that_report_and_status_show(fixed_eval, converted, grid):
    metrics, results = fixed_eval
    run_dir = results / "eval" / metrics["run_id"]
    assert sorted(p.name for p in run_dir.iterdir() if p.is_file()) == [
        "config.py",
        "eval.log",
        "metrics.json",
        "run.json",
        "run.lock",
        "status.json",
    ]
    assert (
        metrics["source"] == "eval" and metrics["stage"] == "finetune" and metrics["backbone"] == "deit-small"
    )
    assert metrics["axes"]["rate"] == "fixed" and metrics["axes"]["source"] == "eval"
    assert "bbox_mAP" in metrics["coco"] and "segm_mAP" in metrics["coco"]
    assert 0 <= metrics["box_ap"] <= 100 and 0 <= metrics["mask_ap"] <= 100
    assert metrics["keep_ratio"]["images"] == 3 and len(metrics["keep_ratio"]["per_layer"]) == 3
    assert metrics["latency_ms"]["full"] > 0 and metrics["flops_g"]["backbone"] > 0
    assert (metrics["flops_g"]["images"], metrics["flops_g"]["source"]) == (3, "val")  # every val image
    assert metrics["eval"]["images"] == 3 and metrics["eval"]["as_released"] is True
    assert read_json(run_dir / "status.json")["state"] == "done"
    assert read_json(run_dir / "run.json")["backbone_args"]["rate"] == "fixed"

    out = Console(file=io.StringIO(), width=400)
    assert run_report(results, fmt="json", console=out) == 0
    rows = json.loads(out.file.getvalue())["rows"]
    assert [(r["run_id"], r["box_ap"], r["source"]) for r in rows] == [
        (metrics["run_id"], metrics["box_ap"], "eval")
    ]
    listing = Console(file=io.StringIO(), width=400)
    print_status(results, listing)
    assert metrics["run_id"] in listing.file.getvalue() and "done" in listing.file.getvalue()

    # the same evaluation again: the finished run is returned, not redone
    mtime = (run_dir / "metrics.json").stat().st_mtime_ns
    assert run_eval(converted["fixed"], str(grid), results, bench=QUICK, console=quiet()) == metrics
    assert (run_dir / "metrics.json").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_keep_ratios_change_the_achieved_keep_ratio_and_flops(fixed_eval, converted, grid):
    trained, results = fixed_eval
    other = run_eval(
        converted["fixed"], str(grid), results, keep_ratios=[0.4, 0.25, 0.25], bench=QUICK, console=quiet()
    )
    exact = [round(r * TOKENS) / TOKENS for r in (0.4, 0.25, 0.25)]  # the fixed rate keeps round(r * N)
    assert other["keep_ratio"]["per_layer"] == exact
    assert trained["keep_ratio"]["per_layer"] == [round(r * TOKENS) / TOKENS for r in SLIM_RATIOS]
    assert other["flops_g"]["vit_blocks"] < trained["flops_g"]["vit_blocks"]
    assert other["flops_g"]["backbone"] < trained["flops_g"]["backbone"]
    assert other["axes"]["keep_ratios"] == "0.4,0.25,0.25" and other["eval"]["as_released"] is False
    assert other["run_id"] != trained["run_id"]


@pytest.mark.slow
def test_gumbel_with_a_seed_is_reproducible(converted, grid, tmp_path):
    def gumbel(seed, where):
        return run_eval(
            converted["dyn"],
            str(grid),
            tmp_path / where,
            selector_inference="gumbel",
            seed=seed,
            bench=QUICK,
            console=quiet(),
        )

    first, again, other = gumbel(0, "a"), gumbel(0, "b"), gumbel(1, "c")
    for key in ("box_ap", "mask_ap", "coco", "keep_ratio"):
        assert first[key] == again[key], key
    assert first["keep_ratio"]["per_layer"] != other["keep_ratio"]["per_layer"]
    assert first["axes"]["selector_inference"] == "gumbel" and first["run_id"] == again["run_id"]


def test_fp16_test_steps_run_under_autocast():
    from prunebench.evaluate.run import _in_precision

    def step(x):
        return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), (x @ x).dtype

    x = torch.ones(2, 2)
    assert _in_precision(step, torch.device("cpu"), "fp16")(x) == (True, torch.float16, torch.float16)
    assert _in_precision(step, torch.device("cpu"), "fp32")(x)[2] == torch.float32


@pytest.mark.slow
def test_fp16_eval_on_a_cpu_tests_in_fp32_times_in_fp16_and_writes_the_fp16_test_config(
    converted, grid, tmp_path, monkeypatch
):
    from prunebench.models import PrunedViTAdapter

    seen = []
    forward = PrunedViTAdapter.forward

    def spy(self, img):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, img)

    monkeypatch.setattr(PrunedViTAdapter, "forward", spy)
    metrics = run_eval(
        converted["fixed"], str(grid), tmp_path, bench={**QUICK, "dtype": "fp16"}, console=quiet()
    )
    assert seen[:3] == [False] * 3  # MMCV's CPU NMS has no half kernel: the COCO test stays fp32
    assert metrics["eval"]["test_dtype"] == "fp32" and metrics["eval"]["dtype"] == "fp16"
    assert metrics["latency_ms"]["dtype"] == "fp16" and "-fp16-s0-" in metrics["run_id"]
    config = (tmp_path / "eval" / metrics["run_id"] / "config.py").read_text()
    assert "test_cfg = {'type': 'TestLoop', 'fp16': True}" in config  # tools/test.py on a GPU: fp16
