"""prunebench.bench on tiny detectors (CPU, random init) and a tiny synthetic dataset."""

import io
import json

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from prunebench.bench import (
    build_detector,
    file_batches,
    latency_stats,
    measure_models,
    measure_run,
    run_bench,
    synthetic_data,
    time_calls,
    traced_gflops,
)
from prunebench.cli import app
from prunebench.configs import TEMPLATE_DIR, load_config
from prunebench.data import make_synthetic_coco
from prunebench.models.selectors import num_kept

CPU_CFG = str(TEMPLATE_DIR / "mask_rcnn_vit_cpu.py")  # embed_dim 96, depth 4, 3 heads, slim heads
PRUNE = dict(prune_layers=[1, 2, 3], keep_ratios=[0.7, 0.5, 0.3])
HW = (64, 96)
N = 24
RANDOM = {"kind": "random", "input_size": list(HW)}


def vit_block_gflops(tokens_per_block, dim, mlp_ratio=4.0):
    """Analytic GFLOPs of ViT blocks: ``n*D^2*(4 + 2*mlp_ratio)`` for qkv/proj/MLP, ``2*n^2*D`` for
    attention and ``10*n*D`` for the two LayerNorms (5 per element, as MMEngine counts them)."""
    return (
        sum(n * dim * dim * (4 + 2 * mlp_ratio) + 2 * n * n * dim + 10 * n * dim for n in tokens_per_block)
        / 1e9
    )


def tiny(**kw):
    torch.manual_seed(0)
    return build_detector("deit-tiny", CPU_CFG, **kw).eval()


def test_latency_stats():
    s = latency_stats([9, 1, 8, 2, 7, 3, 6, 4, 5, 100])
    assert s == {"median": 5.5, "mid50_mean": pytest.approx(5.5), "p90": 9, "n": 10}  # 3..8; 100 only in max
    s = latency_stats([1, 2, 3, 40])  # middle 50 %: 2 and 3; the outlier only moves p90
    assert (s["median"], s["mid50_mean"], s["p90"], s["n"]) == (2.5, 2.5, 40, 4)
    assert latency_stats([7.0]) == {"median": 7.0, "mid50_mean": 7.0, "p90": 7.0, "n": 1}
    with pytest.raises(ValueError):
        latency_stats([])


def test_time_calls_warmup_then_interleaved_rounds():
    log = []
    fns = {k: [lambda k=k, i=i: log.append((k, i)) for i in range(2)] for k in ("a", "b")}
    ms = time_calls(fns, "cpu", warmup=3, repeats=2)
    assert log[:6] == [("a", 0), ("a", 1), ("a", 0), ("b", 0), ("b", 1), ("b", 0)]
    assert log[6:] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)] * 2
    assert {k: len(v) for k, v in ms.items()} == {"a": 4, "b": 4} and min(ms["a"]) >= 0


def test_measure_models_pruned_and_dense():
    res = measure_models(
        {"pruned": tiny(**PRUNE), "dense": tiny()}, [synthetic_data(HW)], RANDOM, warmup=1, repeats=3
    )
    pruned, dense = res["pruned"], res["dense"]
    lat = pruned["latency_ms"]
    assert lat["backbone"] > 0 and lat["full"] > lat["backbone"]
    assert lat["backbone"] == lat["backbone_stats"]["median"] and lat["full"] == lat["full_stats"]["median"]
    assert set(lat["full_stats"]) == {"median", "mid50_mean", "p90", "n"} and lat["full_stats"]["n"] == 3
    assert (lat["device"], lat["dtype"], lat["source"]) == ("cpu", "fp32", RANDOM)
    assert (lat["batch"], lat["tokens"]) == (1, N)
    assert lat["threads"] == torch.get_num_threads()
    keep = lat["keep_ratio"]
    assert keep["per_layer"] == pytest.approx([num_kept(r, N) / N for r in PRUNE["keep_ratios"]])
    assert keep["mean"] == pytest.approx(sum(keep["per_layer"]) / 3) and keep["images"] == 1
    assert dense["latency_ms"]["keep_ratio"] == {"mean": 1.0, "per_layer": [], "images": 1}
    for key in ("backbone", "full", "vit_blocks"):
        assert 0 < pruned["flops_g"][key] < dense["flops_g"][key], key
    assert dense["flops_g"]["vit_blocks"] == pytest.approx(vit_block_gflops([N] * 4, 96))
    assert pruned["flops_g"]["vit_blocks"] == pytest.approx(vit_block_gflops([N, 17, 12, 7], 96))
    assert (pruned["flops_g"]["images"], pruned["flops_g"]["source"]) == (1, "timed")
    json.dumps(res)  # plain JSON types only


