"""PrunedViT, selectors and PrunedMaskRCNN on tiny CPU inputs (random init)."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from prunebench.models import PrunedMaskRCNN, PrunedViT, keep_decision, pruned_backbone

TINY = dict(embed_dim=96, depth=4, num_heads=3, out_channels=32)
PRUNE = dict(prune_layers=[1, 2, 3], keep_ratios=[0.7, 0.5, 0.3])
H, W = 64, 96
N = (H // 16) * (W // 16)  # 24 tokens
VALID = [
    dict(pruned_tokens=p, reactivation=r, rate=rate, selector=s)
    for p, r, rate, s in itertools.product(
        ("discard", "preserve"), (False, True), ("fixed", "dynamic"), ("mlp", "gating")
    )
    if not (p == "discard" and r)
]
NO_REACT = [a for a in VALID if not a["reactivation"]]


def axes_id(a):
    return "-".join(str(v) for v in a.values())


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return PrunedViT(**{**TINY, **PRUNE, **kw})


def image(b=2, seed=1):
    return torch.randn(b, 3, H, W, generator=torch.Generator().manual_seed(seed))


class ScoreSelector(nn.Module):
    """Stub selector with fixed keep scores (B, N): keep logit ``s``, prune logit ``-s``."""

    def needs_calibration(self):  # nothing to calibrate
        return False

    def __init__(self, score):
        super().__init__()
        self.register_buffer("score", torch.as_tensor(score, dtype=torch.float32))

    def forward(self, x, available=None):
        s = self.score.expand(x.shape[0], -1)
        return torch.stack([s, -s], dim=-1)


def token_set(idx):
    """Scores: +20 for the token indices in ``idx``, -20 elsewhere (robust to Gumbel noise)."""
    s = torch.full((N,), -20.0)
    s[list(idx)] = 20.0
    return s


def capture_input(module):
    """Record the (full-sequence) input of ``module`` on each call."""
    seen = []
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    return seen


def capture_output(module):
    seen = []
    module.register_forward_hook(lambda m, args, out: seen.append(out.detach().clone()))
    return seen


def check_maps(outs, b, channels=32):
    assert len(outs) == 4
    for o, stride in zip(outs, (4, 8, 16, 32)):
        assert o.shape == (b, channels, H // stride, W // stride)
        assert torch.isfinite(o).all()


@pytest.mark.parametrize("axes", VALID, ids=axes_id)
def test_train_eval_backward_every_combination(axes):
    m = make(**axes).train()
    outs = m(image())
    check_maps(outs, 2)
    assert [k.shape for k in m.last_keep_masks] == [(2, N)] * 3
    assert all(k.dtype == torch.bool for k in m.last_keep_masks)
    loss = sum((o * torch.randn_like(o)).mean() for o in outs) + m.keep_ratio_loss()
    loss.backward()
    for name, p in m.selectors.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient on selector parameter {name}"
    m.eval()
    with torch.no_grad():
        check_maps(m(image()), 2)
    assert [k.shape for k in m.last_keep_masks] == [(2, N)] * 3


@pytest.mark.parametrize("reactivation", [False, True])
def test_fixed_rate_keeps_round_rn_per_image_at_inference(reactivation):
    ratios = [0.7, 0.5, 0.3] if not reactivation else [0.3, 0.7, 0.45]
    m = make(rate="fixed", keep_ratios=ratios, reactivation=reactivation).eval()
    with torch.no_grad():
        m(image(b=3))
    for mask, r in zip(m.last_keep_masks, ratios):
        assert mask.sum(1).tolist() == [round(r * N)] * 3


@pytest.mark.parametrize("rate", ["fixed", "dynamic"])
def test_training_decisions_are_per_token_for_both_rates(rate):
    """In training both rates take per-token Gumbel decisions (the loss steers the count): with
    clear scores an image keeps exactly its scored set, whatever round(r*N) is."""
    m = make(rate=rate, prune_layers=[1], keep_ratios=[0.5]).train()
    m.selectors = nn.ModuleList(
        [ScoreSelector(torch.stack([token_set(range(0, 5)), token_set(range(0, 17))]))]
    )
    with torch.no_grad():
        m(image(b=2))
    assert m.last_keep_masks[0].sum(1).tolist() == [5, 17]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("axes", NO_REACT, ids=axes_id)
def test_masks_nest_without_reactivation(axes, train):
    m = make(**axes).train(train)
    with torch.no_grad():
        m(image())
    for prev, nxt in zip(m.last_keep_masks, m.last_keep_masks[1:]):
        assert not (nxt & ~prev).any(), "a token pruned earlier was kept later"


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_reactivation_revives_a_pruned_token(train):
    first, second = range(0, N // 2), range(N // 2, N)
    kw = dict(prune_layers=[1, 2], keep_ratios=[0.5, 0.5], rate="dynamic")
    revived = make(reactivation=True, **kw).train(train)
    nested = make(reactivation=False, **kw).train(train)
    for m in (revived, nested):
        m.selectors = nn.ModuleList([ScoreSelector(token_set(first)), ScoreSelector(token_set(second))])
        with torch.no_grad():
            m(image())
    a, b = revived.last_keep_masks
    assert (b & ~a).any(), "no token pruned at layer 1 was kept at layer 2"
    assert b[:, N // 2 :].all() and not a[:, N // 2 :].any()
    a, b = nested.last_keep_masks
    assert not (b & ~a).any()


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("rate", ["fixed", "dynamic"])
@pytest.mark.parametrize("reactivation", [False, True])
def test_preserve_leaves_skipped_tokens_untouched(reactivation, rate, train):
    """Tokens no selector keeps skip blocks 1..3: their final value is block 0's output."""
    a, b, never = range(0, 8), range(8, 14), range(14, N)
    sets = [a, b, a] if reactivation else [range(0, 14), range(0, 10), range(0, 8)]
    ratios = [len(s) / N for s in sets]
    m = make(pruned_tokens="preserve", reactivation=reactivation, rate=rate, keep_ratios=ratios)
    m.selectors = nn.ModuleList([ScoreSelector(token_set(s)) for s in sets])
    m.train(train)
    after_block0, final = capture_output(m.blocks[0]), capture_input(m.norm)
    with torch.no_grad():
        m(image())
    skipped = list(never)
    torch.testing.assert_close(final[0][:, skipped], after_block0[0][:, skipped], rtol=0, atol=0)
    assert (final[0][:, :8] - after_block0[0][:, :8]).abs().amax() > 1e-3  # kept tokens did change
    kept_somewhere = torch.stack(m.last_keep_masks).any(0)
    assert not kept_somewhere[:, skipped].any() and kept_somewhere[:, :14].all()


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("pruned_tokens", ["discard", "preserve"])
def test_discard_zeroes_pruned_positions_in_final_map(pruned_tokens, train):
    m = make(pruned_tokens=pruned_tokens, rate="fixed").train(train)  # some tokens pruned even when fresh
    token_map = capture_input(m.pyramid)
    with torch.no_grad():
        m(image())
    fmap = token_map[0].flatten(2).transpose(1, 2)  # (B, N, D)
    last = m.last_keep_masks[-1]
    assert (~last).any() and last.any()
    zero = fmap.abs().amax(-1) == 0
    if pruned_tokens == "discard":
        assert torch.equal(zero, ~last)
    else:
        assert not zero.any()


