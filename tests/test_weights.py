"""ImageNet DeiT initialisation: the accepted checkpoint formats, conversion, errors, the
`prunebench weights` check and the grid's `backbone.pretrained`."""

from __future__ import annotations

import pytest
import timm
import torch
from typer.testing import CliRunner

from prunebench.axes import REFERENCE_LAYERS, REFERENCE_RATIOS, TIMM_NAMES
from prunebench.cli import app
from prunebench.grid import GridError, load_grid
from prunebench.models import PrunedViT, PrunedViTAdapter
from prunebench.models.deit_weights import WeightsError, load_pretrained


@pytest.fixture(scope="module")
def deit(tmp_path_factory):
    """Random-weight timm DeiT-Tiny and DeiT-Small saved in every accepted format."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("deit")
    files = {}
    for arch in ("deit-tiny", "deit-small"):
        torch.manual_seed(0)
        sd = timm.create_model(TIMM_NAMES[arch], pretrained=False).state_dict()
        files[arch] = sd
        torch.save({"model": sd, "epoch": 299}, root / f"{arch}-official.pth")  # DeiT release
        torch.save(sd, root / f"{arch}-timm.pth")
        torch.save(sd, root / f"{arch}-timm.bin")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(root / f"{arch}.safetensors"))
    return root, files


def pruned(arch: str, **kw) -> PrunedViT:
    return PrunedViT(arch=arch, prune_layers=REFERENCE_LAYERS, keep_ratios=REFERENCE_RATIOS, **kw)


@pytest.mark.parametrize("fmt", ["official.pth", "timm.pth", "timm.bin", "safetensors"])
@pytest.mark.parametrize("arch", ["deit-tiny", "deit-small"])
def test_every_format_loads_every_vit_tensor(deit, arch, fmt):
    root, files = deit
    sep = "." if fmt == "safetensors" else "-"
    model = pruned(arch, pretrained=str(root / f"{arch}{sep}{fmt}"))
    fresh_pyramid = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("pyramid.")}
    model.init_weights()
    src, got = files[arch], model.state_dict()
    vit_keys = [k for k in got if not k.startswith(("pyramid.", "selectors."))]
    assert len(vit_keys) == 2 + 1 + 12 * 12 + 2  # patch embedding, pos_embed, blocks, final norm
    for k in vit_keys:
        expected = src[k][:, 1:] if k == "pos_embed" else src[k]  # class-token slot cut off
        assert torch.equal(got[k], expected), k
    for k, v in fresh_pyramid.items():
        assert torch.equal(got[k], v), k


def test_adapter_loads_every_vit_tensor_and_keeps_its_adapter_fresh(deit):
    """PrunedViTAdapter from an ImageNet DeiT file: patch embedding, pos_embed and blocks come from
    it; the spatial prior, interactions, level embedding, output norms and selectors start fresh
    (DeiT's final norm, which the adapter has no use for, is ignored)."""
    root, files = deit
    model = PrunedViTAdapter(
        arch="deit-tiny",
        prune_layers=REFERENCE_LAYERS,
        keep_ratios=REFERENCE_RATIOS,
        pretrained=str(root / "deit-tiny-official.pth"),
    )
    fresh = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(PrunedViTAdapter.FRESH)}
    model.init_weights()
    got = model.state_dict()
    vit_keys = [k for k in got if not k.startswith(PrunedViTAdapter.FRESH)]
    assert len(vit_keys) == 2 + 1 + 12 * 12
    for k in vit_keys:
        expected = files["deit-tiny"][k][:, 1:] if k == "pos_embed" else files["deit-tiny"][k]
        assert torch.equal(got[k], expected), k
    for k, v in fresh.items():
        assert torch.equal(got[k], v), k
    report = load_pretrained(model, root / "deit-tiny-official.pth")
    assert "norm.weight" in report.ignored and any(k.startswith("spm.") for k in report.fresh)


def test_report_lists_loaded_fresh_and_ignored(deit):
    root, _ = deit
    report = load_pretrained(pruned("deit-small"), root / "deit-small-official.pth")
    assert {"cls_token", "head.weight", "head.bias"} <= set(report.ignored)
    assert {k.split(".")[0] for k in report.fresh} == {"pyramid", "selectors"}
    assert "pos_embed" in report.loaded and "norm.weight" in report.loaded
    line = report.line()
    assert f"loaded {len(report.loaded)} tensors" in line and "pyramid, selectors" in line
    assert "1 prefix slot(s) cut" in line


