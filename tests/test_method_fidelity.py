"""The prior methods as their authors' code runs them: DynamicViT's attention masking, rounding,
predictor and protocol; ATS's schedule and sampling; EViT's fused tokens; Evo-ViT's momentum; the
optimizer's weight-decay groups (tiny CPU models)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from timm.models.vision_transformer import Block

from prunebench.models import GatingSelector, MlpSelector, pruned_backbone
from prunebench.models.blocks import gated_block
from prunebench.models.methods import evit as evit_module
from prunebench.models.methods import evo_vit as evo_module
from prunebench.models.methods.ats import sample_tokens
from prunebench.models.policy import policy_block
from prunebench.models.protocol import FrozenStartHook
from prunebench.models.selectors import num_kept
from prunebench.presets import preset
from test_methods import DIM, FAMILIES, HEADS, N, image, make, mlp_widths, sharpen

# --- DynamicViT: attention masking --------------------------------------------------------------


def dyvit_reference(blk: Block, x: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DynamicViT's block (``Attention.softmax_with_policy`` and ``Block.forward`` of its
    ``models/dyvit.py``), written out with the timm block's weights."""
    B, n, C = x.shape
    h = blk.norm1(x)
    qkv = blk.attn.qkv(h).reshape(B, n, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * blk.attn.scale
    attn_policy = policy.reshape(B, 1, 1, n)
    eye = torch.eye(n).view(1, 1, n, n)
    attn_policy = attn_policy + (1.0 - attn_policy) * eye
    attn = (attn - attn.max(dim=-1, keepdim=True)[0]).exp() * attn_policy
    attn = (attn + eps / n) / (attn.sum(dim=-1, keepdim=True) + eps)
    out = blk.attn.proj((attn @ v).transpose(1, 2).reshape(B, n, C))
    x = x + out
    return x + blk.mlp(blk.norm2(x))


def decisions(seed: int = 0):
    torch.manual_seed(seed)
    blk = Block(DIM, HEADS, 4.0, qkv_bias=True).eval()
    x = torch.randn(2, 10, DIM)
    hard = torch.ones(2, 10, dtype=torch.bool)
    hard[0, [1, 4, 7]] = False
    hard[1, [0, 2, 3, 9]] = False
    return blk, x, hard


def test_dynamicvit_masking_keeps_the_gated_outputs_of_kept_tokens():
    blk, x, hard = decisions()
    with torch.no_grad():
        policy = policy_block(blk, x, hard.float(), hard)
        gated = gated_block(blk, x, hard.float(), hard)
    torch.testing.assert_close(policy[hard], gated[hard], atol=1e-5, rtol=1e-5)
    assert torch.equal(policy[~hard], x[~hard])  # pruned tokens hold their value


def test_dynamicvit_masking_gradient_is_softmax_with_policys_and_not_the_gated_forms():
    blk, x, hard = decisions()
    w = torch.randn(2, 10, DIM, generator=torch.Generator().manual_seed(5))

    def grad(fn):
        d = hard.float().requires_grad_(True)
        out = fn(d)
        (out * w)[hard].sum().backward()  # the kept tokens' outputs
        return d.grad

    ours = grad(lambda d: policy_block(blk, x, d, hard))
    ref = grad(lambda d: dyvit_reference(blk, x, d))
    gated = grad(lambda d: gated_block(blk, x, d, hard))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert float(ours[~hard].abs().min()) > 0  # every pruned decision learns through the attention
    assert float(gated[~hard].abs().max()) == 0  # the gated form gives them nothing from kept outputs
    assert not torch.allclose(ours, gated, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["dynamicvit", "dynamicvit-preserve"])
def test_dynamicvit_presets_mask_every_block_after_the_first_pruning_layer(name, family, monkeypatch):
    calls = []

    def spy(blk, x, policy, hard):
        calls.append((policy.requires_grad, tuple(policy.shape)))
        return policy_block(blk, x, policy, hard)

    monkeypatch.setattr(pruned_backbone, "policy_block", spy)
    m = make(name, family).train()
    outs = m(image(b=2))
    assert len(calls) == 12 - 3 and all(g and s == (2, N) for g, s in calls)
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in m.selectors.parameters())
    m.eval()
    with torch.no_grad():
        m(image(b=2))
    floor = [math.floor(r * N) for r in (0.7, 0.49, 0.343)]  # int(r * N), as DynamicViT
    assert [int(k.sum(dim=1)[0]) for k in m.last_keep_masks] == floor
    assert len(calls) == 9  # the sparse path at inference


