"""Official uzh-rpg/svit checkpoints (mmcv 1.x runner format) -> prunebench (``prunebench convert``).

The official-format files are made here from random-weight prunebench models (tests/official_format.py)
and checked against the official models' key lists; converting them back must give every tensor
and the same outputs."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from official_format import (
    CLASSES,
    SLIM_RECORD,
    SLIM_SVIT_RECORD,
    SVIT_CELL,
    official_backbone_state,
    official_config,
    official_state,
    save_official,
    slim_detector,
    slim_official_backbone,
)
from prunebench.axes import REFERENCE_LAYERS, REFERENCE_RATIOS
from prunebench.bench import synthetic_data
from prunebench.cli import app
from prunebench.convert import build_detector, convert_checkpoint, detector_config, load_strictly
from prunebench.models import PrunedViTAdapter
from prunebench.models.official import ConversionError, convert_official
from prunebench.models.official_settings import training_config

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def slim_models():
    """The slim dense and SViT detectors, random weights (built once: building takes seconds)."""
    return {False: slim_detector(SLIM_RECORD), True: slim_detector(SLIM_SVIT_RECORD)}


def official_file(tmp_path: Path, model: nn.Module, svit: bool) -> Path:
    state = official_state(model.state_dict(), svit)
    return save_official(
        tmp_path / "official.pth", state, CLASSES, official_config(slim_official_backbone(svit), 3)
    )


def outputs(model: nn.Module) -> tuple:
    img = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats = model.backbone(img)
        masks = list(model.backbone.last_keep_masks)
        preds = model.test_step(synthetic_data((64, 96)))[0].pred_instances
    return feats, masks, preds


# --- the official format of these tests is the official one -------------------------------------


@pytest.mark.parametrize(
    "svit, keys_file",
    [(False, "official_vit_adapter_s_keys.json"), (True, "official_svit_adapter_s_keys.json")],
    ids=["vit-adapter-s", "svit-adapter-s"],
)
def test_fabricated_checkpoints_have_the_official_names_and_shapes(svit, keys_file):
    cell = dict(prune_layers=REFERENCE_LAYERS, keep_ratios=REFERENCE_RATIOS, **SVIT_CELL) if svit else {}
    ours = official_backbone_state(PrunedViTAdapter(arch="deit-small", **cell).state_dict(), svit)
    official = json.loads((DATA / keys_file).read_text())["keys"]
    assert {k: list(v.shape) for k, v in ours.items()} == official


# --- round trip: prunebench -> official names -> convert -> prunebench ------------------------


@pytest.mark.parametrize("svit", [False, True], ids=["dense", "svit"])
def test_round_trip_every_tensor_arrives_and_outputs_are_equal(tmp_path, slim_models, svit):
    record = SLIM_SVIT_RECORD if svit else SLIM_RECORD
    original = slim_models[svit]
    src = official_file(tmp_path, original, svit)
    got = convert_checkpoint(src, tmp_path / "converted.pth")
    assert got["backbone"] == record
    assert got["cell"] == ("preserve-react-dyn-mlp" if svit else "dense")
    assert got["settings_from"] == "meta.config" and got["num_classes"] == 3 and got["zoo"] is None

    ckpt = torch.load(tmp_path / "converted.pth", weights_only=True)
    assert set(ckpt) == {"meta", "state_dict"}  # the optimizer state is dropped
    assert ckpt["meta"]["dataset_meta"] == {"classes": CLASSES}
    assert ckpt["meta"]["prunebench"] == got
    want = original.state_dict()
    assert set(ckpt["state_dict"]) == set(want)
    for key, value in want.items():
        if key.endswith(".calibrated"):
            assert ckpt["state_dict"][key].item() is True, key
        else:
            assert torch.equal(ckpt["state_dict"][key], value), key

    converted = build_detector(detector_config(got["backbone"], got["num_classes"]))
    load_strictly(converted, ckpt["state_dict"], tmp_path / "converted.pth")
    (f0, m0, p0), (f1, m1, p1) = outputs(original), outputs(converted.eval())
    assert all(torch.equal(a, b) for a, b in zip(f0, f1))
    assert len(m0) == (3 if svit else 0) and all(torch.equal(a, b) for a, b in zip(m0, m1))
    if svit:  # the selectors really prune, so equal outputs mean equal selectors
        assert 0 < float(torch.stack(m0).float().mean()) < 1
    for field in ("bboxes", "scores", "labels", "masks"):
        assert torch.equal(getattr(p0, field), getattr(p1, field)), field


def test_converted_selectors_count_as_trained(tmp_path, slim_models):
    """No first-batch calibration runs on them, even in a model built to calibrate fresh selectors."""
    src = official_file(tmp_path, slim_models[True], svit=True)
    convert_checkpoint(src, tmp_path / "c.pth")
    state = torch.load(tmp_path / "c.pth", weights_only=True)["state_dict"]
    backbone_args = {k: v for k, v in SLIM_SVIT_RECORD.items() if k != "family"}
    backbone = PrunedViTAdapter(**backbone_args, selector_init="calibrated")
    backbone.load_state_dict(
        {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    )
    assert all(sel.calibrated.item() for sel in backbone.selectors)
    before = {k: v.clone() for k, v in backbone.selectors.state_dict().items()}
    backbone.train()(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in backbone.selectors.state_dict().items())


@pytest.mark.parametrize(
    "file_name, svit, zoo",
    [("vit-adapter-s-3x.pth", False, "ViT-Adapter-S"), ("svit-adapter-s-0.33x.pth", True, "SViT-Adapter-S")],
)
def test_released_deit_small_models_convert_from_their_weights_alone(tmp_path, file_name, svit, zoo):
    """Without meta.config: arch from the width, the released cell from 9 selectors, the class slot of
    pos_embed cut, a cls_token ignored; the released model named by its file."""
    cell = dict(prune_layers=REFERENCE_LAYERS, keep_ratios=REFERENCE_RATIOS, **SVIT_CELL) if svit else {}
    record = {"family": "adapter", "arch": "deit-small", **cell}
    torch.manual_seed(0)
    model = build_detector(detector_config(record, len(CLASSES)))
    state = official_state(model.state_dict(), svit)
    state["backbone.cls_token"] = torch.zeros(1, 1, 384)
    src = save_official(tmp_path / file_name, state, CLASSES)
    got = convert_checkpoint(src, tmp_path / "c.pth")
    assert got["backbone"] == record and got["zoo"] == zoo
    assert got["settings_from"].startswith("the weights")
    converted = torch.load(tmp_path / "c.pth", weights_only=True)["state_dict"]
    assert "backbone.cls_token" not in converted
    assert torch.equal(converted["backbone.pos_embed"], model.state_dict()["backbone.pos_embed"])


@pytest.mark.parametrize("config", [True, False], ids=["meta.config", "weights"])
def test_no_reactivation_cell_holds_three_selectors_for_their_stages(tmp_path, config):
    """inherit_mask: selectors 0, 1, 2 before blocks 4, 7, 10, each held for its stage."""
    stage_ratios = [0.7, 0.49, 0.343]
    cell = dict(SVIT_CELL, reactivation=False)
    ours = PrunedViTAdapter(
        arch="deit-tiny", prune_layers=REFERENCE_LAYERS, keep_ratios=REFERENCE_RATIOS, **cell
    )
    state = {f"backbone.{k}": v for k, v in official_backbone_state(ours.state_dict(), svit=True).items()}
    state["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(len(CLASSES) + 1, 8)
    backbone = dict(type="SelectiveViTAdapter", embed_dim=192, depth=12, num_heads=3, inherit_mask=True)
    text = official_config({**backbone, "keep_ratio": stage_ratios, "version": 0}, 3) if config else None
    converted = convert_official(save_official(tmp_path / "t.pth", state, CLASSES, text))
    args = converted.record["backbone"]
    assert args["reactivation"] is False and args["keep_ratios"] == [
        r for r in stage_ratios for _ in range(3)
    ]
    assert args["prune_layers"] == REFERENCE_LAYERS and converted.record["cell"] == "preserve-noreact-dyn-mlp"
    want = {f"backbone.{k}" for k in ours.state_dict() if not k.endswith(".calibrated")}
    assert set(converted.state_dict) - {"roi_head.bbox_head.fc_cls.weight"} == want


def test_training_config_reads_literals_only():
    text = (
        "model = dict(type='MaskRCNN', backbone=dict(type='ViTAdapter', embed_dim=192, "
        "window_attn=[False] * 12, keep={'a': dict(b=1)}, cells=[dict(x=(1, 2))]))\n"
        "import os\nos.system('echo never run')\n"
    )
    backbone = training_config({"config": text})["backbone"]
    assert backbone["embed_dim"] == 192 and backbone["keep"] == {"a": {"b": 1}}
    assert backbone["cells"] == [{"x": (1, 2)}]
    assert backbone["window_attn"] not in ([False] * 12, None)  # not a literal: not evaluated
    assert training_config({"config": "not python ("}) is None and training_config({}) is None


# --- errors -----------------------------------------------------------------------------------


@pytest.fixture
def svit_state(slim_models):
    """The slim SViT detector's state in the official names, to break."""
    return official_state(slim_models[True].state_dict(), svit=True)


