"""PrunedViTAdapter (SViT-Adapter) and its deformable attention on tiny CPU inputs."""

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from prunebench.models import PrunedViTAdapter
from prunebench.models.adapter_modules import Geometry
from prunebench.models.ms_deform_attn import (
    DeformableAttention,
    deform_attn_backend,
    gather_form,
    ms_deform_attn,
)

DATA = Path(__file__).parent / "data"
SLIM = dict(
    embed_dim=96, depth=4, num_heads=3, conv_inplane=16, interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]]
)
PRUNE = dict(prune_layers=[1, 2, 3], keep_ratios=[0.7, 0.5, 0.3])
H, W = 64, 96
N = (H // 16) * (W // 16)
VALID = [
    dict(pruned_tokens=p, reactivation=r, rate=rate, selector=s)
    for p, r, rate, s in itertools.product(
        ("discard", "preserve"), (False, True), ("fixed", "dynamic"), ("mlp", "gating")
    )
    if not (p == "discard" and r)
]


def axes_id(a):
    return "-".join(str(v) for v in a.values())


def make(seed=0, **kw):
    torch.manual_seed(seed)
    m = PrunedViTAdapter(**{**SLIM, **PRUNE, **kw})
    for name, p in m.named_parameters():  # a trained-looking adapter: gates open, decisions mixed
        if name.endswith("gamma"):
            nn.init.normal_(p, std=0.5)
    for sel in m.selectors:
        nn.init.normal_(sel.output.weight, std=0.5)
    return m


def image(b=2, seed=1):
    return torch.randn(b, 3, H, W, generator=torch.Generator().manual_seed(seed))


def test_state_dict_matches_the_official_vit_adapter():
    """Keys and shapes of a dense deit-small adapter equal the official ViTAdapter's, except
    ``pos_embed``'s class slot (cut by the conversion)."""
    official = json.loads((DATA / "official_vit_adapter_s_keys.json").read_text())["keys"]
    ours = {k: list(v.shape) for k, v in PrunedViTAdapter(arch="deit-small").state_dict().items()}
    assert sorted(ours) == sorted(official)
    differ = {k: (official[k], ours[k]) for k in official if official[k] != ours[k]}
    assert differ == {"pos_embed": ([1, 197, 384], [1, 196, 384])}


def test_outputs_four_maps_of_embed_dim_and_pads_to_32():
    m = PrunedViTAdapter(**SLIM).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 50, 70))  # padded to 64x96
    assert [tuple(o.shape) for o in outs] == [(1, 96, 16, 24), (1, 96, 8, 12), (1, 96, 4, 6), (1, 96, 2, 3)]
    assert m.last_keep_masks == []


@pytest.mark.parametrize("axes", VALID, ids=axes_id)
def test_train_and_gradients_every_cell(axes):
    m = make(**axes).train()
    outs = m(image())
    assert [k.shape for k in m.last_keep_masks] == [(2, N)] * 3
    loss = sum((o * torch.randn_like(o)).mean() for o in outs) + m.keep_ratio_loss()
    loss.backward()
    for name, p in m.selectors.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("axes", VALID, ids=axes_id)
def test_gathered_inference_equals_masked_path(axes, b):
    m = make(**axes).eval()
    blocks_saw = []
    for blk in m.blocks:
        blk.register_forward_hook(lambda mod, args, out: blocks_saw.append(args[0].shape[1]))
    x = image(b=b)
    with torch.no_grad():
        sparse, sparse_masks = m(x), m.last_keep_masks
        gathered = list(blocks_saw)
        m.masked_eval = True
        masked, masked_masks = m(x), m.last_keep_masks
    for s, k in zip(sparse_masks, masked_masks):
        assert torch.equal(s, k)
    for s, k in zip(sparse, masked):
        torch.testing.assert_close(s, k, rtol=1e-4, atol=1e-4)
    # every cell really skips work: pruned blocks see fewer tokens than N (per image at batch 1)
    if b == 1 or axes["rate"] == "fixed":
        assert gathered[0] == N and all(n < N for n in gathered[1:]), gathered