def test_measure_models_dynamic_batch_bf16():
    """bf16: the backbone and neck run under autocast, the heads (MMCV's NMS, RoIAlign) in fp32."""
    model = tiny(**PRUNE, rate="dynamic")
    seen = []
    for part in (model.neck, model.rpn_head):
        part.register_forward_hook(lambda m, args, out: seen.append((type(m).__name__, args[0][0].dtype)))
    res = measure_models(
        {"m": model}, [synthetic_data((50, 70), batch=2)], RANDOM, dtype="bf16", warmup=0, repeats=1
    )["m"]
    assert ("FPN", torch.bfloat16) in seen and ("RPNHead", torch.float32) in seen
    assert "extract_feat" not in vars(model)  # the autocast wrapper is gone after the call
    assert res["latency_ms"]["batch"] == 2 and res["latency_ms"]["dtype"] == "bf16"
    assert res["latency_ms"]["full"] > 0
    keep = res["latency_ms"]["keep_ratio"]
    assert keep["images"] == 2 and len(keep["per_layer"]) == 3
    assert all(0 < r <= 1 for r in keep["per_layer"])


def test_flops_count_attention():
    """The SDPA handle counts q@k^T and attn@v: a block's FLOPs match the analytic formula."""
    from timm.models.vision_transformer import Block

    blk = Block(96, 3, qkv_bias=True).eval()
    tokens = torch.randn(1, 256, 96)
    analytic = vit_block_gflops([256], 96)
    assert 0.3 * analytic < 2 * 256 * 256 * 96 / 1e9  # attention is a large share here
    assert traced_gflops(blk, tokens) == pytest.approx(analytic, rel=0.02)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Four 96x96 synthetic val images and the CPU config's test dataset over them (Resize 96x96)."""
    root = tmp_path_factory.mktemp("synth")
    info = make_synthetic_coco(root, num_train=0, num_val=4, image_size=(96, 96))
    cfg = load_config(CPU_CFG)
    for step in cfg.test_dataloader.dataset.pipeline:
        if step["type"] == "Resize":
            step["scale"] = (96, 96)
    cfg.test_dataloader.dataset.update(
        data_root=f"{root}/",
        ann_file="annotations/instances_val.json",
        data_prefix=dict(img="val/"),
        metainfo=dict(classes=info["classes"]),
    )
    return root, cfg


def _dataset(cfg):
    from mmdet.registry import DATASETS

    return DATASETS.build(cfg.test_dataloader.dataset)


def _dense_run(sweep, cfg, with_checkpoint=True):
    """A finished dense run folder as a job leaves it: config.py, checkpoint, metrics.json."""
    run = sweep / "dense-s0-abc"
    (run / "work_dir").mkdir(parents=True)
    dense_cfg = cfg.copy()
    dense_cfg.model.backbone.update(arch="deit-tiny", prune_layers=[], keep_ratios=[])
    dense_cfg.dump(str(run / "config.py"))
    ckpt = run / "work_dir" / "iter_10.pth"
    if with_checkpoint:
        torch.save({"state_dict": tiny().state_dict(), "meta": {}}, ckpt)
    (run / "metrics.json").write_text(json.dumps({"checkpoint": str(ckpt)}))
    return run.name


