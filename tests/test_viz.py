"""`prunebench viz`: keep maps from a tiny PrunedViT config, a run folder's checkpoint, a detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mmcv = pytest.importorskip("mmcv")

from mmengine.logging import HistoryBuffer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from prunebench.cli import app  # noqa: E402
from prunebench.viz import find_checkpoint, load_model, make_keep_maps, preprocess, run_viz  # noqa: E402

TINY = (
    "model = dict(type='PrunedViT', arch='deit-tiny', embed_dim=96, depth=4, num_heads=3, "
    "prune_layers={layers}, keep_ratios={ratios}, out_channels=32)\n"
    "test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(160, 96), keep_ratio=True)]\n"
)


def write_config(path: Path, layers=(1, 2, 3), ratios=(0.7, 0.5, 0.3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TINY.format(layers=list(layers), ratios=list(ratios)))
    return path


@pytest.fixture
def image(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "img.png"
    mmcv.imwrite(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8), str(path))
    return path


def test_preprocess_matches_test_pipeline(tmp_path, image):
    from mmengine.config import Config

    cfg = Config.fromfile(str(write_config(tmp_path / "c.py")))
    x, rgb = preprocess(image, cfg)
    assert rgb.shape == (96, 128, 3)  # 200x150 rescaled into (160, 96) keeping the aspect ratio
    assert x.shape == (1, 3, 96, 128) and abs(float(x.mean())) < 0.5  # normalised, already /32
    bgr = mmcv.imread(str(image))
    expect = (mmcv.imrescale(bgr, (160, 96))[0, 0, ::-1] - np.array([123.675, 116.28, 103.53])) / np.array(
        [58.395, 57.12, 57.375]
    )
    assert np.allclose(x[0, :, 0, 0].numpy(), expect, atol=1e-4)


ADAPTER = (
    "model = dict(type='PrunedViTAdapter', arch='deit-tiny', embed_dim=96, depth=4, num_heads=3, "
    "conv_inplane=16, interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]], "
    "prune_layers=[1, 2, 3], keep_ratios=[0.7, 0.5, 0.3])\n"
)


@pytest.mark.parametrize("family", ["plain", "adapter"])
def test_config_random_weights(tmp_path, image, capsys, family):
    out = tmp_path / "maps.png"
    config = write_config(tmp_path / "c.py")
    if family == "adapter":
        config.write_text(ADAPTER + config.read_text().split("\n", 1)[1])
    result = make_keep_maps(config, image, out)
    n = (96 // 16) * (128 // 16)
    assert result["checkpoint"] is None and result["layers"] == [1, 2, 3]
    assert result["keep"] == pytest.approx([round(r * n) / n for r in (0.7, 0.5, 0.3)])  # fixed rate
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 5_000
    assert run_viz(tmp_path / "c.py", image, tmp_path / "m2.png") == 0
    assert "weights are RANDOM" in capsys.readouterr().err


def test_run_folder_checkpoint(tmp_path, image):
    run = tmp_path / "sweep" / "run1"
    write_config(run / "config.py")
    model, backbone, _, ckpt = load_model(run)
    assert ckpt is None
    state = {
        f"backbone.{k}": torch.full_like(v, 0.5) if k == "pos_embed" else v
        for k, v in backbone.state_dict().items()
    }
    (run / "work_dir").mkdir()
    older = run / "work_dir" / "epoch_1.pth"
    torch.save({"state_dict": {}, "meta": {}}, older)
    newest = run / "work_dir" / "epoch_2.pth"
    meta = {
        "epoch": 2,
        "message_hub": {"log_scalars": {"loss": HistoryBuffer([1.0], [1])}},
        "lr": np.float64(1e-4),
    }
    torch.save({"state_dict": state, "meta": meta}, newest)
    (run / "work_dir" / "last_checkpoint").write_text("/other/machine/work_dir/epoch_2.pth")
    assert find_checkpoint(run) == newest
    _, backbone, _, ckpt = load_model(run)  # weights_only=True loading of an MMEngine-style checkpoint
    assert ckpt == newest and torch.all(backbone.pos_embed == 0.5)
    result = make_keep_maps(run, image, tmp_path / "maps.png")
    assert result["checkpoint"] == newest and len(result["keep"]) == 3


def test_bad_inputs(tmp_path, image, capsys):
    assert run_viz(tmp_path / "nowhere", image, tmp_path / "o.png") == 2
    assert "no such config" in capsys.readouterr().err
    dense = write_config(tmp_path / "dense.py", layers=(), ratios=())
    assert run_viz(dense, image, tmp_path / "o.png") == 2
    assert "no pruning layers" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert run_viz(write_config(tmp_path / "c.py"), bad, tmp_path / "o.png") == 2
    assert "not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_cli_viz_with_detector_config(tmp_path, image):
    """The run-folder path of a real sweep: a PrunedMaskRCNN config built on the CPU base config."""
    base = Path(__import__("prunebench").__file__).parent / "configs" / "mask_rcnn_vit_cpu.py"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.py").write_text(
        f"_base_ = [{str(base)!r}]\n"
        "model = dict(backbone=dict(prune_layers=[1, 3], keep_ratios=[0.7, 0.49], rate='dynamic'))\n"
        "test_dataloader = dict(dataset=dict(pipeline=[dict(type='LoadImageFromFile'), "
        "dict(type='Resize', scale=(128, 128), keep_ratio=True)]))\n"
    )
    out = tmp_path / "det.png"
    res = CliRunner().invoke(app, ["viz", str(run), str(image), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 5_000


def test_unusable_checkpoints(tmp_path, image, capsys):
    import fractions

    run = tmp_path / "run"
    write_config(run / "config.py")
    (run / "work_dir").mkdir()
    ckpt = run / "work_dir" / "epoch_1.pth"
    torch.save({"state_dict": {"other.weight": torch.zeros(2)}}, ckpt)
    assert run_viz(run, image, tmp_path / "o.png") == 2
    assert "none of its weights fit this model" in capsys.readouterr().err
    torch.save({"state_dict": {}, "meta": {"odd": fractions.Fraction(1, 2)}}, ckpt)  # not weights-only safe
    assert run_viz(run, image, tmp_path / "o.png") == 2
    err = capsys.readouterr().err
    assert "cannot load the checkpoint" in err and "Fraction" in err