@pytest.mark.parametrize("axes", VALID, ids=axes_id)
def test_gather_scatter_equals_masked_path(axes):
    m = make(**axes).eval()
    x = image(b=3)
    with torch.no_grad():
        sparse, sparse_masks = m(x), m.last_keep_masks
        m.masked_eval = True
        masked, masked_masks = m(x), m.last_keep_masks
    for s, k in zip(sparse_masks, masked_masks):
        assert torch.equal(s, k)
    for s, k in zip(sparse, masked):
        torch.testing.assert_close(s, k, rtol=1e-4, atol=1e-5)


def test_dynamic_batch_with_per_image_counts():
    m = make(rate="dynamic", prune_layers=[1, 2], keep_ratios=[0.5, 0.3]).eval()
    m.selectors = nn.ModuleList(
        [
            ScoreSelector(torch.stack([token_set(range(0, 12)), token_set(range(0, 20))])),
            ScoreSelector(torch.stack([token_set(range(0, 3)), token_set(range(5, 15))])),
        ]
    )
    x = image(b=2)
    with torch.no_grad():
        sparse = m(x)
        counts = [k.sum(1).tolist() for k in m.last_keep_masks]
        m.masked_eval = True
        masked = m(x)
    assert counts == [[12, 20], [3, 10]]
    for s, k in zip(sparse, masked):
        torch.testing.assert_close(s, k, rtol=1e-4, atol=1e-5)
    m.masked_eval = False
    m.selectors = nn.ModuleList([ScoreSelector(sel.score[1:]) for sel in m.selectors])
    with torch.no_grad():  # an image alone gives the same result as in the batch
        alone = m(x[1:])
    for s, a in zip(sparse, alone):
        torch.testing.assert_close(s[1:], a, rtol=1e-4, atol=1e-5)