def test_measure_run_val_images_paired_with_dense(synth, tmp_path):
    root, cfg = synth
    dense_id = _dense_run(tmp_path, cfg)
    model = tiny(**PRUNE)
    out = measure_run(
        model,
        _dataset(cfg),
        {"images": 3, "warmup": 1, "repeats": 2, "dtype": "fp32"},
        tmp_path / "preserve-s0-def",
        dense_id,
    )
    lat = out["latency_ms"]
    n = 36  # 96x96 -> 6x6 patch tokens
    assert lat["source"] == {
        "kind": "images",
        "count": 3,
        "ann_file": f"{root}/annotations/instances_val.json",
    }
    assert lat["backbone_stats"]["n"] == lat["full_stats"]["n"] == 3 * 2  # images x rounds
    assert lat["tokens"] == n and lat["batch"] == 1 and lat["dtype"] == "fp32"
    assert lat["keep_ratio"]["images"] == 3
    assert lat["keep_ratio"]["per_layer"] == pytest.approx([num_kept(r, n) / n for r in PRUNE["keep_ratios"]])
    paired = out["paired"]
    assert paired["dense_run_id"] == dense_id and paired["rounds"] == 2
    for part in ("backbone", "full"):
        assert paired["dense_latency_ms"][part] > 0
        assert paired["speedup"][part] == pytest.approx(paired["dense_latency_ms"][part] / lat[part])
    assert "flops_g" not in out  # counted over all val images during the COCO test instead
    json.dumps(out)


def test_measure_run_dense_parent_without_checkpoint(synth, tmp_path):
    _, cfg = synth
    dense_id = _dense_run(tmp_path, cfg, with_checkpoint=False)
    out = measure_run(
        tiny(**PRUNE), _dataset(cfg), {"images": 1, "warmup": 0, "repeats": 1}, tmp_path / "ft", dense_id
    )
    assert out["paired"] is None and out["latency_ms"]["backbone_stats"]["n"] == 1


