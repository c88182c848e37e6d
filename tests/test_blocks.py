"""The sparse block paths (gather, per-image loop, padded) against the masked path."""

import pytest
import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from prunebench.models.blocks import gated_block, resolve_mode, sparse_block
from prunebench.models.pruned_vit import PrunedViT

TINY = dict(embed_dim=96, depth=4, num_heads=3, out_channels=32)


def _block_and_tokens():
    torch.manual_seed(0)
    blk = Block(48, 3, qkv_bias=True).eval()
    x = torch.randn(3, 20, 48)
    keep = torch.zeros(3, 20, dtype=torch.bool)
    keep[0, [0, 3, 4, 9, 17]] = True  # 5 tokens
    keep[1, 7] = True  # 1 token
    keep[2] = True  # all 20
    return blk, x, keep


def _calls(blk):
    shapes = []
    blk.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    return shapes


@pytest.mark.parametrize("mode", ["loop", "padded"])
def test_sparse_block_matches_masked_path(mode):
    blk, x, keep = _block_and_tokens()
    with torch.no_grad():
        ref = gated_block(blk, x, keep.float())
        shapes = _calls(blk)
        out = sparse_block(blk, x, keep, mode=mode)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[~keep], x[~keep])  # pruned tokens keep their value
    # padded: one call on the batch padded to the largest count; loop: one call per image
    assert shapes == ([(3, 20, 48)] if mode == "padded" else [(1, 5, 48), (1, 1, 48), (1, 20, 48)])


def test_sparse_block_equal_counts_gather_once():
    blk, x, _ = _block_and_tokens()
    keep = torch.rand(3, 20, generator=torch.Generator().manual_seed(1)).argsort(1) < 6
    with torch.no_grad():
        ref = gated_block(blk, x, keep.float())
        shapes = _calls(blk)
        out = sparse_block(blk, x, keep, mode="loop")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert shapes == [(3, 6, 48)]


def test_resolve_mode():
    assert resolve_mode("auto", torch.device("cpu")) == "loop"
    assert resolve_mode("auto", torch.device("cuda", 0)) == "padded"
    assert resolve_mode("padded", torch.device("cpu")) == "padded"
    with pytest.raises(ValueError, match="unknown sparse mode 'fast'"):
        resolve_mode("fast", torch.device("cpu"))


@pytest.mark.parametrize("reactivation", [False, True])
def test_dynamic_batch_paths_match_masked_model(reactivation):
    """Dynamic rate, batch 3: loop and padded eval paths give the masked path's maps and masks."""
    torch.manual_seed(0)
    model = PrunedViT(
        "deit-tiny",
        **TINY,
        prune_layers=[1, 2, 3],
        keep_ratios=[0.7, 0.5, 0.4],
        rate="dynamic",
        reactivation=reactivation,
    ).eval()
    for p in model.selectors.parameters():  # input-dependent decisions, as a trained selector
        nn.init.normal_(p, std=0.3)
    img = torch.randn(3, 3, 96, 128)
    with torch.no_grad():
        model.masked_eval = True
        ref, ref_masks = model(img), model.last_keep_masks
        model.masked_eval = False
        counts = [m.sum(1) for m in ref_masks]
        assert any(len(set(c.tolist())) > 1 for c in counts), counts  # per-image counts differ
        for mode in ("loop", "padded"):
            model.sparse_mode = mode
            out = model(img)
            assert all(torch.equal(a, b) for a, b in zip(model.last_keep_masks, ref_masks)), mode
            for o, r in zip(out, ref):
                torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
