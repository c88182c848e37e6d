"""ViT-B/L and DINOv2 backbones: the reference schedule scaled to depth, their checkpoint formats
(timm safetensors, MAE, DeiT-III, DINOv2) through ``prunebench weights`` and into a run."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from rich.console import Console

from prunebench.axes import ARCHS, REFERENCE_LAYERS, REFERENCE_RATIOS, reference_schedule, stages
from prunebench.models import PrunedViT, PrunedViTAdapter
from prunebench.models.deit_weights import WeightsError, convert_deit
from prunebench.models.weights_report import check_weights

LARGE_SCHEDULE = (list(range(6, 24)), [0.7] * 6 + [0.49] * 6 + [0.343] * 6)


def test_reference_schedule_scaled_to_depth_and_presets_follow():
    from prunebench.presets import backbone_args

    assert reference_schedule(12) == (REFERENCE_LAYERS, REFERENCE_RATIOS)
    assert reference_schedule(24) == LARGE_SCHEDULE
    assert stages(LARGE_SCHEDULE[1]) == [0] * 6 + [1] * 6 + [2] * 6  # three stages at 1/4, 1/2, 3/4 depth
    evit = backbone_args("evit", {"arch": "vit-large"})  # EViT: blocks 4, 7, 10 of 12 -> 7-8, 13-14, 19-20
    assert evit["prune_layers"] == [6, 7, 12, 13, 18, 19] and evit["keep_ratios"] == [
        0.7,
        0.7,
        0.49,
        0.49,
        0.343,
        0.343,
    ]
    assert backbone_args("evit", {"arch": "deit-small"})["prune_layers"] == [3, 6, 9]


def test_grid_default_schedule_follows_the_arch_depth(tmp_path):
    from prunebench.grid import load_grid

    grid = tmp_path / "g.yaml"
    grid.write_text(
        "name: g\nbase: mask-rcnn-vit\nbackbone: {arch: vit-large}\n"
        "data: {type: synthetic, num_train: 2, num_val: 2}\naxes: {rate: [fixed]}\n"
    )
    bb = load_grid(grid).backbone
    assert (bb["prune_layers"], bb["keep_ratios"]) == LARGE_SCHEDULE


@pytest.mark.parametrize("cls", [PrunedViT, PrunedViTAdapter])
@pytest.mark.parametrize(
    "axes",
    [
        dict(pruned_tokens="preserve", reactivation=True, rate="dynamic"),
        dict(pruned_tokens="discard", reactivation=False, rate="fixed"),
        dict(pruned_tokens="preserve", reactivation=False, rate="dynamic"),
    ],
)
def test_gathered_inference_equals_masked_path_on_24_blocks(cls, axes):
    """vit-large's depth (24 blocks, narrow) with the scaled schedule; the adapter in ViT-Adapter-L's
    four groups of six blocks."""
    torch.manual_seed(0)
    layers, ratios = reference_schedule(24)
    kw = dict(arch="vit-large", embed_dim=32, num_heads=2, **axes)
    model = cls(prune_layers=layers, keep_ratios=ratios, **kw).eval()
    assert len(model.blocks) == 24
    if cls is PrunedViTAdapter:
        assert model.interaction_indexes == [[0, 5], [6, 11], [12, 17], [18, 23]]
    img = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        gathered = model(img)
        kept = [m.clone() for m in model.last_keep_masks]
        model.masked_eval = True
        masked = model(img)
    assert len(kept) == 18 and 0 < kept[-1].float().mean() < 1
    assert all(torch.equal(a, b) for a, b in zip(kept, model.last_keep_masks))
    for g, m in zip(gathered, masked):
        torch.testing.assert_close(g, m, atol=2e-5, rtol=1e-4)


def small(**kw) -> PrunedViT:
    return PrunedViT(arch="vit-base", embed_dim=32, depth=2, num_heads=2, **kw)


def test_deit3_layer_scale_names_and_a_global_pool_file_without_final_norm():
    """DeiT-III's ``gamma_1``/``gamma_2`` load as LayerScale; a MAE fine-tuned file (``fc_norm``, no
    ``norm``) loads with a fresh final norm; LayerScale tensors for a model without it are an error
    that names the key and the fix."""
    src = small(layer_scale=1e-6).state_dict()
    deit3 = {k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"): v for k, v in src.items()}
    deit3["cls_token"] = torch.zeros(1, 1, 32)
    target = small(layer_scale=1e-6)
    out, report = convert_deit(deit3, target.state_dict(), target.pretrain_grid, "deit3.pth", target.FRESH)
    assert torch.equal(out["blocks.1.ls2.gamma"], src["blocks.1.ls2.gamma"])
    mae = {k: v for k, v in small().state_dict().items() if not k.startswith(("norm.", "pyramid."))}
    mae["fc_norm.weight"] = torch.ones(32)
    out, report = convert_deit(mae, small().state_dict(), 14, "mae.pth", PrunedViT.FRESH)
    assert "norm.weight" not in out and any("final norm" in n for n in report.notes)
    with pytest.raises(
        WeightsError, match=r"deit3.pth: blocks.0.ls1.gamma .*LayerScale.*backbone.layer_scale"
    ):
        convert_deit(deit3, small().state_dict(), 14, "deit3.pth", PrunedViT.FRESH)


def weights_output(path: Path, arch: str, family: str = "plain") -> tuple[int, str]:
    out = io.StringIO()
    code = check_weights(path, arch, Console(file=out, width=400), family)
    return code, out.getvalue()


def run_backbone(tmp_path: Path, arch: str, pretrained: Path, family: str = "plain"):
    """The backbone a dense run builds from its written config.py, weights loaded as the job does,
    and its finetune's pruning layers."""
    from mmdet.registry import MODELS

    from prunebench.sweep import prepare

    grid = tmp_path / "g.yaml"
    grid.write_text(
        f"name: a\nbase: mask-rcnn-vit\nbackbone: {{family: {family}, arch: {arch}, pretrained: {pretrained}}}\n"
        f"data: {{type: synthetic, num_train: 2, num_val: 2, image_size: [64, 64], num_classes: 2, "
        f"cache_dir: {tmp_path / 'cache'}}}\naxes: {{rate: [dynamic]}}\n"
    )
    s = prepare(grid, tmp_path / "results")
    dense = next(r for r in s.runs if r.stage == "dense")  # the run that loads ImageNet weights
    cfg = Config.fromfile(str(s.sweep_dir / dense.run_id / "config.py"))
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    return backbone, next(r for r in s.runs if r.stage == "finetune").backbone_args["prune_layers"]


