"""Token merging: the shared merge / unmerge / sizes / proportional attention, ToMe's matching,
ATC's clustering, ``method: tome | atc`` on both backbones and the ``merge`` fate of the learned
selectors (tiny CPU models)."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Block

from prunebench.axes import impossible
from prunebench.models import PrunedViT, PrunedViTAdapter
from prunebench.models.methods.clustering import agglomerative, bipartite_matching
from prunebench.models.methods.merging import Clusters, block_sized, mean_keys
from prunebench.models.methods.token_merging import stage_ratios
from prunebench.presets import PRESETS, backbone_args

DIM, HEADS = 96, 3
PLAIN = dict(embed_dim=DIM, depth=12, num_heads=HEADS, out_channels=32)
ADAPTER = dict(embed_dim=DIM, depth=12, num_heads=HEADS, deform_num_heads=HEADS)
FAMILIES = {"plain": (PrunedViT, PLAIN), "adapter": (PrunedViTAdapter, ADAPTER)}
H, W = 128, 160
N = (H // 16) * (W // 16)  # 80 tokens
FATE = dict(prune_layers=[3, 6, 9], keep_ratios=[0.7, 0.49, 0.343], pruned_tokens="merge", reactivation=False)


def make(family: str, seed: int = 0, **kw):
    cls, dims = FAMILIES[family]
    torch.manual_seed(seed)
    return cls(**dims, **kw)


def merging(name: str, family: str = "plain", **kw):
    return make(family, **{**backbone_args(name, {}), **kw})


def decisive(model):
    """Selectors with random weights: they keep some tokens of each image and prune others."""
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.selectors.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model


def image(b=2, seed=1):
    return torch.randn(b, 3, H, W, generator=torch.Generator().manual_seed(seed))


def metric(b, t, seed=0):
    return mean_keys(torch.randn(b, 2, t, 8, generator=torch.Generator().manual_seed(seed)))


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])).all())


# ---------------------------------------------------------------- the shared merge module


@pytest.mark.parametrize("algorithm", ["tome", "atc"])
def test_merge_then_unmerge_of_a_constant_map_is_the_identity_and_sizes_sum_to_n(algorithm):
    B, T, D = 2, 30, 8
    x = torch.randn(B, 1, D).expand(B, T, D)
    clusters = Clusters.identity(x)
    for width in (21, 14, 9):
        m = metric(B, clusters.width, seed=width)
        step, new = (
            bipartite_matching(m, clusters.width - width) if algorithm == "tome" else agglomerative(m, width)
        )
        rows, clusters = clusters.merge(clusters.remerge(x), step, new)
        assert clusters.width == width == rows.shape[1]
        assert torch.equal(clusters.size.sum(dim=1), torch.full((B,), float(T)))
        torch.testing.assert_close(clusters.unmerge(rows), x)
        assert torch.equal(clusters.representatives().sum(dim=1), torch.full((B,), width))


def test_a_merged_token_is_the_size_weighted_mean_and_unmerge_copies_it_back():
    x = torch.tensor([[[1.0], [2.0], [4.0], [8.0]]])
    clusters = Clusters(torch.arange(4)[None], torch.tensor([[1.0, 3.0, 2.0, 2.0]]))
    rows, merged = clusters.merge(x, torch.tensor([[0, 0, 1, 1]]), 2)
    torch.testing.assert_close(rows, torch.tensor([[[7.0 / 4], [6.0]]]))
    assert merged.size.tolist() == [[4.0, 4.0]]
    torch.testing.assert_close(merged.unmerge(rows), torch.tensor([[[1.75], [1.75], [6.0], [6.0]]]))
    # re-merge: the mean over each merged token's original positions
    pairs = Clusters.identity(x).merge(x, torch.tensor([[0, 1, 1, 1]]), 2)[1]
    torch.testing.assert_close(
        pairs.remerge(torch.tensor([[[1.0], [3.0], [5.0], [7.0]]])), torch.tensor([[[1.0], [5.0]]])
    )


def test_proportional_attention_equals_attention_over_duplicated_tokens():
    torch.manual_seed(0)
    blk = Block(16, 2, qkv_bias=True).eval()
    x, size = torch.randn(2, 5, 16), torch.tensor([[1.0, 3.0, 2.0, 1.0, 4.0], [2.0, 1.0, 1.0, 5.0, 2.0]])
    out = block_sized(blk, x, Clusters(torch.zeros(2, 1, dtype=torch.long), size).bias(x.dtype))
    for b in range(2):
        copies = torch.repeat_interleave(torch.arange(5), size[b].long())
        torch.testing.assert_close(out[b : b + 1, copies], blk(x[b : b + 1, copies]))
    assert not torch.allclose(out, blk(x), atol=1e-3)  # the sizes matter


def test_tome_merges_the_best_matched_half_and_orders_as_tome():
    # tokens 0..5: A = 0, 2, 4; B = 1, 3, 5. 0 ~ 3 (best), 2 ~ 1, 4 ~ 5 (worst)
    v = torch.eye(4)
    m = torch.stack([v[0], v[1], v[1] * 0.9 + v[2] * 0.1, v[0], v[3] * 0.5 + v[2], v[3]])[None]
    step, width = bipartite_matching(m / m.norm(dim=-1, keepdim=True), 2)
    # unmerged A token (4) first, then B tokens 1, 3, 5; 0 -> 3's row, 2 -> 1's row
    assert width == 4 and step.tolist() == [[2, 1, 1, 2, 0, 3]]
    assert bipartite_matching(m, 5)[1] == 3  # r capped at half the tokens


@pytest.mark.parametrize("linkage", ["average", "complete", "single"])
def test_agglomerative_clustering_gives_scikit_learns_partition(linkage):
    sklearn = pytest.importorskip("sklearn.cluster")
    m = metric(2, 60)
    labels, width = agglomerative(m, 17, linkage)
    assert width == 17 and labels.max() == 16
    for b in range(2):
        dist = (1 - m[b] @ m[b].T).numpy()
        ref = sklearn.AgglomerativeClustering(17, metric="precomputed", linkage=linkage).fit(dist).labels_
        assert same_partition(labels[b], torch.from_numpy(ref))


def test_stage_ratios_reduce_by_the_stage_share_without_float_noise():
    assert stage_ratios([0.7, 0.49, 0.343]) == [0.7, 0.7, 0.7]
    assert int(stage_ratios([0.7, 0.49])[1] * 70) == 49  # 0.49 / 0.7 * 70 is 48.99999...


# ---------------------------------------------------------------- tome and atc as a method


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["tome", "atc"])
def test_merging_methods_reduce_at_their_blocks_and_unmerge_the_output(name, family):
    model = merging(name, family).eval()
    widths = {}
    for i, blk in enumerate(model.blocks):
        blk.mlp.register_forward_pre_hook(lambda _, a, i=i: widths.setdefault(i, a[0].shape[1]) and None)
    with torch.no_grad():
        outs = model(image())
    counts = [N]
    for _ in range(3):
        counts.append(int(0.7 * counts[-1]))  # 80 -> 56 -> 39 -> 27
    assert [widths[i] for i in (2, 3, 5, 6, 9, 11)] == [
        N,
        counts[1],
        counts[1],
        counts[2],
        counts[3],
        counts[3],
    ]
    assert [int(m.sum(1)[0]) for m in model.last_keep_masks] == counts[1:]
    assert model.last_tokens.shape == (2, N, DIM)
    assert all(o.shape[0] == 2 and torch.isfinite(o).all() for o in outs)
    # the final map is unmerged: positions of one cluster share a value
    assign = model.clusters.assign[0]
    members = (assign == assign[0]).nonzero().squeeze(1)
    assert len(members) > 1 and torch.equal(
        model.last_tokens[0, members], model.last_tokens[0, members[:1]].expand(len(members), -1)
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_merging_adds_no_parameters_and_trains_through_merge_and_unmerge(family):
    dense, tome = make(family), merging("tome", family)
    assert tome.state_dict().keys() == dense.state_dict().keys()
    tome.load_state_dict(dense.state_dict())  # a dense checkpoint loads as it is
    tome.train()
    sum(o.float().pow(2).mean() for o in tome(image())).backward()
    for i in (3, 9, 11):  # after the first merge too
        assert tome.blocks[i].mlp.fc1.weight.grad.abs().sum() > 0


def test_proportional_attention_is_a_backbone_key():
    x = image(1)
    with torch.no_grad():
        on, off = (merging("atc", proportional_attention=p).eval()(x)[2] for p in (True, False))
    assert not torch.allclose(on, off)


def test_merging_presets_need_no_learned_selector():
    for name in ("tome", "atc"):
        p = PRESETS[name]
        assert p.off_the_shelf and p.axes["pruned_tokens"] == "merge" and not p.axes["reactivation"]
        assert "selector" not in backbone_args(name, {})


# ---------------------------------------------------------------- the merge fate


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rate,selector", [("fixed", "mlp"), ("dynamic", "gating")])
def test_merge_fate_gathered_inference_equals_the_masked_forward(family, rate, selector):
    model = decisive(make(family, **FATE, rate=rate, selector=selector)).eval()
    x = image(2)
    with torch.no_grad():
        sparse = model(x)
        masks = [m.clone() for m in model.last_keep_masks]
        model.masked_eval = True
        masked = model(x)
    assert [torch.equal(a, b) for a, b in zip(masks, model.last_keep_masks)] == [True] * 3
    assert 0 < masks[-1].float().mean() < 1
    for a, b in zip(sparse, masked):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    # pruned tokens reach the final map with their host's value, not their own or zero
    assign = model.clusters.assign[0]
    host = assign[~masks[-1][0]][0]
    assert masks[-1][0, host]
    assert torch.equal(model.last_tokens[0, assign == host][0], model.last_tokens[0, host])


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_fate_gradients_reach_the_selectors_through_the_merge(family):
    model = decisive(make(family, **FATE)).train()
    sum(o.float().pow(2).mean() for o in model(image(2))).backward()  # no keep-ratio loss
    for sel in model.selectors:
        assert sum(p.grad.abs().sum() for p in sel.parameters() if p.grad is not None) > 0


def test_merge_fate_with_reactivation_is_rejected_naming_both_keys():
    assert "merge + reactivation" in impossible(dict(pruned_tokens="merge", reactivation=True))
    with pytest.raises(ValueError, match="pruned_tokens=merge needs reactivation=false"):
        make("plain", **{**FATE, "reactivation": True, "keep_ratios": [0.7, 0.49, 0.343]})
    with pytest.raises(ValueError, match="needs pruned_tokens in"):
        make("plain", method="evit", **FATE)


# ---------------------------------------------------------------- keep maps and FLOPs


def test_keep_maps_colour_each_merged_token(tmp_path):
    mmcv = pytest.importorskip("mmcv")
    import numpy as np

    from prunebench.viz import cluster_colours, make_keep_maps

    config = tmp_path / "c.py"
    config.write_text(
        "model = dict(type='PrunedViT', embed_dim=96, depth=12, num_heads=3, out_channels=32, method='atc', "
        "pruned_tokens='merge', prune_layers=[3, 6, 9], keep_ratios=[0.7, 0.49, 0.343])\n"
    )
    image = tmp_path / "img.png"
    mmcv.imwrite(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8), str(image))
    result = make_keep_maps(config, image, tmp_path / "maps.png")
    assert result["keep"] == pytest.approx([56 / N, 39 / N, 27 / N])
    assert (tmp_path / "maps.png").read_bytes()[:4] == b"\x89PNG"
    colours = cluster_colours(torch.tensor([2, 0, 2, 1]))
    assert (colours[0] == colours[2]).all() and (colours[0] != colours[1]).any()


def test_clusters_are_recorded_per_layer_for_merging_only():
    x = image(1)
    with torch.no_grad():
        atc = merging("atc").eval()
        atc(x)
        fate = decisive(make("plain", **FATE)).eval()
        fate(x)
        svit = make("plain", prune_layers=[3, 6, 9], keep_ratios=[0.7, 0.49, 0.343]).eval()
        svit(x)
    assert [int(a.max()) + 1 for a in atc.last_clusters] == [56, 39, 27]
    for mask, assign in zip(fate.last_keep_masks, fate.last_clusters):
        assert torch.equal(mask.gather(1, assign), torch.ones_like(mask))  # every token's host is kept
    assert svit.last_clusters == [None] * 3


def test_flop_analysis_counts_the_reduced_blocks_and_atcs_clustering():
    pytest.importorskip("mmengine.analysis")
    from mmengine.analysis import FlopAnalyzer

    from prunebench.bench.trace import OP_HANDLES
    from prunebench.models.methods.clustering import clustering_flops

    x = image(1)
    flops = {}
    for name in ("dense", "tome", "atc"):
        model = (make("plain") if name == "dense" else merging(name)).eval()
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, (x,)).set_op_handle(**OP_HANDLES)
            analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            flops[name] = analyzer.by_operator()
    clustering = flops["atc"].get("PythonOp.AgglomerativeClustering", 0)
    assert clustering == sum(clustering_flops(1, t) for t in (80, 56, 39)) == 3160 + 1540 + 741
    # the blocks' linear layers count only the reduced tokens: a merging block's qkv and proj run
    # on the tokens before its merge (4 D^2 per token), its MLP on those after (8 D^2)
    attn = [N] * 4 + [56] * 3 + [39] * 3 + [27] * 2
    mlp = [N] * 3 + [56] * 3 + [39] * 3 + [27] * 3
    saved = 4 * DIM * DIM * (12 * N - sum(attn)) + 8 * DIM * DIM * (12 * N - sum(mlp))
    assert flops["dense"]["linear"] - flops["tome"]["linear"] == saved
    assert flops["tome"]["linear"] == flops["atc"]["linear"]