def test_keep_decision_modes():
    logits = torch.randn(2, 50, 2, requires_grad=True)
    hard = keep_decision(logits, None, 0.3, "fixed", training=False)
    assert hard.dtype == torch.bool and hard.sum(1).tolist() == [15, 15]
    assert torch.equal(
        hard.float().topk(15).indices.sort().values, logits.softmax(-1)[..., 0].topk(15).indices.sort().values
    )
    assert torch.equal(
        keep_decision(logits, None, 0.3, "dynamic", training=False), logits[..., 0] > logits[..., 1]
    )
    for rate in ("dynamic", "fixed"):
        logits.grad = None
        st = keep_decision(logits, None, 0.3, rate, training=True)
        assert st.dtype == torch.float32 and set(st.unique().tolist()) <= {0.0, 1.0}
        st.sum().backward()
        assert logits.grad.abs().sum() > 0
    available = torch.zeros(2, 50, dtype=torch.bool)
    available[:, :4] = True
    none_kept = keep_decision(
        torch.stack([-torch.ones(2, 50), torch.ones(2, 50)], -1), available, 0.5, "dynamic", training=False
    )
    assert none_kept.sum(1).tolist() == [1, 1] and not none_kept[:, 4:].any()


def forced(rate, sets, ratios, **kw):
    """A training-mode model whose selectors keep exactly the token sets ``sets[j]`` (per image)."""
    m = make(rate=rate, keep_ratios=ratios, **kw).train()
    m.selectors = nn.ModuleList(
        [ScoreSelector(torch.stack([token_set(s) for s in per_image])) for per_image in sets]
    )
    return m


def test_keep_ratio_loss_formulas():
    """Official code: per decision (achieved share of all N - target)^2, averaged over decisions;
    dynamic at batch level, fixed per image then averaged over images."""
    ratios = [0.7, 0.5, 0.3]
    sets = [[range(0, 20), range(0, 12)], [range(0, 10), range(0, 12)], [range(0, 2), range(0, 9)]]
    share = torch.tensor([[20, 12], [10, 12], [2, 9]], dtype=torch.float64) / N
    target = torch.tensor(ratios, dtype=torch.float64)[:, None]
    expected = {
        "dynamic": ((share.mean(1, keepdim=True) - target) ** 2).mean(),
        "fixed": ((share - target) ** 2).mean(),
    }
    assert abs(float(expected["dynamic"] - expected["fixed"])) > 1e-3  # the two formulas differ here
    for rate in ("dynamic", "fixed"):
        m = forced(rate, sets, ratios)
        m(image())
        assert float(m.keep_ratio_loss()) == pytest.approx(float(expected[rate]), rel=1e-5)


@pytest.mark.parametrize("rate", ["fixed", "dynamic"])
def test_keep_ratio_loss_has_gradient_to_selectors(rate):
    m = make(rate=rate).train()
    m(image())
    loss = m.keep_ratio_loss()
    assert loss.requires_grad and loss > 0
    loss.backward()
    for name, p in m.selectors.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_keep_ratio_loss_is_zero_for_dense():
    dense = PrunedViT(**TINY).train()
    dense(image())
    assert dense.keep_ratio_loss().item() == 0


REF = dict(
    embed_dim=96,
    depth=12,
    num_heads=3,
    out_channels=32,
    prune_layers=[3, 4, 5, 6, 7, 8, 9, 10, 11],
    keep_ratios=[0.7, 0.7, 0.7, 0.49, 0.49, 0.49, 0.343, 0.343, 0.343],
)


