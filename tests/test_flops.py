"""FLOPs per image over an image set (prunebench.bench.flops): the exact decomposition against a
direct trace of the same image with the same decisions, on tiny CPU detectors."""

import contextlib
import copy

import pytest
import torch

from prunebench.bench import FlopsRecorder, build_detector, synthetic_data, traced_gflops
from prunebench.bench.flops import BlockCost, flops_summary
from prunebench.bench.trace import TensorForward
from prunebench.configs import TEMPLATE_DIR

CPU_CFG = str(TEMPLATE_DIR / "mask_rcnn_vit_cpu.py")  # embed_dim 96, depth 4, 3 heads
PRUNE = dict(prune_layers=[1, 2, 3], keep_ratios=[0.7, 0.5, 0.3])


def tiny(**kw):
    torch.manual_seed(0)
    return build_detector("deit-tiny", CPU_CFG, **kw).eval()


def _direct(model, batch) -> tuple[float, float]:
    """Backbone and whole-detector GFLOPs of one image, traced directly."""
    data = model.data_preprocessor(copy.deepcopy(batch), False)
    img, samples = data["inputs"], data["data_samples"]
    return traced_gflops(model.backbone, img), traced_gflops(TensorForward(model, samples), img)


def _recorded(model, batches, full=True):
    with torch.no_grad(), FlopsRecorder(model, full=full) as rec:
        for batch in batches:
            model.test_step(batch)
    return rec


def test_block_cost_is_the_trace_of_each_half():
    """The fitted quadratics equal traces of a block at token counts far from the fit's samples;
    the two halves add up to the whole block."""
    from timm.models.vision_transformer import Block

    blk = Block(96, 3, qkv_bias=True).eval()
    cost = BlockCost(blk)
    for n in (1, 37, 300):
        whole = traced_gflops(blk, torch.zeros(1, n, 96))
        assert cost(0, n) + cost(1, n) == pytest.approx(whole, rel=1e-9)
    # attention grows with n^2, the MLP linearly
    assert cost(0, 600) - 2 * cost(0, 300) > 0 and cost(1, 600) == pytest.approx(2 * cost(1, 300), rel=1e-9)


@pytest.mark.parametrize(
    "kw",
    [dict(PRUNE, pruned_tokens="discard"), dict(PRUNE, rate="dynamic"), dict(PRUNE, method="evit")],
    ids=["fixed-discard", "dynamic", "evit"],
)
def test_recorded_flops_equal_a_direct_trace(kw):
    """Each image's decomposed GFLOPs (token-independent parts traced on the first image of its
    size, blocks at its own counts) equal a direct trace of that image within 1 %: the second
    image of a size (other decisions than the traced one) and an image of another size."""
    model = tiny(**kw)
    batches = [synthetic_data((64, 96), seed=s) for s in (0, 1)] + [synthetic_data((100, 70), seed=5)]
    rec = _recorded(model, batches)
    assert len(rec.images) == 3 and sorted(rec.fixed) == [(64, 96), (128, 96)]
    for batch, got in list(zip(batches, rec.images))[1:]:
        backbone, full = _direct(model, batch)
        assert got["backbone"] == pytest.approx(backbone, rel=0.01)
        assert got["full"] == pytest.approx(full, rel=0.01)
    cls = "method" in kw  # EViT runs a class token through every block
    tokens = rec.images[0]["tokens"]
    assert len(tokens) == 4 and tokens[0] == [24 + cls, 24 + cls]
    if cls:  # the pruning block's attention sees the tokens before, its MLP those it keeps (+ fused)
        assert tokens[1] == [24 + 1, 17 + 2]
    assert not model._forward_pre_hooks and not model.backbone.blocks[0].norm1._forward_pre_hooks


def test_dynamic_rate_counts_per_image_in_a_batch():
    """Dynamic rate, batch 3 (per-image loop): each image gets its own counts, as its keep masks."""
    model = tiny(**PRUNE, rate="dynamic")
    imgs = model.data_preprocessor(synthetic_data((64, 96), batch=3), False)["inputs"]
    with torch.no_grad(), FlopsRecorder(model, full=False) as rec:
        model.backbone(imgs)
        masks = model.backbone.last_keep_masks
        model.backbone(imgs[:1])
    counts = [[float(m[b].sum()) for m in masks] for b in range(3)]
    assert len({tuple(c) for c in counts}) > 1  # the images keep different counts
    for b, got in enumerate(rec.images[:3]):
        assert [t[0] for t in got["tokens"][1:]] == counts[b]
    assert rec.images[3]["blocks"] == pytest.approx(rec.images[0]["blocks"], rel=1e-9)  # alone, the same


def test_backbone_only_and_summary():
    model = tiny(**PRUNE, rate="dynamic")
    with torch.no_grad(), FlopsRecorder(model, full=False) as rec:
        for s in range(5):
            data = model.data_preprocessor(synthetic_data((64, 96), seed=s), False)
            model.backbone(data["inputs"])
    assert all(r["full"] is None for r in rec.images) and len(rec.images) == 5
    out = rec.summary("timed")
    values = sorted(r["backbone"] for r in rec.images)
    assert out["backbone"] == pytest.approx(sum(values) / 5) and out["full"] is None
    assert values[0] <= out["p10"]["backbone"] <= out["p90"]["backbone"] <= values[-1]
    assert (out["images"], out["sizes"], out["source"]) == (5, 1, "timed")
    assert out["p10"]["full"] is None and out["vit_blocks"] < out["backbone"]
    one = flops_summary([{"backbone": 2.0, "full": 3.0, "blocks": 1.0}], "val", 1)
    assert one["p10"] == one["p90"] == {"backbone": 2.0, "full": 3.0, "vit_blocks": 1.0}


def test_traces_leave_the_evaluation_as_it_was():
    """The per-size traces run inside the evaluation: they count as no evaluated image for the
    keep ratio, and sampled (Gumbel) decisions stay those of an evaluation without them."""
    from prunebench.metrics import keep_ratio_recorder

    model = tiny(**PRUNE, rate="dynamic", selector_inference="gumbel")
    imgs = [model.data_preprocessor(synthetic_data(hw), False)["inputs"] for hw in ((64, 96), (96, 64))]

    def masks(record: bool):
        torch.manual_seed(0)
        keep = keep_ratio_recorder(model.backbone)
        out = []
        with torch.no_grad(), FlopsRecorder(model, full=False) if record else contextlib.nullcontext():
            for img in imgs:
                model.backbone(img)
                out.append([m.clone() for m in model.backbone.last_keep_masks])
        return out, keep()

    (plain, plain_keep), (recorded, recorded_keep) = masks(False), masks(True)
    assert recorded_keep["images"] == 2 and recorded_keep == plain_keep
    assert all(torch.equal(a, b) for pa, pb in zip(plain, recorded) for a, b in zip(pa, pb))


def test_a_backbone_without_vit_blocks_is_traced_whole():
    model = torch.nn.Module()
    model.backbone = torch.nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad(), FlopsRecorder(model, full=False) as rec:
        for _ in range(2):
            model.backbone(torch.zeros(1, 3, 32, 64))
    out = rec.summary("timed")
    assert out["backbone"] == pytest.approx(32 * 64 * 8 * 3 * 9 / 1e9) and out["images"] == 2
    assert rec.images[0]["tokens"] == [] and out["vit_blocks"] == 0.0