def test_preserve_injectors_update_pruned_tokens_discard_zeroes_them():
    """preserve: a token pruned at block 1 is still changed by the next injector; discard: it is
    zero from the end of its interaction on and the next injector leaves it at zero."""
    seen = {}
    for mode in ("preserve", "discard"):
        m = make(pruned_tokens=mode, rate="fixed").eval()
        inj = m.interactions[2].injector
        seen[mode] = []
        inj.register_forward_hook(
            lambda mod, args, out, s=seen[mode]: s.append((args[0].clone(), out.clone()))
        )
        with torch.no_grad():
            m(image(b=1))
        pruned = ~m.last_keep_masks[0][0]
        x_in, x_out = seen[mode][0]
        if mode == "preserve":
            assert (x_out[0, pruned] - x_in[0, pruned]).abs().amax() > 1e-4
        else:
            assert x_in[0, pruned].abs().amax() == 0 and x_out[0, pruned].abs().amax() == 0
            assert x_in[0, ~pruned].abs().amax() > 0


def test_discard_extractors_read_pruned_tokens_as_padding():
    m = make(pruned_tokens="discard", rate="fixed").eval()
    got = []
    ext = m.interactions[3].extractor
    ext.register_forward_hook(lambda mod, args, out: got.append(args[3]))
    with torch.no_grad():
        m(image(b=1))
    assert torch.equal(got[0], ~m.last_keep_masks[-1])


# --- deformable attention ------------------------------------------------------------------


def _bilinear(value: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """``value`` (h, w, C) at normalised (x, y): pixel centres at (i + 0.5) / size, zeros outside."""
    h, w, _ = value.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    out = torch.zeros(value.shape[-1], dtype=torch.float64)
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        if 0 <= xi < w and 0 <= yi < h:
            out += (1 - abs(px - xi)) * (1 - abs(py - yi)) * value[yi, xi].double()
    return out


def _case(seed=0, shapes=((3, 4), (2, 2)), B=2, Q=3, M=2, Dh=4, P=3):
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(B, sum(h * w for h, w in shapes), M, Dh, generator=g)
    loc = torch.rand(B, Q, M, len(shapes), P, 2, generator=g) * 1.4 - 0.2  # some points outside
    weight = torch.rand(B, Q, M, len(shapes), P, generator=g)
    return value, list(shapes), loc, weight


def test_deformable_attention_core_is_the_definition():
    """The CPU form equals bilinear sampling written out, summed with the attention weights, per
    head and level."""
    value, shapes, loc, weight = _case()
    B, Q, M, L, P, _ = loc.shape
    Dh = value.shape[-1]
    out = ms_deform_attn(value, shapes, loc, weight)
    assert deform_attn_backend("cpu") == "gather"
    assert out.dtype == torch.float32 and out.shape == (B, Q, M * Dh)
    levels = value.split([h * w for h, w in shapes], dim=1)
    for b, q, m in itertools.product(range(B), range(Q), range(M)):
        ref = torch.zeros(Dh, dtype=torch.float64)
        for lvl, (h, w) in enumerate(shapes):
            v = levels[lvl][b, :, m].reshape(h, w, Dh)
            for p in range(P):
                x, y = loc[b, q, m, lvl, p].tolist()
                ref += weight[b, q, m, lvl, p].double() * _bilinear(v, x, y)
        torch.testing.assert_close(out[b, q, m * Dh : (m + 1) * Dh].double(), ref, rtol=1e-5, atol=1e-6)


def test_gather_form_equals_mmcvs_pytorch_form_with_gradients():
    """prunebench's gather form and MMCV 2.1's ``multi_scale_deformable_attn_pytorch``: same outputs
    and the same gradients to value, sampling locations and attention weights."""
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    value, shapes, loc, weight = _case(seed=3, shapes=((6, 8), (3, 4), (2, 2)), Q=40, M=3, Dh=8, P=4)
    grads = []
    for fn in (gather_form, multi_scale_deformable_attn_pytorch):
        inputs = [t.clone().requires_grad_() for t in (value, loc, weight)]
        out = fn(inputs[0], shapes, *inputs[1:])
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), *(t.grad for t in inputs)))
    for ours, mmcv in zip(*grads):
        torch.testing.assert_close(ours, mmcv, rtol=1e-4, atol=1e-5)