def test_dynamicvit_predictor_has_its_layer_norm_eps_and_init():
    torch.manual_seed(0)
    sel = GatingSelector(384)
    sel.reset("official", 0.5)
    assert sel.in_proj[0].eps == 1e-5
    linears = [m for m in sel.modules() if isinstance(m, torch.nn.Linear)]
    assert all(float(m.bias.detach().abs().max()) == 0 for m in linears)
    assert all(abs(float(m.weight.detach().std()) - 0.02) < 0.004 for m in linears if m.weight.numel() > 1000)
    mlp = MlpSelector(384)
    mlp.reset("official", 0.5)  # SViT's selector keeps PyTorch's default init
    assert float(mlp.fc1.bias.detach().abs().max()) > 0


def test_token_counts_round_as_each_methods_code():
    assert [num_kept(0.7, 24, r) for r in ("round", "floor", "ceil")] == [17, 16, 17]
    assert num_kept(0.49 / 0.7, 10, "ceil") == 7 and num_kept(0.49 / 0.7, 10, "floor") == 7
    with pytest.raises(ValueError, match="rounding"):
        num_kept(0.5, 10, "nearest")


# --- ATS ------------------------------------------------------------------------------------------


def ats_reference(significance: torch.Tensor, budget: int) -> set[int]:
    """ATS's inverse transform sampling (``inverse_transform_sampling``/``create_ys`` of its
    ``ats_block.py``), one image, written out with loops."""
    s = significance.tolist()
    order = sorted(range(len(s)), key=lambda i: s[i])
    cdf, total = [], 0.0
    for i in order:
        total += s[i]
        cdf.append(total)
    lo, hi = min(cdf), max(cdf)
    cdf = [(c - lo) / (hi - lo) for c in cdf]
    y0 = min(c for c in cdf if c > 0)
    levels = [y0 + (1 - y0) * t / (budget - 1) for t in range(budget)]
    picks = set()
    for y in levels:
        dist = [abs(y - c) for c in cdf]
        picks.add(order[dist.index(min(dist))])
    return picks


def test_ats_preset_is_atss_own_schedule_with_the_full_budget():
    p = preset("ats")
    assert p.backbone["prune_layers"] == list(range(3, 12)) and p.backbone["keep_ratios"] == [1.0] * 9
    m = make("ats")
    assert sorted(m.mechanism.layer_of_block) == list(range(3, 12))
    assert preset("ats-budget").backbone["keep_ratios"] == [0.7, 0.49, 0.343]


@pytest.mark.parametrize("budget", [16, 6])
def test_ats_picks_equal_inverse_transform_sampling(budget):
    sig = torch.rand(3, 16, generator=torch.Generator().manual_seed(2)) ** 4
    chosen = sample_tokens(sig, None, budget)
    for b in range(3):
        assert set(chosen[b].nonzero().flatten().tolist()) == ats_reference(sig[b], budget)


# --- EViT -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused_on_top", [True, False])
def test_evit_keeps_a_previous_fused_token_with_top_attention_and_appends_a_new_one(
    fused_on_top, monkeypatch
):
    real = evit_module.attend
    calls = []

    def attend(blk, seq, keys=None):
        a, cls_attn, v = real(blk, seq, keys)
        calls.append(seq.shape[1])
        if len(calls) == 2:  # the second pruning layer: its last row is the first fused token
            cls_attn = cls_attn.clone()
            cls_attn[:, :, -1] = 1.0 if fused_on_top else 0.0
        return a, cls_attn, v

    monkeypatch.setattr(evit_module, "attend", attend)
    m = make("evit").eval()
    widths = mlp_widths(m)
    with torch.no_grad():
        m(image(b=2))
    k1 = math.ceil(0.7 * N)  # EViT's ceil(keep_rate * (N - 1)) over the patch tokens
    k2 = math.ceil(0.7 * (k1 + 1))  # the fused token counts and competes
    k3 = math.ceil(0.7 * (k2 + 1))
    assert [widths[i][0] for i in (3, 6, 9)] == [1 + k1 + 1, 1 + k2 + 1, 1 + k3 + 1]
    kept = [int(k.sum(dim=1)[0]) for k in m.last_keep_masks]
    assert kept[0] == k1
    assert kept[1] == (k2 - 1 if fused_on_top else k2)  # a kept fused token holds a slot