@pytest.mark.parametrize("reactivation", [False, True])
def test_stage_selectors_hold_their_decision(reactivation):
    """Without reactivation one selector per stage of equal ratios (before blocks 4, 7, 10), its
    decision held for the stage; with reactivation a selector at each of the 9 pruning layers."""
    torch.manual_seed(0)
    m = PrunedViT(**REF, reactivation=reactivation, rate="dynamic").train()
    assert len(m.selectors) == (9 if reactivation else 3)
    with torch.no_grad():
        m(image())  # the first forward also calibrates the fresh selectors
    calls = []
    for s in m.selectors:
        s.register_forward_hook(lambda mod, args, out: calls.append(mod))
    with torch.no_grad():
        m(image())
    assert len(calls) == len(m.selectors) and len(m.last_keep_masks) == 9
    if not reactivation:
        masks = m.last_keep_masks
        for stage in (masks[0:3], masks[3:6], masks[6:9]):
            assert all(torch.equal(stage[0], k) for k in stage)
        for prev, nxt in zip(masks, masks[1:]):
            assert not (nxt & ~prev).any()


@pytest.mark.parametrize("axes", VALID, ids=axes_id)
def test_calibrated_selectors_start_near_target(axes):
    """Every cell, ``selector_init="calibrated"``: a fresh model's training-mode decisions keep the
    target share of all tokens (within 0.1) at each pruning layer, and the fixed rate keeps it
    exactly at inference."""
    torch.manual_seed(0)
    m = PrunedViT(**REF, **axes, selector_init="calibrated").train()
    x = torch.randn(4, 3, 224, 320, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m(x)
    kept = [float(k.float().mean()) for k in m.last_keep_masks]
    assert kept == pytest.approx(REF["keep_ratios"], abs=0.1), kept
    with torch.no_grad():
        m.eval()(x)
    n = m.last_keep_masks[0].shape[1]
    if axes["rate"] == "fixed":
        assert [int(k.sum(1)[0]) for k in m.last_keep_masks] == [round(r * n) for r in REF["keep_ratios"]]
    else:  # the calibrated argmax keeps about the target too
        kept = [float(k.float().mean()) for k in m.last_keep_masks]
        assert kept == pytest.approx(REF["keep_ratios"], abs=0.1), kept


def test_selectors_calibrate_once_and_keep_it_in_checkpoints():
    m = make(rate="dynamic", selector_init="calibrated").train()
    assert not any(bool(s.calibrated) for s in m.selectors)
    m(image())
    assert all(bool(s.calibrated) for s in m.selectors)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    m(image(seed=5))  # a second batch changes nothing
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items() if k.startswith("selectors."))
    again = make(rate="dynamic", seed=3, selector_init="calibrated")
    again.load_state_dict(state)
    assert all(bool(s.calibrated) for s in again.selectors)
    again.train()(image(seed=5))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items() if k.startswith("selectors."))


def test_dense_baseline_and_padding():
    m = PrunedViT(**TINY).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 50, 70))  # padded to 64x96
    check_maps(outs, 1)
    assert m.last_keep_masks == []
    assert len(m.selectors) == 0


def test_arch_dimensions():
    m = PrunedViT(arch="deit-tiny", **PRUNE)
    assert (m.pos_embed.shape[-1], len(m.blocks), m.blocks[0].attn.num_heads) == (192, 12, 3)


def test_dense_checkpoint_loads_into_pruned_model(monkeypatch):
    logged = []
    monkeypatch.setattr(pruned_backbone, "print_log", lambda msg, **kw: logged.append(msg))
    dense = PrunedViT(**TINY)
    pruned = make(selector="gating")
    fresh = {k: v.clone() for k, v in pruned.state_dict().items() if k.startswith("selectors.")}
    result = pruned.load_state_dict(dense.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in dense.state_dict().items():
        assert torch.equal(pruned.state_dict()[k], v)
    for k, v in fresh.items():
        assert torch.equal(pruned.state_dict()[k], v)
    assert len(logged) == 1 and "3 selectors" in logged[0] and "selectors.0" in logged[0]
    assert len(logged[0]) < 200  # one short line, not every key


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(pruned_tokens="discard", reactivation=True), "discarded token"),
        (dict(arch="deit-huge"), "unknown arch"),
        (dict(pruned_tokens="keep"), "unknown pruned_tokens"),
        (dict(rate="adaptive"), "unknown rate"),
        (dict(selector="attn"), "unknown selector"),
        (dict(sparse_mode="nested"), "unknown sparse_mode"),
        (dict(keep_ratios=[0.7, 0.5]), "one ratio per pruning layer"),
        (dict(prune_layers=[1, 2, 4]), "prune_layers"),
        (dict(keep_ratios=[0.7, 0.5, 0.0]), r"\(0, 1\]"),
        (dict(keep_ratios=[1.2, 0.5, 0.3], reactivation=True), r"\(0, 1\]"),
        (dict(keep_ratios=[0.5, 0.7, 0.3]), "must not increase"),
    ],
)
def test_invalid_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


