"""The training path as the official code: whole-output gating, detached stage decisions, the
selector initialisations, fp32 Gumbel noise and Gumbel-sampled inference."""

import pytest
import torch
import torch.nn as nn

from prunebench.models import PrunedViT, keep_decision, pruned_backbone, selectors
from prunebench.models.selectors import GatingSelector, MlpSelector

TINY = dict(embed_dim=96, depth=4, num_heads=3, out_channels=32)
H, W = 64, 96


def image(b=2, seed=1):
    return torch.randn(b, 3, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def no_noise(monkeypatch):
    """Noise-free Gumbel decisions (hard argmax, soft sigmoid): deterministic training forwards."""
    monkeypatch.setattr(
        selectors, "logistic_noise", lambda score: torch.zeros_like(score, dtype=torch.float32)
    )


def _reference_forward(m: PrunedViT, img: torch.Tensor, stage_layers: list[int]) -> tuple:
    """The official training forward written out for one stage of pruning layers: the stage's
    first block gated by the straight-through decision ``d``, its other blocks by the detached
    hard decision, each as ``d * block(x) + (1 - d) * x`` with pruned tokens masked as keys."""
    x, h, w = m.tokens(img)
    d = hard = None
    for i, blk in enumerate(m.blocks):
        if i == stage_layers[0]:
            logits = m.selectors[0](x)
            soft = (logits[..., 0] - logits[..., 1]).sigmoid()
            hard = soft.detach() > 0.5
            d = hard.float() - soft.detach() + soft
        if hard is None:
            x = blk(x)
            continue
        gate = (d if i == stage_layers[0] else hard.float()).unsqueeze(-1)
        x = gate * blk(x, attn_mask=hard[:, None, None]) + (1 - gate) * x
    x = m.norm(x)
    B, _, D = x.shape
    return m.pyramid(x.transpose(1, 2).reshape(B, D, h, w))


def test_selector_gradient_is_the_official_one(no_noise):
    """No reactivation, one stage over blocks 1..3: the selector's gradient from a task loss equals
    the official form's (whole-output gating; later stage blocks take the detached decision)."""
    torch.manual_seed(0)
    m = PrunedViT(**TINY, prune_layers=[1, 2, 3], keep_ratios=[0.5, 0.5, 0.5], rate="dynamic").train()
    nn.init.normal_(m.selectors[0].fc2.weight, std=1.0)  # a decision that depends on the tokens
    img = image()
    weights = [torch.randn_like(o) for o in m(img)]
    grads = []
    for forward in (m, lambda x: _reference_forward(m, x, [1, 2, 3])):
        m.zero_grad()
        sum((o * g).sum() for o, g in zip(forward(img), weights)).backward()
        grads.append([p.grad.clone() for p in m.selectors.parameters()])
    kept = float(m.last_keep_masks[0].float().mean())
    assert 0.1 < kept < 0.9
    for ours, official in zip(*grads):
        assert official.abs().sum() > 0
        assert (ours - official).abs().max() <= 1e-4 * official.abs().max()


@pytest.mark.parametrize("reactivation", [False, True])
def test_only_a_stage_first_block_takes_the_differentiable_decision(monkeypatch, reactivation):
    gates = []
    real = pruned_backbone.gated_block
    monkeypatch.setattr(
        pruned_backbone,
        "gated_block",
        lambda blk, x, gate, attend: gates.append(gate) or real(blk, x, gate, attend),
    )
    m = PrunedViT(**TINY, prune_layers=[1, 2, 3], keep_ratios=[0.5, 0.5, 0.5], reactivation=reactivation)
    m.train()(image())
    assert [g.requires_grad for g in gates] == ([True] * 3 if reactivation else [True, False, False])
    assert all(g.dtype == torch.float32 if g.requires_grad else g.dtype == torch.bool for g in gates)


def _kept_shares(selector_init, reactivation, seed=0):
    torch.manual_seed(seed)
    m = PrunedViT(
        **{**TINY, "depth": 6},
        prune_layers=[2, 3, 4],
        keep_ratios=[0.7, 0.49, 0.343],
        reactivation=reactivation,
        selector_init=selector_init,
    ).train()
    with torch.no_grad():
        m(torch.randn(4, 3, 128, 192, generator=torch.Generator().manual_seed(seed)))
    return [float(k.float().mean()) for k in m.last_keep_masks]


@pytest.mark.parametrize("reactivation", [False, True])
def test_official_init_keeps_half_per_selector(reactivation):
    """``official``: default layer init, about 50 % kept per selector: 50 / 25 / 12.5 % of all
    tokens when the stages nest, 50 % each with reactivation."""
    kept = _kept_shares("official", reactivation)
    expected = [0.5, 0.5, 0.5] if reactivation else [0.5, 0.25, 0.125]
    assert kept == pytest.approx(expected, abs=0.06), kept


def test_target_init_starts_near_the_target_share():
    """``target``: the ``logit(share)`` bias alone (the features' mean logit still shifts it a little)."""
    kept = _kept_shares("target", reactivation=True)
    assert kept == pytest.approx([0.7, 0.49, 0.343], abs=0.1), kept


def test_selector_init_changes_only_the_start():
    """The three initialisations differ in the output bias (and calibration), nothing else."""
    torch.manual_seed(0)
    official = MlpSelector(96)
    torch.manual_seed(0)
    official.reset("official", 0.7)
    torch.manual_seed(0)
    target = MlpSelector(96)
    torch.manual_seed(0)
    target.reset("target", 0.7)
    for (name, a), b in zip(official.state_dict().items(), target.state_dict().values()):
        if name != "fc2.bias":
            assert torch.equal(a, b), name
    diff = torch.tensor([1.0, -1.0])
    assert abs(float(target.fc2.bias.detach() @ diff) - 0.8473) < 1e-3  # logit(0.7)
    assert abs(float(official.fc2.bias.detach() @ diff) - 0.8473) > 0.1
    with pytest.raises(ValueError, match="unknown selector_init"):
        PrunedViT(**TINY, prune_layers=[1], keep_ratios=[0.5], selector_init="warm")


def test_only_calibrated_selectors_calibrate_and_only_in_training():
    for init in ("official", "target"):
        m = PrunedViT(**TINY, prune_layers=[1], keep_ratios=[0.5], selector_init=init).train()
        m(image())
        assert not bool(m.selectors[0].calibrated)
    m = PrunedViT(**TINY, prune_layers=[1], keep_ratios=[0.5], selector_init="calibrated").eval()
    before = {k: v.clone() for k, v in m.selectors.state_dict().items()}
    with torch.no_grad():
        m(image())
    assert all(torch.equal(v, m.selectors.state_dict()[k]) for k, v in before.items())
    m.train()(image())
    assert bool(m.selectors[0].calibrated)


@pytest.mark.parametrize("cls", [GatingSelector, MlpSelector])
def test_a_calibrated_selector_survives_optimiser_steps(cls):
    """The calibration widens every layer, not the output alone: five AdamW steps at lr 1e-4 that
    push every token towards pruning move the kept share a little (an output layer scaled by
    ~4e4 to widen DynamicViT's tiny fresh logits took a gating selector from 0.70 to 0.02)."""
    torch.manual_seed(0)
    sel, x = cls(96), torch.randn(4, 64, 96)
    sel.reset("calibrated", 0.7)
    hidden, output = sel.calibrate(x, None)
    assert hidden > 1 and output < 10 * hidden  # no layer takes the whole factor
    opt = torch.optim.AdamW(sel.parameters(), lr=1e-4)
    shares = []
    for _ in range(6):
        logits = sel(x)
        shares.append(float((logits[..., 0] > logits[..., 1]).float().mean()))
        opt.zero_grad()
        logits.softmax(-1)[..., 0].mean().backward()
        opt.step()
    assert shares[0] == pytest.approx(0.7, abs=0.01)
    assert shares[-1] > 0.6, shares


def test_gumbel_noise_is_fp32_under_autocast():
    """Under CPU autocast (bf16 logits) no token gets infinite noise: with a keep score of -30 no
    token may be kept (rounding the uniform sample to 1 in bf16 would keep about 1 in 512)."""
    n = 1 << 18
    logits = torch.stack([torch.full((1, n), -15.0), torch.full((1, n), 15.0)], -1).bfloat16()
    logits.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        st = keep_decision(logits, None, 0.5, "dynamic", training=True)
    assert st.dtype == torch.float32
    assert int((st > 0.5).sum()) <= 1  # the "keep at least one token" rule may add one
    st.sum().backward()
    assert torch.isfinite(logits.grad).all()
    noise = selectors.logistic_noise(torch.zeros(n, dtype=torch.bfloat16))
    assert noise.dtype == torch.float32 and torch.isfinite(noise).all()


@pytest.mark.parametrize("rate", ["fixed", "dynamic"])
def test_gumbel_inference_is_seeded_and_differs_from_argmax(rate):
    torch.manual_seed(0)
    m = PrunedViT(**TINY, prune_layers=[1, 2, 3], keep_ratios=[0.7, 0.5, 0.3], rate=rate).eval()
    for sel in m.selectors:
        nn.init.normal_(sel.fc2.weight, std=0.05)  # scores of the order of the noise
    img = image()

    def masks(mode, seed=0):
        m.selector_inference = mode
        torch.manual_seed(seed)
        with torch.no_grad():
            m(img)
        return torch.stack(m.last_keep_masks)

    assert torch.equal(masks("gumbel", 1), masks("gumbel", 1))
    assert not torch.equal(masks("gumbel", 1), masks("gumbel", 2))
    assert not torch.equal(masks("gumbel", 1), masks("argmax"))
    assert torch.equal(masks("argmax", 1), masks("argmax", 2))
    if rate == "fixed":  # sampled or not, the fixed rate keeps round(r * N) tokens
        n = img.shape[-2] * img.shape[-1] // 256
        assert masks("gumbel").sum(-1)[:, 0].tolist() == [round(r * n) for r in (0.7, 0.5, 0.3)]