def test_run_bench_tiny(tmp_path):
    out = tmp_path / "bench.json"
    buf = io.StringIO()
    res = run_bench(
        "deit-tiny",
        input_size=HW,
        warmup=0,
        repeats=1,
        json_out=str(out),
        config=CPU_CFG,
        console=Console(file=buf, width=160),
        **PRUNE,
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["schedule"] == PRUNE and res["source"] == RANDOM
    assert res["dense"]["latency_ms"]["keep_ratio"]["mean"] == 1.0
    assert res["pruned"]["latency_ms"]["keep_ratio"]["mean"] < 1.0
    assert res["speedup"]["backbone"] > 0 and res["speedup"]["full"] > 0
    assert res["flop_ratio"]["vit_blocks"] > 1 and res["flop_ratio"]["backbone"] > 1
    text = buf.getvalue()
    assert "dense / pruned" in text and "backbone ms, p90" in text and "full detector GFLOPs" in text
    assert "GFLOPs per image, mean over 1 image" in " ".join(text.split())


def test_run_bench_adapter_counts_its_deformable_attention():
    """``family="adapter"``: the dense and pruned SViT-Adapter side by side; pruning lowers the ViT
    blocks' FLOPs, not the adapter's (the selectors add theirs), so the backbone's FLOP ratio is
    below the blocks' ratio."""
    res = run_bench(
        "deit-tiny",
        family="adapter",
        input_size=HW,
        warmup=0,
        repeats=1,
        config=CPU_CFG,
        console=Console(file=io.StringIO(), width=160),
        backbone_only=True,
        conv_inplane=16,
        interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
        **PRUNE,
    )
    assert res["family"] == "adapter" and res["pruned"]["latency_ms"]["keep_ratio"]["mean"] < 1.0
    d, p = res["dense"]["flops_g"], res["pruned"]["flops_g"]
    adapter = d["backbone"] - d["vit_blocks"]  # spatial prior, injectors, extractors, output convs
    selectors = (
        3 * N * (5 * 96 + 96 * 24 + 24 * 2) / 1e9
    )  # three MLP selectors (LayerNorm, 2 Linear) on all N tokens
    assert adapter > 0 and p["backbone"] - p["vit_blocks"] == pytest.approx(adapter + selectors, rel=1e-6)
    assert 1 < res["flop_ratio"]["backbone"] < res["flop_ratio"]["vit_blocks"]


def test_cli_bench_backbone_only(tmp_path):
    out = tmp_path / "b.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--arch",
            "deit-tiny",
            "--input-size",
            "64x96",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--backbone-only",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["schedule"]["prune_layers"] == list(range(3, 12))
    assert res["pruned"]["latency_ms"]["full"] is None and res["speedup"]["backbone"] > 0
    assert CliRunner().invoke(app, ["bench", "--input-size", "800by1344"]).exit_code == 2
    bad = CliRunner().invoke(app, ["bench", "--dtype", "fp8"])
    assert bad.exit_code == 2 and "--dtype" in bad.output
    assert CliRunner().invoke(app, ["bench", "--sparse-mode", "fast"]).exit_code == 2


@pytest.mark.parametrize("method", ["tome", "atc", "evit"])
def test_cli_bench_a_method_preset(tmp_path, method):
    out = tmp_path / "b.json"
    args = ["bench", "--method", method, "--arch", "deit-tiny", "--input-size", "64x96"]
    result = CliRunner().invoke(
        app, [*args, "--warmup", "0", "--repeats", "1", "--backbone-only", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["arch"] == "deit-tiny" and res["pruned"]["latency_ms"]["keep_ratio"]["mean"] < 1.0
    assert res["flop_ratio"]["vit_blocks"] > 1


def test_file_batches_folder_and_annotation_file(synth):
    root, cfg = synth
    batches, source = file_batches(root / "val", cfg, count=3, batch=2)
    assert source == {"kind": "images", "count": 3, "folder": str(root / "val")}
    assert [len(b["inputs"]) for b in batches] == [2, 1]
    assert [s.img_path for b in batches for s in b["data_samples"]] == [
        str(root / "val" / f"00000{i}.png") for i in (1, 2, 3)
    ]
    assert tuple(batches[0]["inputs"][0].shape) == (3, 96, 96)  # through the test pipeline's Resize
    ann = root / "annotations" / "instances_val.json"
    batches, source = file_batches(ann, cfg, count=2)
    assert source == {"kind": "images", "count": 2, "ann_file": str(ann)}
    paths = [b["data_samples"][0].img_path for b in batches]
    assert paths == [str(root / "val" / f"00000{i}.png") for i in (1, 2)]


def test_cli_bench_images(synth, tmp_path):
    root, _ = synth
    out = tmp_path / "b.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--arch",
            "deit-tiny",
            "--images",
            str(root / "val"),
            "--num-images",
            "1",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--backbone-only",
            "--rate",
            "dynamic",
            "--sparse-mode",
            "padded",
            "--dtype",
            "bf16",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["source"] == {"kind": "images", "count": 1, "folder": str(root / "val")}
    assert res["sparse_mode"] == "padded" and res["pruned"]["latency_ms"]["dtype"] == "bf16"
    # the default template's test pipeline scales 96x96 images to 800x800: 50x50 tokens
    assert res["pruned"]["latency_ms"]["tokens"] == 2500
    assert res["pruned"]["flops_g"]["images"] == 1 and res["pruned"]["flops_g"]["full"] is None


def test_cli_bench_images_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["bench", "--arch", "deit-tiny", "--images", str(empty)])
    assert result.exit_code == 2 and "no image files" in result.output
    ann = tmp_path / "annotations" / "instances_val.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "missing.png"}]}))
    result = CliRunner().invoke(app, ["bench", "--arch", "deit-tiny", "--images", str(ann)])
    assert result.exit_code == 2 and "missing.png" in result.output and "ROOT/SPLIT" in result.output


def test_run_bench_reports_atcs_clustering_time_within_its_backbone():
    """``--method atc``: the time SciPy's clustering takes inside each pruned backbone call is a
    row of its own (and 0 for a method that does not cluster)."""
    from prunebench.presets import backbone_args

    shares = {}
    for method in ("atc", "tome"):
        args = backbone_args(method, {"arch": "deit-tiny"})
        schedule = {k: args.pop(k) for k in ("arch", "prune_layers", "keep_ratios")}
        schedule.update(arch="deit-tiny", prune_layers=[1, 2, 3])  # the 4-block CPU template
        buf = io.StringIO()
        res = run_bench(
            input_size=(128, 192),
            warmup=0,
            repeats=2,
            config=CPU_CFG,
            console=Console(file=buf, width=200),
            backbone_only=True,
            rate=args.pop("rate"),
            pruned_args=args,
            **schedule,
        )
        lat = res["pruned"]["latency_ms"]
        shares[method] = lat["clustering"] / lat["backbone"]
        assert res["dense"]["latency_ms"]["clustering"] == 0.0
        assert ("of which clustering ms" in buf.getvalue()) == (method == "atc")
    assert 0 < shares["atc"] < 1 and shares["tome"] == 0.0
