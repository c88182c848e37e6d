"""prunebench's ``tome`` and ``atc`` on the ViT-Adapter against ATC's own ``ToMeATCViTAdapter``
(JoakimHaurum/ATC, MIT licence, ``MMDet_setup/mmdet_custom/models/backbones``), built on a CPU:
same weights (by name), eval mode, all four output maps equal.

ATC's code is not part of prunebench: the test reads a checkout of the repository from
``$PRUNEBENCH_ATC_REPO`` (default ``~/.cache/prunebench/ATC``; ``git clone
https://github.com/JoakimHaurum/ATC`` there, tested at commit ``227c94b``) and skips without it.
Its MMDetection 2 / mmcv 1 imports are shimmed for the test only: the ``BACKBONES`` registry,
``mmcv.runner.BaseModule``, its checkpoint loader and root logger are stubs; its CUDA deformable
attention module is written here over MMCV's PyTorch core (``multi_scale_deformable_attn_pytorch``);
timm's ``VisionTransformer`` base is a minimal stand-in (ATC's adapter uses only its patch
embedding, position embedding and class token). ATC clusters with scikit-learn (the ``test`` extra).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from official_format import trained_looking
from prunebench.models import PrunedViTAdapter

pytest.importorskip("sklearn")
ATC = Path(os.environ.get("PRUNEBENCH_ATC_REPO", Path.home() / ".cache" / "prunebench" / "ATC"))
BACKBONES = ATC / "MMDet_setup" / "mmdet_custom" / "models" / "backbones"
pytestmark = pytest.mark.skipif(
    not (BACKBONES / "tome_atc_adapter.py").is_file(),
    reason=f"no ATC checkout at {ATC} (set PRUNEBENCH_ATC_REPO; git clone https://github.com/JoakimHaurum/ATC)",
)

DIM, HEADS, H, W = 96, 3, 128, 160  # N = 80 tokens
LAYERS = [3, 6, 9]


class MSDeformAttn(nn.Module):
    """ViT-Adapter's deformable attention module (its parameter names and maths), on MMCV's
    PyTorch core."""

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, ratio=1.0):
        super().__init__()
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, int(d_model * ratio))
        self.output_proj = nn.Linear(int(d_model * ratio), d_model)

    def _reset_parameters(self):
        pass  # the test loads every weight

    def forward(self, query, reference_points, feat, shapes, level_start_index, padding_mask=None):
        from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

        B, Q, _ = query.shape
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(feat).view(B, feat.shape[1], M, -1)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = F.softmax(self.attention_weights(query).view(B, Q, M, L * P), -1).view(B, Q, M, L, P)
        normaliser = torch.stack([shapes[:, 1], shapes[:, 0]], -1).to(offsets.dtype)
        locations = (
            reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        )
        return self.output_proj(multi_scale_deformable_attn_pytorch(value, shapes, locations, weights))


class VisionTransformer(nn.Module):
    """What ATC's ViT-Adapter uses of timm's ``VisionTransformer``: patch and position embedding,
    class token (its position slot), dropout after the embedding."""

    def __init__(
        self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, drop_rate=0.0, embed_layer=None, **_
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = embed_layer(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList()

    def _init_weights(self, m):
        pass


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


class _Registry:
    def register_module(self, *args, **kwargs):
        return lambda cls: cls


@pytest.fixture(scope="module")
def atc_adapter():
    """ATC's ``ToMeATCViTAdapter`` class, imported with the shims above."""
    with pytest.MonkeyPatch.context() as mp:
        shims = {
            "mmdet.models.builder": _module("mmdet.models.builder", BACKBONES=_Registry()),
            "mmcv.runner": _module("mmcv.runner", BaseModule=nn.Module),
            "MMDet_setup": _module("MMDet_setup", __path__=[]),
            "MMDet_setup.ops": _module("MMDet_setup.ops", __path__=[]),
            "MMDet_setup.ops.modules": _module("MMDet_setup.ops.modules", MSDeformAttn=MSDeformAttn),
            "MMDet_setup.mmcv_custom": _module("MMDet_setup.mmcv_custom", my_load_checkpoint=None),
            "timm.models.vision_transformer": _module(
                "timm.models.vision_transformer", VisionTransformer=VisionTransformer
            ),
            "atc_ref": _module("atc_ref", __path__=[str(BACKBONES)]),
            "atc_ref.base": _module("atc_ref.base", __path__=[str(BACKBONES / "base")]),
        }
        for name, m in shims.items():
            mp.setitem(sys.modules, name, m)
        mp.setattr(
            importlib.import_module("mmdet.utils"), "get_root_logger", lambda *a, **k: None, raising=False
        )
        try:
            yield importlib.import_module("atc_ref.tome_atc_adapter").ToMeATCViTAdapter
        finally:
            for name in [n for n in sys.modules if n.startswith("atc_ref.")]:
                del sys.modules[name]


@pytest.fixture(scope="module")
def pairs(atc_adapter):
    """(algorithm, ratio) -> the two models, built once for both batch sizes."""
    cache = {}
    return lambda *key: cache[key] if key in cache else cache.setdefault(key, pair(atc_adapter, *key))


def pair(atc_adapter, algorithm: str, ratio: float, seed: int = 0):
    """prunebench's model with trained-looking weights and ATC's with the same weights."""
    torch.manual_seed(seed)
    ours = PrunedViTAdapter(
        embed_dim=DIM,
        depth=12,
        num_heads=HEADS,
        conv_inplane=16,
        method=algorithm,
        pruned_tokens="merge",
        prune_layers=LAYERS,
        keep_ratios=[ratio, ratio**2, ratio**3],
    )
    trained_looking(ours, seed)
    theirs = atc_adapter(
        num_heads=HEADS,
        conv_inplane=16,
        deform_num_heads=6,
        interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
        embed_dim=DIM,
        depth=12,
        mlp_ratio=4,
        qkv_bias=True,
        reduction_loc=LAYERS,
        reduction_ratio=ratio,
        linkage="tome" if algorithm == "tome" else "average",
        proportional_attn=True,
    ).eval()
    state, target = ours.state_dict(), theirs.state_dict()
    assert set(target) - set(state) == {"cls_token"} and set(state) <= set(target)  # the same names
    state["pos_embed"] = torch.cat([target["pos_embed"][:, :1], state["pos_embed"]], dim=1)
    theirs.load_state_dict(state, strict=False)
    return ours, theirs


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("ratio", [0.7, 0.5])
@pytest.mark.parametrize("algorithm", ["tome", "atc"])
def test_outputs_equal_atcs_tome_atc_vit_adapter(pairs, algorithm, ratio, batch):
    ours, theirs = pairs(algorithm, ratio)
    img = torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mine, ref = ours(img), theirs(img)
    counts = [80]
    for _ in LAYERS:
        counts.append(int(ratio * counts[-1]))
    assert [int(m.sum(1)[0]) for m in ours.last_keep_masks] == counts[1:]
    for a, b in zip(mine, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
