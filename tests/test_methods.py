"""The method presets at the model level: EViT, Evo-ViT, ATS mechanisms, their class token, the
DynamicViT presets, plug-in selectors and DynamicViT's distillation (tiny CPU models)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from prunebench.models import SELECTORS, PrunedViT, PrunedViTAdapter, pruned_backbone
from prunebench.models.methods.ats import sample_tokens
from prunebench.models.methods.tokens import attend, feed_forward
from prunebench.models.selectors import PluginSelector, num_kept
from prunebench.presets import PRESETS, preset

DIM, HEADS = 96, 3
PLAIN = dict(embed_dim=DIM, depth=12, num_heads=HEADS, out_channels=32)
ADAPTER = dict(
    embed_dim=DIM,
    depth=12,
    num_heads=HEADS,
    deform_num_heads=HEADS,
    interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
)
FAMILIES = {"plain": (PrunedViT, PLAIN), "adapter": (PrunedViTAdapter, ADAPTER)}
H, W = 64, 96
N = (H // 16) * (W // 16)  # 24 tokens


def backbone_args(name: str) -> dict:
    """Backbone arguments of preset ``name`` (its axes and its backbone settings)."""
    p = preset(name)
    axes = {k: v for k, v in p.axes.items() if k != "selector" or v in ("mlp", "gating")}
    return {"prune_layers": [3, 6, 9], "keep_ratios": [0.7, 0.49, 0.343], **axes, **p.backbone}


def make(name: str, family: str = "plain", seed: int = 0, **kw):
    cls, dims = FAMILIES[family]
    torch.manual_seed(seed)
    return cls(**dims, **{**backbone_args(name), **kw})


def image(b=2, seed=1, scale=None):
    x = torch.randn(b, 3, H, W, generator=torch.Generator().manual_seed(seed))
    return x if scale is None else x * torch.tensor(scale).view(-1, 1, 1, 1)


def sharpen(model, factor=8.0):
    """Scale every block's qkv weights: peaky attention, so attention-based choices differ per image."""
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(factor)


def mlp_widths(model):
    """Per forward: the sequence length each block's MLP processes, as a list per block (batch rows)."""
    seen = {}
    for i, blk in enumerate(model.blocks):
        blk.mlp.register_forward_pre_hook(
            lambda m, args, i=i: seen.setdefault(i, []).append(args[0].shape[1])
        )
    return seen


# --- the block in two halves ------------------------------------------------------------------


def test_attention_and_mlp_halves_equal_the_block_and_give_class_attention():
    torch.manual_seed(0)
    blk = Block(DIM, HEADS, 4.0, qkv_bias=True).eval()
    x = torch.randn(2, 9, DIM)
    keys = torch.ones(2, 9, dtype=torch.bool)
    keys[1, 4:] = False
    torch.set_grad_enabled(False)
    for mask in (None, keys):
        a, cls_attn, v_norm = attend(blk, x, mask)
        ref = blk(x) if mask is None else blk(x, attn_mask=mask[:, None, None])
        torch.testing.assert_close(feed_forward(blk, a), ref)
        qkv = blk.attn.qkv(blk.norm1(x)).reshape(2, 9, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        logits = qkv[0][:, :, 0:1] @ qkv[1].transpose(-2, -1) * blk.attn.scale
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, None], float("-inf"))
        torch.testing.assert_close(cls_attn, logits.softmax(-1).squeeze(2))
        torch.testing.assert_close(v_norm, qkv[2].transpose(1, 2).reshape(2, 9, DIM).norm(dim=-1))
    torch.set_grad_enabled(True)
    assert float(cls_attn[1, :, 4:].abs().sum()) == 0.0  # masked keys get no attention


