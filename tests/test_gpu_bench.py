"""scripts/gpu_bench.py --device cpu --quick, where MMDetection and MMCV cannot be imported."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunebench.models.selectors import num_kept

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench.py"
# None in sys.modules makes `import mmdet` / `import mmcv` fail, as on a machine without them
RUN = (
    "import runpy, sys; sys.modules.update(mmdet=None, mmcv=None); sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.mark.slow  # both backbone families, 16 groups of timed calls: a minute or two on 2 cores
def test_gpu_bench_quick_cpu_without_mmdet(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "-c", RUN, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["skipped"] == [] and res["input_size"] == [128, 192]
    assert res["deform_attn"] == "gather"  # no MMCV: the adapter runs prunebench's own form
    groups = {(r["family"], r["batch"], r["dtype"]) for r in res["rows"]}
    assert groups == {(f, b, d) for f in ("plain", "adapter") for b in (1, 2) for d in ("fp32", "bf16")}
    rows = {(r["family"], r["batch"], r["dtype"], r["model"], r["sparse_mode"]): r for r in res["rows"]}
    assert len(rows) == len(res["rows"]) == 2 * (2 * 3 + 2 * 4)  # batch 1: one dynamic row; 2: loop + padded
    fixed_keep = sum(num_kept(r, 96) / 96 for r in res["keep_ratios"]) / 3  # 8x12 tokens
    for family, batch, dtype in groups:
        assert rows[(family, batch, dtype, "dense", None)]["speedup"] == 1.0
        assert rows[(family, batch, dtype, "fixed", None)]["keep_ratio"] == pytest.approx(fixed_keep)
        assert rows[(family, batch, dtype, "dynamic", "padded")]["ms"]["n"] == 3
        if batch == 2:  # images keep different counts; both paths make the same decisions
            loop, padded = (
                rows[(family, 2, dtype, "dynamic", "loop")],
                rows[(family, 2, dtype, "dynamic", "padded")],
            )
            assert len(set(padded["last_layer_counts"])) == 2
            assert loop["last_layer_counts"] == padded["last_layer_counts"]
    assert "| backbone | batch | dtype | mode | model |" in proc.stdout and "dynamic (padded)" in proc.stdout
    assert "MMCV's compiled CUDA op not installed" in proc.stdout