def _convert_error(tmp_path, state) -> str:
    src = save_official(
        tmp_path / "bad.pth", state, CLASSES, official_config(slim_official_backbone(True), 3)
    )
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(src, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()
    return str(err.value)


def test_a_missing_key_is_an_error_naming_it(tmp_path, svit_state):
    state = svit_state
    del state["backbone.blocks.4.TransformerEncoderLayer.linear1.weight"]
    msg = _convert_error(tmp_path, state)
    assert "bad.pth: does not fit the model: 1 missing: backbone.blocks.4.mlp.fc1.weight. Fix:" in msg


def test_a_left_over_key_is_an_error_naming_it(tmp_path, svit_state):
    state = svit_state
    state["backbone.selective_modules.3.norm.weight"] = torch.ones(96)
    state["backbone.fc_norm.weight"] = torch.ones(96)
    msg = _convert_error(tmp_path, state)
    assert "2 left over: backbone.selectors.3.norm.weight, backbone.fc_norm.weight" in msg


def test_a_wrong_shape_is_an_error_naming_key_and_shapes(tmp_path, svit_state):
    state = svit_state
    state["backbone.selective_modules.0.mlp.fc1.weight"] = torch.zeros(48, 96)
    msg = _convert_error(tmp_path, state)
    assert "1 of the wrong shape: backbone.selectors.0.fc1.weight (48, 96) vs (24, 96) in the model" in msg


def test_many_missing_keys_list_the_first_ten(tmp_path, svit_state):
    state = {k: v for k, v in svit_state.items() if not k.startswith("backbone.blocks.5.")}
    msg = _convert_error(tmp_path, state)
    listed = msg.split("12 missing: ")[1].split(". Fix")[0]
    assert listed.endswith(", ...") and len(listed.split(", ")) == 11


def test_a_deit_tiny_checkpoint_with_arch_deit_small_says_so(tmp_path):
    tiny = PrunedViTAdapter(arch="deit-tiny").state_dict()
    state = {f"backbone.{k}": v for k, v in official_backbone_state(tiny, svit=False).items()}
    state["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(81, 1024)
    src = save_official(tmp_path / "vit-adapter-t-3x.pth", state, [f"c{i}" for i in range(80)])
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "o.pth"), "--arch", "deit-small"])
    assert result.exit_code == 2, result.output
    msg = " ".join(result.output.split())
    assert (
        "a deit-tiny checkpoint (backbone.patch_embed.proj.weight: 192 channels), not deit-small (384)" in msg
    )
    assert "Fix: pass --arch deit-tiny" in msg and not (tmp_path / "o.pth").exists()


def test_not_a_checkpoint_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "x.pth").write_text("hello")
    with pytest.raises(ConversionError, match=r"x.pth: not a checkpoint torch.load reads"):
        convert_official(tmp_path / "x.pth")
    torch.save({"model": {}}, tmp_path / "y.pth")
    with pytest.raises(ConversionError, match=r"y.pth: expected an MMDetection checkpoint .* found model"):
        convert_official(tmp_path / "y.pth")