# --- tokens each block processes, per preset ------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", ["evit", "evo-vit", "dynamicvit", "dynamicvit-preserve"])
def test_tokens_each_block_processes(name, family, train):
    m = make(name, family).train(train)
    widths = mlp_widths(m)
    with torch.set_grad_enabled(train):
        m(image(b=1))
    p = preset(name)
    layers, ratios = p.backbone["prune_layers"], p.backbone["keep_ratios"]
    expected, counts, width = [], [], N
    for i in range(12):
        stage = [j for j, b in enumerate(layers) if b <= i]
        if name == "evit":  # ceil(0.7 W) of the W rows (fused tokens counted), plus a new fused one
            if i in layers:
                counts.append(num_kept(0.7, width, "ceil"))
                width = counts[-1] + 1
            expected.append(1 + width)
        elif name == "evo-vit":  # class token + int(N/2) informative + the representative
            k = num_kept(ratios[stage[-1]], N, "floor") if stage else N
            expected.append(1 + k + (1 if stage else 0))
            counts += [k] if i in layers else []
        else:  # DynamicViT: int(r N); in training every token stays in the sequence
            k = num_kept(ratios[stage[-1]], N, "floor") if stage else N
            expected.append(N if train else k)
            counts += [k] if i in layers else []
    assert [widths[i][0] for i in range(12)] == expected
    kept = [int(k.sum()) for k in m.last_keep_masks]
    if name == "evit":  # a kept fused token holds one of the slots
        assert all(c - j <= n <= c for j, (n, c) in enumerate(zip(kept, counts)))
    elif not (train and p.backbone["method"] == "selector"):  # Gumbel decisions vary in training
        assert kept == counts


@pytest.mark.parametrize("family", FAMILIES)
def test_ats_count_varies_per_image_within_its_budget(family):
    m = make("ats-budget", family).eval()
    sharpen(m)
    with torch.no_grad():
        m(image(b=4, scale=[0.2, 1.0, 3.0, 6.0]))
    counts = torch.stack([k.sum(dim=1) for k in m.last_keep_masks])  # (layers, B)
    budgets = torch.tensor([num_kept(r, N) for r in (0.7, 0.49, 0.343)])
    assert (counts <= budgets[:, None]).all()
    assert (counts >= 1).all()
    assert len({tuple(c) for c in counts.T.tolist()}) > 1, "every image kept the same counts"
    nested = all(bool((b <= a).all()) for a, b in zip(m.last_keep_masks, m.last_keep_masks[1:]))
    assert nested


def test_ats_batch_equals_each_image_alone():
    """Images with different counts padded into one batch give each image's own result."""
    m = make("ats").eval()
    sharpen(m)
    x = image(b=3, scale=[0.3, 2.0, 6.0])
    with torch.no_grad():
        batch = m(x)
        masks = [k.clone() for k in m.last_keep_masks]
        for b in range(3):
            alone = m(x[b : b + 1])
            for o, ob in zip(batch, alone):
                torch.testing.assert_close(o[b : b + 1], ob, atol=1e-5, rtol=1e-4)
            assert all(torch.equal(k[b : b + 1], ka) for k, ka in zip(masks, m.last_keep_masks))
    widths = mlp_widths(m)
    with torch.no_grad():
        m(x[2:3])
    assert widths[3][0] == 1 + int(m.last_keep_masks[0].sum())  # batch 1: no padding


def test_ats_sampling_picks_significant_tokens_once_and_respects_padding():
    sig = torch.tensor([[0.01, 0.01, 0.9, 0.01, 0.05, 0.02], [0.1, 0.2, 0.3, 0.2, 0.1, 0.1]])
    valid = torch.tensor([[True] * 6, [True, True, True, True, False, False]])
    chosen = sample_tokens(sig, valid, budget=4)
    assert chosen[0, 2] and int(chosen[0].sum()) < 4  # the dominant token covers several levels
    assert not chosen[1, 4:].any() and int(chosen[1].sum()) <= 4
    assert int(sample_tokens(sig, None, budget=1)[0].sum()) == 1 and sample_tokens(sig, None, 1)[0, 2]


# --- EViT's fused token ------------------------------------------------------------------------


def test_evit_fused_token_is_the_attention_weighted_mean_of_the_tokens_it_replaces():
    m = make("evit").eval()
    sharpen(m, 3.0)
    seen = {}
    for i in (3, 6):
        m.blocks[i].norm1.register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(("in", i), a[0]))
        m.blocks[i].norm2.register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(("mlp", i), a[0]))
    with torch.no_grad():
        m(image(b=2))
    for i in (3, 6):  # at block 6 the previous fused token is one of the rows that compete
        seq, mlp_in = seen[("in", i)], seen[("mlp", i)]
        a, cls_attn, _ = attend(m.blocks[i], seq)
        score = cls_attn.mean(dim=1)[:, 1:]
        width = seq.shape[1] - 1
        k = num_kept(0.7, width, "ceil")
        top = score.topk(k, dim=1).indices
        pruned = torch.ones(2, width, dtype=torch.bool).scatter(1, top, False)
        for b in range(2):
            rows, w = a[b, 1:][pruned[b]], score[b][pruned[b]]
            expected = (w[:, None] * rows).sum(0) / w.sum()
            torch.testing.assert_close(mlp_in[b, -1], expected, atol=1e-5, rtol=1e-5)
        assert mlp_in.shape[1] == 1 + k + 1


