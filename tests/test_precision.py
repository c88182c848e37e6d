"""Pruning decisions under reduced precision (CPU autocast supports bf16 and fp16 in torch 2.9)."""

import pytest
import torch
import torch.nn as nn

from prunebench.bench import autocast
from prunebench.models.pruned_vit import PrunedViT
from prunebench.models.selectors import num_kept

RATIOS = [0.7, 0.49, 0.343]


def _model(rate: str) -> PrunedViT:
    torch.manual_seed(0)
    model = PrunedViT(
        "deit-tiny",
        embed_dim=96,
        depth=4,
        num_heads=3,
        out_channels=32,
        prune_layers=[1, 2, 3],
        keep_ratios=RATIOS,
        rate=rate,
    ).eval()
    for p in model.selectors.parameters():  # input-dependent scores, as a trained selector
        nn.init.normal_(p, std=0.3)
    return model


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_fixed_rate_keeps_fp32_token_counts(dtype):
    model = _model("fixed")
    img = torch.randn(2, 3, 128, 192)  # N = 8 * 12 = 96 tokens
    with torch.no_grad():
        model(img)
        ref = model.last_keep_masks
        with autocast("cpu", dtype):
            out = model(img)
    assert out[0].dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]  # autocast was on
    masks = model.last_keep_masks
    for r, m, m32 in zip(RATIOS, masks, ref):
        assert m.sum(1).tolist() == m32.sum(1).tolist() == [num_kept(r, 96)] * 2
        assert (m & m32).sum() / (m | m32).sum() >= 0.9  # nearly the same tokens as in fp32


def test_autocast_contexts():
    assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        autocast("cpu", "int8")