@pytest.mark.slow
def test_vit_large_checkpoints_in_timm_safetensors_and_mae_formats(tmp_path):
    """A timm ViT-L (``pretrained=False``) saved as timm's hub safetensors and as MAE's
    ``{'model': ...}`` release: `prunebench weights` loads every ViT tensor, and so does a run."""
    import timm
    from safetensors.torch import save_file

    vit = timm.create_model("vit_large_patch16_224", pretrained=False)
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("head.")}}, tmp_path / "mae.pth")
    del vit
    for name in ("model.safetensors", "mae.pth"):
        code, text = weights_output(tmp_path / name, "vit-large")
        assert code == 0 and "every ViT tensor of vit-large comes from the file" in text, text
    backbone, prune_layers = run_backbone(tmp_path, "vit-large", tmp_path / "mae.pth")
    assert len(backbone.blocks) == 24 and prune_layers == LARGE_SCHEDULE[0]
    assert torch.equal(backbone.blocks[23].mlp.fc2.weight, state["blocks.23.mlp.fc2.weight"])
    with torch.no_grad():
        assert [m.shape[1] for m in backbone.eval()(torch.randn(1, 3, 64, 64))] == [256] * 4


def dinov2_small_file(tmp_path: Path) -> tuple[Path, dict]:
    """DINOv2's release format (``dinov2_vits14_pretrain.pth``): a plain state dict, patch 14,
    37x37 position grid plus the class slot, LayerScale, ``mask_token``."""
    import timm

    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    state = {**vit.state_dict(), "mask_token": torch.zeros(1, 384)}
    assert state["pos_embed"].shape == (1, 1370, 384) and "blocks.0.ls1.gamma" in state
    torch.save(state, tmp_path / "dinov2_vits14_pretrain.pth")
    return tmp_path / "dinov2_vits14_pretrain.pth", state