# --- Evo-ViT's placeholders ----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_evo_vit_placeholders_change_only_through_the_fast_path(family):
    m = make("evo-vit", family).eval()
    sharpen(m, 3.0)
    i = 6
    seen = {}
    m.blocks[i].norm1.register_forward_pre_hook(lambda mod, a: seen.__setitem__("seq", a[0]))
    run_block = m.run_block

    def spy(j, x):
        scores = m.mechanism.scores
        out = run_block(j, x)
        if j == i:
            seen["before"], seen["after"], seen["keep"], seen["scores"] = x, out, m.keep, scores
        return out

    m.run_block = spy
    with torch.no_grad():
        m(image(b=2))
    seq, before, after, keep = seen["seq"], seen["before"], seen["after"], seen["keep"]
    ref = m.blocks[i](seq)  # timm's own block on [class token, informative tokens, representative]
    delta = ref[:, -1] - seq[:, -1]  # the representative token's update
    assert float(delta.detach().abs().max()) > 1e-4
    for b in range(2):
        ph = ~keep[b]
        assert 0 < int(ph.sum()) < N
        torch.testing.assert_close(after[b, ph], before[b, ph] + delta[b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(after[b, keep[b]], ref[b, 1:-1], atol=1e-5, rtol=1e-5)
        w = seen["scores"][b, ph]  # the representative: placeholders' mean weighted by global attention
        rep = (w[:, None] * before[b, ph]).sum(0) / w.sum()
        torch.testing.assert_close(seq[b, -1], rep, atol=1e-5, rtol=1e-5)
    assert int(keep.sum(dim=1)[0]) == num_kept(0.5, N)


def test_evo_vit_ranks_by_momentum_class_attention_and_lets_placeholders_return():
    m = make("evo-vit").eval()
    sharpen(m)
    with torch.no_grad():
        m(image(b=2, seed=3))
    masks = m.last_keep_masks
    assert all(int(k.sum(dim=1).max()) == num_kept(0.5, N) for k in masks)
    returned = any(bool((b & ~a).any()) for a, b in zip(masks, masks[1:]))
    assert returned, "a placeholder never became informative again"
    assert m.mechanism.scores.shape == (2, N)


# --- the class token -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["evit", "evo-vit", "ats"])
def test_class_token_is_trained_and_does_not_reach_the_feature_map(name, family):
    m = make(name, family).train()
    optim = torch.optim.SGD(m.parameters(), lr=1.0)
    before = m.mechanism.cls_token.detach().clone()
    outs = m(image())
    sum((o * torch.randn_like(o)).mean() for o in outs).backward()
    grad = m.mechanism.cls_token.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    optim.step()
    assert not torch.equal(m.mechanism.cls_token.detach(), before)
    # a huge class token would show in any map position it reached; it only joins the attention
    with torch.no_grad():
        m.mechanism.cls_token.fill_(1e4)
        m.eval()
        m(image())
    assert m.last_tokens.shape == (2, N, DIM)
    assert float(m.mechanism._cls.abs().max()) > 1e3
    assert float(m.last_tokens.abs().max()) < 1e2


def test_a_dense_checkpoint_loads_into_a_class_token_method(monkeypatch):
    logged = []
    monkeypatch.setattr(pruned_backbone, "print_log", lambda msg, **kw: logged.append(msg))
    dense = PrunedViT(**PLAIN)
    m = make("evit")
    m.load_state_dict(dense.state_dict(), strict=True)
    assert set(m.state_dict()) - set(dense.state_dict()) == {"mechanism.cls_token"}
    assert len(logged) == 1 and "mechanism" in logged[0]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(method="no-such-method"), "unknown method"),
        (dict(method="evo-vit", pruned_tokens="discard", reactivation=False), "needs pruned_tokens"),
        (dict(method="evo-vit", prune_layers=[0, 6], keep_ratios=[0.5, 0.5]), "start at block 1"),
    ],
)
def test_invalid_method_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make("evo-vit", **kw)


def test_every_preset_builds_on_both_backbones_and_runs():
    for name in PRESETS:
        for family in FAMILIES:
            m = make(name, family).eval()
            with torch.no_grad():
                outs = m(image(b=1))
            assert len(outs) == 4 and all(torch.isfinite(o).all() for o in outs), (name, family)


# --- plug-in selectors -------------------------------------------------------------------------------