# --- MMDetection ---------------------------------------------------------------------------


def det_batch(with_gt):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    img = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sample = DetDataSample(
        metainfo=dict(img_id=0, img_path="", ori_shape=(H, W), img_shape=(H, W), scale_factor=(1.0, 1.0))
    )
    if with_gt:
        mask = np.zeros((1, H, W), dtype=np.uint8)
        mask[0, 10:50, 20:70] = 1
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[20.0, 10.0, 70.0, 50.0]]),
            labels=torch.tensor([1]),
            masks=BitmapMasks(mask, H, W),
        )
    return dict(inputs=[img], data_samples=[sample])


@pytest.mark.parametrize("rate", ["fixed", "dynamic"])
def test_pruned_mask_rcnn_train_iteration_and_test(rate):
    from mmengine.optim import OptimWrapper

    from prunebench.bench import build_detector
    from prunebench.configs import TEMPLATE_DIR as CONFIGS

    torch.manual_seed(0)
    model = build_detector(
        "deit-tiny", config=str(CONFIGS / "mask_rcnn_vit_cpu.py"), **PRUNE, rate=rate, selector="gating"
    )
    assert isinstance(model, PrunedMaskRCNN) and isinstance(model.backbone, PrunedViT)
    model.init_weights()
    before = {k: v.clone() for k, v in model.backbone.selectors.state_dict().items()}
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    model.train()
    log_vars = model.train_step(det_batch(with_gt=True), optim)
    assert model.keep_ratio_loss_weight == 4.0
    for key in ("loss", "loss_keep_ratio", "loss_rpn_cls", "loss_cls", "loss_mask"):
        assert np.isfinite(float(torch.as_tensor(log_vars[key]).detach())), key
    expected = 4.0 * np.mean(
        [
            (float(k.float().mean()) - r) ** 2  # batch of 1: both rates agree
            for k, r in zip(model.backbone.last_keep_masks, PRUNE["keep_ratios"])
        ]
    )
    assert float(log_vars["loss_keep_ratio"].detach()) == pytest.approx(float(expected), abs=1e-6)
    changed = [k for k, v in model.backbone.selectors.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the training step did not update the selectors"

    model.eval()
    with torch.no_grad():
        results = model.test_step(det_batch(with_gt=False))
    pred = results[0].pred_instances
    assert pred.bboxes.shape[-1] == 4 and len(pred.scores) == len(pred.labels) == len(pred.masks)
    assert [k.shape for k in model.backbone.last_keep_masks] == [(1, N)] * 3


def test_dense_detector_checkpoint_loads_into_pruned_detector(tmp_path, monkeypatch):
    """MMEngine's checkpoint loading (as ``load_from`` uses it), strict: only selectors are new."""
    from mmengine.runner import load_checkpoint

    from prunebench.bench import build_detector
    from prunebench.configs import TEMPLATE_DIR as CONFIGS

    logged = []
    monkeypatch.setattr(pruned_backbone, "print_log", lambda msg, **kw: logged.append(msg))
    cfg = str(CONFIGS / "mask_rcnn_vit_cpu.py")
    dense = build_detector("deit-tiny", cfg)
    torch.save({"state_dict": dense.state_dict()}, tmp_path / "dense.pth")
    pruned = build_detector("deit-tiny", cfg, **PRUNE, selector="gating")
    load_checkpoint(pruned, str(tmp_path / "dense.pth"), map_location="cpu", strict=True)
    for k, v in dense.state_dict().items():
        assert torch.equal(pruned.state_dict()[k], v), k
    assert len(logged) == 1 and "backbone.selectors.2" in logged[0]