def test_pos_embed_is_interpolated_to_another_pretraining_grid(deit):
    root, files = deit
    model = pruned("deit-tiny", pretrain_img_size=320)  # 20x20 grid instead of 14x14
    report = load_pretrained(model, root / "deit-tiny-timm.pth")
    assert model.pos_embed.shape == (1, 400, 192)
    assert "interpolated 14x14 -> 20x20" in report.line()
    src = files["deit-tiny"]["pos_embed"][:, 1:].reshape(1, 14, 14, 192)
    corner = model.pos_embed.detach().reshape(1, 20, 20, 192)[0, 0, 0]
    assert torch.allclose(corner, src[0, 0, 0], atol=0.05)  # same field, resampled


def test_wrong_arch_names_key_and_shapes(deit):
    root, _ = deit
    with pytest.raises(WeightsError, match=r"pos_embed|patch_embed.proj.weight") as err:
        load_pretrained(pruned("deit-small"), root / "deit-tiny-official.pth")
    assert "(1, 197, 192)" in str(err.value) or "(192, 3, 16, 16)" in str(err.value)
    assert "Fix:" in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(WeightsError, match="checkpoint file not found"):
        load_pretrained(pruned("deit-tiny"), tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_pretrained(pruned("deit-tiny"), bad)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="the file is empty .0 bytes.. Fix: download"):
        load_pretrained(pruned("deit-tiny"), empty)
    partial = tmp_path / "partial.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(192, 3, 16, 16)}, partial)
    with pytest.raises(WeightsError, match="ViT tensors of the model are not in the file"):
        load_pretrained(pruned("deit-tiny"), partial)


def test_weights_command(deit, tmp_path):
    root, _ = deit
    runner = CliRunner()
    ok = runner.invoke(app, ["weights", str(root / "deit-tiny.safetensors"), "--arch", "deit-tiny"])
    assert ok.exit_code == 0, ok.output
    assert "loaded" in ok.output and "fresh" in ok.output and "ignored" in ok.output
    assert "backbone.pretrained:" in ok.output
    bad = runner.invoke(app, ["weights", str(root / "deit-tiny.safetensors"), "--arch", "deit-small"])
    assert bad.exit_code == 1 and "would not load" in bad.output
    adapter = runner.invoke(
        app, ["weights", str(root / "deit-tiny.safetensors"), "--arch", "deit-tiny", "--backbone", "adapter"]
    )
    assert adapter.exit_code == 0, adapter.output
    assert "PrunedViTAdapter deit-tiny" in adapter.output and "interactions" in adapter.output


def test_detector_init_loads_pretrained_backbone(deit):
    """MMEngine's init (what a dense run's Runner calls) loads the DeiT file into the backbone."""
    from prunebench.bench import build_detector
    from prunebench.configs import TEMPLATE_DIR as CONFIGS

    root, files = deit
    model = build_detector(
        "deit-tiny", str(CONFIGS / "mask_rcnn_vit.py"), pretrained=str(root / "deit-tiny-official.pth")
    )
    model.init_weights()
    assert torch.equal(model.backbone.blocks[5].mlp.fc1.weight, files["deit-tiny"]["blocks.5.mlp.fc1.weight"])


GRID = """\
name: t
base: mask-rcnn-vit-cpu
backbone: {{prune_layers: [1, 2], keep_ratios: [0.7, 0.5], pretrained: {path}}}
schedule: {{dense: {{iters: 2}}, finetune: {{iters: 1}}}}
"""


def test_grid_pretrained_path(tmp_path, monkeypatch):
    from prunebench.spec import expand

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "deit.pth").write_bytes(b"x")
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(GRID.format(path="ckpt/deit.pth"))
    monkeypatch.chdir("/")  # relative to the grid file, not the working directory
    grid = load_grid(grid_file)
    assert grid.backbone["pretrained"] == str(tmp_path / "ckpt" / "deit.pth")
    runs, _ = expand(grid)
    dense = [r for r in runs if r.stage == "dense"]
    assert dense[0].backbone_args["pretrained"] == str(tmp_path / "ckpt" / "deit.pth")
    assert all("pretrained" not in r.backbone_args for r in runs if r.stage == "finetune")
    grid_file.write_text(GRID.format(path="ckpt/missing.pth"))
    with pytest.raises(GridError) as err:
        load_grid(grid_file)
    assert f"{grid_file}:3: backbone.pretrained" in str(err.value) and "Fix:" in str(err.value)