def test_cpu_training_uses_mmcvs_form_and_inference_the_gather_form(monkeypatch):
    import prunebench.models.ms_deform_attn as mda

    used = []
    monkeypatch.setattr(mda, "gather_form", lambda *a: used.append("gather") or gather_form(*a))
    value, shapes, loc, weight = _case()
    with torch.no_grad():
        ms_deform_attn(value, shapes, loc, weight)
    assert used == ["gather"]
    ms_deform_attn(value.requires_grad_(), shapes, loc, weight).sum().backward()
    assert used == ["gather"] and value.grad is not None
    assert deform_attn_backend("cpu", grad=True) == "mmcv-pytorch" and deform_attn_backend("cpu") == "gather"


def test_deformable_attention_module_is_vit_adapters():
    """Only the four projections of MSDeformAttn (no dropout, no identity added back) with
    Deformable DETR's initialisation."""
    attn = DeformableAttention(d_model=32, n_levels=3, n_heads=4, n_points=2)
    assert [n for n, _ in attn.named_children()] == [
        "sampling_offsets",
        "attention_weights",
        "value_proj",
        "output_proj",
    ]
    assert attn.sampling_offsets.weight.abs().sum() == 0 and attn.attention_weights.weight.abs().sum() == 0
    bias = attn.sampling_offsets.bias.view(4, 3, 2, 2)
    assert torch.equal(bias[0, 1], torch.tensor([[1.0, 0.0], [2.0, 0.0]]))  # head 0: along +x, 1 and 2 px
    torch.testing.assert_close(bias[1, 0], torch.tensor([[0.0, 1.0], [0.0, 2.0]]), atol=1e-6, rtol=0)
    # zero projections: the output is exactly zero (nothing of the query is added back)
    for p in attn.parameters():
        nn.init.zeros_(p)
    geo = Geometry.of(2, 3, torch.device("cpu"))
    query = torch.randn(1, 6, 32)
    out = attn(
        query, geo.vit_points, torch.randn(1, sum(h * w for h, w in geo.cnn_shapes), 32), geo.cnn_shapes
    )
    assert out.abs().max() == 0


def test_deformable_attention_runs_in_fp32_under_autocast():
    g = torch.Generator().manual_seed(0)
    value = torch.randn(1, 6, 2, 4, generator=g).bfloat16()
    loc = torch.rand(1, 5, 2, 1, 2, 2, generator=g).bfloat16()
    weight = torch.rand(1, 5, 2, 1, 2, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ms_deform_attn(value, [(2, 3)], loc, weight)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ms_deform_attn(value.float(), [(2, 3)], loc.float(), weight.float()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (MMCV's compiled op)")
def test_cuda_op_agrees_with_the_cpu_form():
    assert deform_attn_backend("cuda") == "mmcv-cuda", "MMCV was built without its CUDA ops"
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 12), (4, 6), (2, 3)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 6, 32, generator=g)
    loc = torch.rand(2, 50, 6, 3, 4, 2, generator=g)
    weight = torch.rand(2, 50, 6, 3, 4, generator=g).softmax(-1)
    cpu = ms_deform_attn(value, shapes, loc, weight)
    gpu = ms_deform_attn(value.cuda(), shapes, loc.cuda(), weight.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)


class _AttnOnQuery(nn.Module):
    def __init__(self, attn, geo, feat):
        super().__init__()
        self.attn, self.geo, self.feat = attn, geo, feat

    def forward(self, query):
        return self.attn(query, self.geo.vit_points, self.feat, self.geo.cnn_shapes)


def test_flop_count_includes_the_deformable_attention_core():
    """MMEngine's FlopAnalyzer with prunebench's handles counts a DeformableAttention as its four
    projections plus the core: a bilinear sample (4) and its weighting (1) per point and channel."""
    from prunebench.bench import traced_gflops

    C, M, L, P = 32, 4, 3, 2
    geo = Geometry.of(2, 4, torch.device("cpu"))
    S, Q = sum(h * w for h, w in geo.cnn_shapes), 8
    module = _AttnOnQuery(DeformableAttention(C, L, M, P), geo, torch.randn(1, S, C)).eval()
    projections = S * C * C + Q * C * (M * L * P * 2) + Q * C * (M * L * P) + Q * C * C
    core = 5 * Q * M * L * P * (C // M)
    assert traced_gflops(module, torch.randn(1, Q, C)) * 1e9 == pytest.approx(projections + core, rel=1e-9)