# --- Evo-ViT ----------------------------------------------------------------------------------------


def test_evo_vit_first_ranking_uses_its_blocks_attention_alone(monkeypatch):
    real = evo_module.attend
    attention = []

    def attend(blk, seq, keys=None):
        out = real(blk, seq, keys)
        attention.append(out[1][:, :, 1:].sum(dim=1))
        return out

    monkeypatch.setattr(evo_module, "attend", attend)
    m = make("evo-vit").eval()
    sharpen(m, 3.0)
    with torch.no_grad():
        m(image(b=2, seed=3))
    k = math.floor(0.5 * N)

    def top(scores):
        return torch.zeros(2, N, dtype=torch.bool).scatter(1, scores.topk(k, dim=1).indices, True)

    assert torch.equal(m.last_keep_masks[0], top(attention[3]))  # block 3's (the 4th) alone
    mixed = attention[0]
    for a in attention[1:4]:
        mixed = 0.5 * mixed + 0.5 * a
    assert not torch.equal(top(mixed), top(attention[3]))  # the port's 0.5 would rank otherwise


# --- optimizer groups ----------------------------------------------------------------------------------


def test_frozen_start_hook_freezes_all_but_the_selectors_then_restores():
    groups = [dict(lr=1e-5, selector=False), dict(lr=1e-3, selector=True)]
    runner = SimpleNamespace(
        iter=0, max_iters=12, optim_wrapper=SimpleNamespace(optimizer=SimpleNamespace(param_groups=groups))
    )
    hook = FrozenStartHook(share=1 / 6)
    hook.before_train_iter(runner, 0)
    assert [g["lr"] for g in groups] == [0.0, 1e-3]
    hook.after_train_iter(runner, 0)
    assert [g["lr"] for g in groups] == [1e-5, 1e-3]
    runner.iter = 2  # round(12 / 6) = 2: frozen for iterations 0 and 1
    hook.before_train_iter(runner, 2)
    assert [g["lr"] for g in groups] == [1e-5, 1e-3]


def decay_of(family: str, protocol=None, method: str = "evit") -> tuple[dict, dict]:
    """Weight decay and lr of each backbone parameter under the paper template's optimizer, as
    :func:`set_param_groups` writes it for ``family``."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    import prunebench.models  # noqa: F401  (registers the method protocol's constructor)
    from prunebench.configs import TEMPLATE_DIR
    from prunebench.mmdet_config import set_param_groups

    cfg = Config.fromfile(str(TEMPLATE_DIR / "mask_rcnn_vit.py")).to_dict()
    set_param_groups(cfg, family, protocol)
    model = torch.nn.Module()
    model.backbone = make(method, family)
    with DefaultScope.overwrite_default_scope("mmdet"):  # as a run's config
        wrapper = build_optim_wrapper(model, cfg["optim_wrapper"])
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {names[id(p)]: g for g in wrapper.optimizer.param_groups for p in g["params"]}
    return {n: g["weight_decay"] for n, g in groups.items()}, {n: g["lr"] for n, g in groups.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_class_token_has_no_weight_decay(family):
    decay, _ = decay_of(family)
    assert decay["backbone.mechanism.cls_token"] == 0.0
    assert decay["backbone.blocks.0.norm1.weight"] == 0.0 and decay["backbone.blocks.0.attn.qkv.bias"] == 0.0
    assert decay["backbone.blocks.0.attn.qkv.weight"] == 0.05


def test_the_adapter_decays_the_spatial_prior_modules_batch_norms_as_the_official_configs():
    decay, _ = decay_of("adapter")
    assert decay["backbone.spm.stem.1.weight"] == 0.05  # the official `norm` key misses spm.stem.1
    assert decay["backbone.spm.stem.1.bias"] == 0.0  # the `bias` key
    assert decay["backbone.norm1.weight"] == 0.0 and decay["backbone.level_embed"] == 0.0
    plain, _ = decay_of("plain")
    assert plain["backbone.pyramid.scales.0.1.weight"] == 0.0  # plain: every norm layer, by type


def test_dynamicvit_protocol_multiplies_the_selectors_lr():
    _, lr = decay_of("plain", preset("dynamicvit").protocol, method="dynamicvit")
    sel = {n: v for n, v in lr.items() if ".selectors." in n}
    assert sel and all(v == pytest.approx(1e-2) for v in sel.values())  # 100 x the template's 1e-4
    assert lr["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(1e-4)
