"""prunebench.bench on tiny detectors (CPU, random init)."""
import io
import json

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from prunebench.bench import CONFIGS, _gflops, build_detector, measure_detector, run_bench, vit_block_gflops
from prunebench.cli import app

CPU_CFG = str(CONFIGS / "mask_rcnn_vit_cpu.py")  # embed_dim 96, depth 4, 3 heads, slim heads
PRUNE = dict(prune_layers=[1, 2, 3], keep_ratios=[0.7, 0.5, 0.3])
HW = (64, 96)
N = 24


def tiny(**kw):
    torch.manual_seed(0)
    return build_detector("deit-tiny", CPU_CFG, **kw).eval()


def test_measure_detector_pruned_and_dense():
    pruned = measure_detector(tiny(**PRUNE), input_hw=HW, warmup=1, repeats=2)
    dense = measure_detector(tiny(), input_hw=HW, warmup=0, repeats=1)
    lat = pruned["latency_ms"]
    assert lat["backbone"] > 0 and lat["full"] > lat["backbone"]
    assert (lat["device"], lat["input_size"], lat["batch"], lat["repeats"]) == ("cpu", [64, 96], 1, 2)
    assert pruned["keep_ratio"]["per_layer"] == pytest.approx([round(r * N) / N for r in PRUNE["keep_ratios"]])
    assert pruned["keep_ratio"]["mean"] == pytest.approx(sum(pruned["keep_ratio"]["per_layer"]) / 3)
    assert dense["keep_ratio"] == {"mean": 1.0, "per_layer": []}
    for key in ("backbone", "full", "vit_blocks"):
        assert 0 < pruned["flops_g"][key] < dense["flops_g"][key], key
    assert dense["flops_g"]["vit_blocks"] == pytest.approx(vit_block_gflops([N] * 4, 96))
    assert pruned["flops_g"]["vit_blocks"] == pytest.approx(vit_block_gflops([N, 17, 12, 7], 96))
    json.dumps(pruned)  # plain JSON types only


def test_measure_detector_dynamic_batch():
    res = measure_detector(tiny(**PRUNE, rate="dynamic"), input_hw=(50, 70), batch=2, warmup=0, repeats=1)
    assert res["latency_ms"]["batch"] == 2 and res["latency_ms"]["input_size"] == [50, 70]
    assert len(res["keep_ratio"]["per_layer"]) == 3
    assert all(0 < r <= 1 for r in res["keep_ratio"]["per_layer"])


def test_flops_count_attention():
    """The SDPA handle counts q@k^T and attn@v: a block's FLOPs match the analytic formula."""
    from timm.models.vision_transformer import Block

    blk = Block(96, 3, qkv_bias=True).eval()
    tokens = torch.randn(1, 256, 96)
    analytic = vit_block_gflops([256], 96)
    assert 2 * 256 * 256 * 96 / 1e9 > 0.3 * analytic  # attention is a large share here
    assert _gflops(blk, tokens) == pytest.approx(analytic, rel=0.02)


def test_run_bench_tiny(tmp_path):
    out = tmp_path / "bench.json"
    buf = io.StringIO()
    res = run_bench("deit-tiny", input_size=HW, warmup=0, repeats=1, json_out=str(out), config=CPU_CFG,
                    console=Console(file=buf, width=120), **PRUNE)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["schedule"] == PRUNE
    assert res["dense"]["keep_ratio"]["mean"] == 1.0 and res["pruned"]["keep_ratio"]["mean"] < 1.0
    assert res["speedup"]["backbone"] > 0 and res["speedup"]["full"] > 0
    assert res["flop_ratio"]["vit_blocks"] > 1 and res["flop_ratio"]["backbone"] > 1
    text = buf.getvalue()
    assert "dense / pruned" in text and "backbone ms" in text and "full detector GFLOPs" in text


def test_cli_bench_backbone_only(tmp_path):
    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", "--arch", "deit-tiny", "--input-size", "64x96", "--warmup", "0",
                                      "--repeats", "1", "--backbone-only", "--json", str(out)])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["schedule"]["prune_layers"] == list(range(3, 12))
    assert res["pruned"]["latency_ms"]["full"] is None and res["speedup"]["backbone"] > 0
    assert CliRunner().invoke(app, ["bench", "--input-size", "800by1344"]).exit_code == 2