@pytest.mark.parametrize("family", ["plain", "adapter"])
def test_dinov2_small_checkpoint_loads_on_both_families(tmp_path, family):
    path, state = dinov2_small_file(tmp_path)
    code, text = weights_output(path, "dinov2-small", family)
    assert code == 0 and "patch kernel resized 14x14 -> 16x16" in text, text
    backbone, prune_layers = run_backbone(tmp_path, "dinov2-small", path, family)
    assert prune_layers == REFERENCE_LAYERS
    assert backbone.pretrain_grid == 37 and backbone.patch_embed.proj.weight.shape[-1] == 16
    assert torch.equal(backbone.blocks[5].ls2.gamma, state["blocks.5.ls2.gamma"])
    torch.testing.assert_close(backbone.pos_embed, state["pos_embed"][:, 1:])
    with torch.no_grad():
        maps = backbone.eval()(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_a_wrong_format_names_the_file_and_what_it_holds(tmp_path):
    path, _ = dinov2_small_file(tmp_path)
    code, text = weights_output(path, "deit-small")  # DINOv2 weights for a DeiT without LayerScale
    assert code == 1 and str(path) in text
    assert "a ViT of width 384, 12 blocks, patch 14, LayerScale" in text and "dinov2" in text
    det = tmp_path / "detector.pth"
    torch.save(
        {"state_dict": {"backbone.patch_embed.proj.weight": torch.zeros(1), "neck.x": torch.zeros(1)}}, det
    )
    code, text = weights_output(det, "vit-base")
    assert (
        code == 1
        and str(det) in text
        and "no ViT patch embedding; its top-level modules: backbone, neck" in text
    )


def test_archs_known_everywhere():
    assert ARCHS["vit-large"] == (1024, 24, 16) and ARCHS["dinov2-small"] == (384, 12, 6)
    adapter = PrunedViTAdapter(arch="vit-large", embed_dim=64, depth=24, num_heads=2)
    assert adapter.interaction_indexes == [[0, 5], [6, 11], [12, 17], [18, 23]]
    assert adapter.interactions[0].injector.attn.n_heads == 16  # ViT-Adapter-L's deformable heads


@pytest.mark.parametrize(
    "method, cls",
    [(m, PrunedViT) for m in ("svit", "dynamicvit", "evit", "evo-vit", "ats")] + [("evit", PrunedViTAdapter)],
)
def test_every_method_preset_runs_on_a_24_block_dinov2_large(method, cls):
    """Presets on a 24-block arch (DINOv2-L's depth and LayerScale, narrow): their schedule scaled,
    a training step with a keep-ratio loss or pruning, and a pruned inference."""
    from prunebench.presets import backbone_args

    args = backbone_args(method, {"arch": "dinov2-large"})
    if "prune_layers" not in args:  # the selector presets take the grid's schedule: the reference
        args["prune_layers"], args["keep_ratios"] = reference_schedule(24)
    assert min(args["prune_layers"]) >= 6
    torch.manual_seed(0)
    model = cls(**{**args, "embed_dim": 32, "num_heads": 2})
    assert len(model.blocks) == 24 and model.blocks[0].ls1.gamma.shape == (32,)
    img = torch.randn(2, 3, 64, 64)
    sum(m.mean() for m in model(img)).backward()
    model.eval()
    with torch.no_grad():
        model(img)
    assert len(model.last_keep_masks) == len(args["prune_layers"])
    assert model.last_keep_masks[-1].float().mean() < 1
