"""The command line: every command's --help, fast start-up, doctor, and errors for bad input."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from prunebench.cli import app

runner = CliRunner()
COMMANDS = [
    [],
    ["doctor"],
    ["plan"],
    ["sweep"],
    ["status"],
    ["report"],
    ["viz"],
    ["bench"],
    ["data"],
    ["data", "subset"],
    ["data", "synth"],
    ["zoo"],
    ["convert"],
    ["eval"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "prunebench")
def test_help(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_fast_commands_do_not_import_torch():
    code = (
        "import sys; from prunebench.cli import app; "
        "from prunebench import sweep, grid, report, status, results, zoo, evaluate, convert; "
        "print(sorted(m for m in ('torch', 'mmdet', 'mmcv') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_doctor_runs_every_check_against_the_real_stack():
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for row in (
        "python",
        "torch",
        "torchvision",
        "mmcv",
        "mmdet",
        "mmengine",
        "timm",
        "pycocotools",
        "mmcv compiled ops",
        "nms and RoIAlign ran",
        "cuda",
        "prunebench models",
    ):
        assert row in result.output


def test_doctor_fails_with_a_fix_when_ops_are_missing(monkeypatch):
    from prunebench import doctor

    def broken():
        raise ImportError("libmmcv_ext.so: cannot open shared object file")

    monkeypatch.setattr(doctor, "_check_ops", broken)
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "FAIL" in result.output and "MMCV ops missing: run `make setup`" in result.output


def test_sweep_with_bad_grid_exits_2_naming_the_key(tmp_path):
    grid = tmp_path / "bad.yaml"
    grid.write_text("name: x\naxes:\n  rate: [fixed, sometimes]\n")
    result = runner.invoke(app, ["sweep", str(grid), "--results", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "bad.yaml:3" in result.output and "axes.rate[1]" in result.output
    assert not (tmp_path / "x").exists()