@SELECTORS.register_module("test-norm-score")
class NormScore(nn.Module):
    """A plug-in: keep logit from one linear map of the token, prune logit 0."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x, available=None):
        s = self.score(x)
        return torch.cat([s, torch.zeros_like(s)], dim=-1)


@pytest.mark.parametrize("init", ["official", "target", "calibrated"])
def test_a_registered_plain_module_is_a_selector_value(init):
    torch.manual_seed(0)
    m = PrunedViT(**PLAIN, prune_layers=[3, 6], keep_ratios=[0.7, 0.5], selector="test-norm-score")
    m.selector_init = init
    for sel, share in zip(m.selectors, m.initial_keep_shares()):
        sel.reset(init, share)
    assert all(isinstance(s, PluginSelector) and isinstance(s.inner, NormScore) for s in m.selectors)
    m.train()
    outs = m(image())
    (sum(o.mean() for o in outs) + m.keep_ratio_loss()).backward()
    assert float(m.selectors[0].inner.score.weight.grad.abs().sum()) > 0
    m.eval()
    with torch.no_grad():
        m(image())
    assert [int(k.sum(dim=1)[0]) for k in m.last_keep_masks] == [num_kept(0.7, N), num_kept(0.5, N)]


def test_an_unknown_selector_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown selector 'nope'.*'mlp', 'gating'.*'test-norm-score'"):
        PrunedViT(**PLAIN, prune_layers=[3], keep_ratios=[0.5], selector="nope")


# --- DynamicViT's distillation -------------------------------------------------------------------


def det_model(**model_kw):
    from mmdet.registry import MODELS
    from mmengine.config import Config

    from prunebench.configs import TEMPLATE_DIR

    cfg = Config.fromfile(str(TEMPLATE_DIR / "mask_rcnn_vit_cpu.py"))
    cfg.model.backbone.update(depth=12)
    cfg.model.update(model_kw)
    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def test_dynamicvit_distills_from_the_dense_parent(tmp_path):
    from mmengine.optim import OptimWrapper

    from test_models import det_batch

    dense = det_model()
    dense.init_weights()
    torch.save({"state_dict": dense.state_dict(), "meta": {}}, tmp_path / "dense.pth")
    args = backbone_args("dynamicvit")
    teacher_cfg = dict(teacher=str(tmp_path / "dense.pth"))
    student = det_model(backbone=dict(**args), keep_ratio_loss_weight=2.0, distill=teacher_cfg)
    student.load_state_dict(dense.state_dict(), strict=True)
    assert not any("teacher" in k for k in student.state_dict())
    before = {k: v.clone() for k, v in student.backbone.state_dict().items()}

    student.train()
    optim = OptimWrapper(torch.optim.SGD(student.parameters(), lr=0.01))
    log_vars = student.train_step(det_batch(with_gt=True), optim)
    for key in ("loss_distill_token", "loss_distill_maps", "loss_keep_ratio"):
        value = float(torch.as_tensor(log_vars[key]).detach())
        assert value > 0 and value < float("inf"), key
    teacher = student.distiller.teacher(torch.device("cpu"))
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    for k, v in dense.backbone.state_dict().items():
        assert torch.equal(teacher.state_dict()[k], v), k
    assert teacher.prune_layers == [] and not any(
        p is q for p in teacher.parameters() for q in student.parameters()
    )
    assert any(not torch.equal(v, before[k]) for k, v in student.backbone.state_dict().items())

    # the token term compares the kept tokens only, the maps term every output map
    student.eval()
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = student.backbone(img)
        losses = student.distiller.losses(student.backbone, maps, img)
        kept = student.backbone.keep
        t_maps = teacher(img)
        err = (student.backbone.last_tokens - teacher.last_tokens).pow(2).mean(-1)[kept].mean()
    torch.testing.assert_close(losses["loss_distill_token"], 0.5 * err)
    maps_err = torch.stack([torch.nn.functional.mse_loss(s, t) for s, t in zip(maps, t_maps)]).mean()
    torch.testing.assert_close(losses["loss_distill_maps"], 0.5 * maps_err)
    assert 0 < int(kept.sum()) < kept.numel()

    same = det_model(backbone=dict(args, keep_ratios=[1.0, 1.0, 1.0]), distill=teacher_cfg).eval()
    same.load_state_dict(dense.state_dict(), strict=True)
    with torch.no_grad():
        zero = same.distiller.losses(same.backbone, same.backbone(img), img)
    assert float(zero["loss_distill_token"]) < 1e-10 and float(zero["loss_distill_maps"]) < 1e-10
