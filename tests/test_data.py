"""Synthetic COCO set, its cache, the COCO subset builder and the COCO folder check."""

import json
import threading

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from prunebench import data

SMALL = dict(num_train=8, num_val=4, image_size=(64, 80), num_classes=6, max_objects=3, seed=1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    data.make_synthetic_coco(out, **SMALL)
    return out


def _coco(root, split):
    return COCO(str(root / "annotations" / f"instances_{split}.json"))


def test_synthetic_layout_and_coco_api(synth):
    for split, n in (("train", 8), ("val", 4)):
        coco = _coco(synth, split)
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(data.SHAPES)
        assert len(coco.getImgIds()) == n
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(synth / split / img["file_name"]) as im:
                assert im.size == (80, 64)
            assert coco.getAnnIds(imgIds=img["id"])  # every image has an object
    assert data.check_coco(synth, "annotations/instances_val.json", "val") == list(data.SHAPES)


def test_synthetic_is_deterministic(synth, tmp_path):
    data.make_synthetic_coco(tmp_path / "again", **SMALL)
    data.make_synthetic_coco(tmp_path / "other", **{**SMALL, "seed": 2})
    for split in ("train", "val"):
        ann = f"annotations/instances_{split}.json"
        assert (synth / ann).read_bytes() == (tmp_path / "again" / ann).read_bytes()
        assert (synth / ann).read_bytes() != (tmp_path / "other" / ann).read_bytes()
        for f in sorted((synth / split).iterdir()):
            twin = tmp_path / "again" / split / f.name
            assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(twin)))


def test_masks_match_pixels_and_boxes_are_tight(synth):
    coco = _coco(synth, "train")
    for img_info in coco.loadImgs(coco.getImgIds()):
        img = np.asarray(Image.open(synth / "train" / img_info["file_name"])).astype(int)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_info["id"]))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        union = np.any(masks, 0)
        bg = np.median(img[~union], 0)
        assert np.abs(img[~union] - bg).max() <= 2 * data._NOISE  # nothing drawn outside the masks
        for a, m in zip(anns, masks):
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert a["bbox"] == list(mask_utils.toBbox(coco.annToRLE(a)))
            assert a["area"] == m.sum() and a["iscrowd"] == 0
            assert min(a["bbox"][2:]) >= 0.35 * data.SYNTH_DEFAULTS["min_size"] * 64
            colour = np.median(img[m], 0)
            assert np.abs(img[m] - colour).max() <= 2 * data._NOISE  # one flat colour inside
            ring = np.zeros_like(m)
            y0, y1, x0, x1 = max(ys.min() - 1, 0), ys.max() + 2, max(xs.min() - 1, 0), xs.max() + 2
            ring[y0:y1, x0:x1] = True
            ring &= ~union
            # the shape's colour ends where the mask ends
            assert np.abs(img[ring] - colour).sum(1).min() >= 200 - 6 * data._NOISE


def test_ensure_synthetic_caches_and_reuses(tmp_path, monkeypatch):
    calls = []
    real = data.make_synthetic_coco
    monkeypatch.setattr(data, "make_synthetic_coco", lambda out, **kw: calls.append(kw) or real(out, **kw))
    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))
    params = {"num_train": 3, "num_val": 2, "image_size": 48}
    root = data.ensure_synthetic(params)
    assert root.parent == tmp_path / "cache" and root.name.startswith("synthetic-")
    assert data.check_coco(root, "annotations/instances_train.json", "train") == [
        "circle",
        "square",
        "triangle",
    ]
    # grid-only keys do not change the key; defaults spelled out give the same set
    same = {**params, "type": "synthetic", "batch_size": 2, "image_size": [48, 48], "seed": 0}
    assert data.ensure_synthetic(same) == root and len(calls) == 1
    assert data.ensure_synthetic({**params, "seed": 5}) != root and len(calls) == 2
    assert data.ensure_synthetic(params, tmp_path / "elsewhere").parent == tmp_path / "elsewhere"
    assert not list((tmp_path / "cache").glob(".tmp-*"))
    with pytest.raises(ValueError, match="unknown synthetic data keys.*num_imgs"):
        data.ensure_synthetic({"num_imgs": 3})


def test_ensure_synthetic_concurrent_callers(tmp_path):
    params, start, roots = {"num_train": 4, "num_val": 2, "image_size": 48}, threading.Barrier(4), []

    def call():
        start.wait()
        roots.append(data.ensure_synthetic(params, tmp_path))

    threads = [threading.Thread(target=call) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(roots) == 4 and len(set(roots)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [roots[0].name]  # no temp folders left
    assert len(_coco(roots[0], "train").getImgIds()) == 4


def test_make_synthetic_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="num_classes must be 1..6"):
        data.make_synthetic_coco(tmp_path / "a", num_classes=7)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        data.make_synthetic_coco(tmp_path / "b")
    assert data.parse_size("128x96") == (128, 96) and data.parse_size("64") == (64, 64)
    with pytest.raises(ValueError, match="HxW"):
        data.parse_size("big")


@pytest.fixture
def fake_coco(tmp_path):
    """A 20-image COCO folder with split val2017; categories listed out of id order."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images, anns = [], []
    for i in range(20):
        name = f"{i:012d}.jpg"
        Image.new("RGB", (8, 6)).save(root / "val2017" / name)
        images.append(dict(id=100 + i, file_name=name, height=6, width=8))
        anns += [
            dict(
                id=len(anns) + 1,
                image_id=100 + i,
                category_id=1 + k % 2,
                bbox=[0, 0, 2, 2],
                area=4,
                iscrowd=0,
                segmentation=[[0, 0, 2, 0, 2, 2]],
            )
            for k in range(i % 3)
        ]
    cats = [dict(id=18, name="dog"), dict(id=1, name="person"), dict(id=2, name="bicycle")]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps(dict(info={}, images=images, annotations=anns, categories=cats))
    )
    return root


def test_coco_subset(fake_coco, tmp_path):
    out = data.coco_subset(fake_coco, "val2017", n=5, seed=3, out=tmp_path / "sub")
    sub = json.loads((out / "annotations" / "instances_val2017.json").read_text())
    full = json.loads((fake_coco / "annotations" / "instances_val2017.json").read_text())
    ids = {im["id"] for im in sub["images"]}
    assert len(ids) == 5 and sub["categories"] == full["categories"] and "info" in sub
    assert sub["annotations"] == [a for a in full["annotations"] if a["image_id"] in ids]
    links = sorted((out / "val2017").iterdir())
    assert [p.name for p in links] == sorted(im["file_name"] for im in sub["images"])
    assert all(p.is_symlink() and p.resolve() == (fake_coco / "val2017" / p.name).resolve() for p in links)
    names = data.check_coco(out, "annotations/instances_val2017.json", "val2017")
    assert names == ["person", "bicycle", "dog"]
    # same seed -> same images; another seed -> other images; re-running needs overwrite
    again = data.coco_subset(fake_coco, n=5, seed=3, out=tmp_path / "sub2")
    ann = "annotations/instances_val2017.json"
    assert (again / ann).read_text() == (out / ann).read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        data.coco_subset(fake_coco, n=5, seed=4, out=out)
    data.coco_subset(fake_coco, n=5, seed=4, out=out, overwrite=True)
    other = json.loads((out / "annotations" / "instances_val2017.json").read_text())
    assert {im["id"] for im in other["images"]} != ids
    assert len(list((out / "val2017").iterdir())) == 5


def test_coco_subset_errors(fake_coco, tmp_path):
    with pytest.raises(ValueError, match=r"n=21 but .*instances_val2017.json has 20 images"):
        data.coco_subset(fake_coco, n=21, out=tmp_path / "o")
    with pytest.raises(FileNotFoundError, match=r"annotation file .*instances_train2017.json not found"):
        data.coco_subset(fake_coco, split="train2017", n=1, out=tmp_path / "o")
    with pytest.raises(FileNotFoundError, match=f"COCO root {tmp_path / 'nope'} not found"):
        data.coco_subset(tmp_path / "nope", n=1, out=tmp_path / "o")


def test_check_coco_messages(fake_coco, tmp_path):
    ann, img = "annotations/instances_val2017.json", "val2017"
    with pytest.raises(FileNotFoundError, match=f"COCO root {tmp_path / 'none'} not found; set data.root"):
        data.check_coco(tmp_path / "none", ann, img)
    with pytest.raises(
        FileNotFoundError, match=r"annotation file .*/x.json not found; .*prunebench data subset"
    ):
        data.check_coco(fake_coco, "x.json", img)
    with pytest.raises(FileNotFoundError, match=r"image folder .*/train2017 not found"):
        data.check_coco(fake_coco, ann, "train2017")
    (fake_coco / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON"):
        data.check_coco(fake_coco, "bad.json", img)
    (fake_coco / "nocats.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match=r"nocats.json is not a COCO instances file: no categories"):
        data.check_coco(fake_coco, "nocats.json", img)
    (fake_coco / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError,
        match=r"20 of the 20 images of .* are not in .*empty .first: .*check that the image folder",
    ):
        data.check_coco(fake_coco, ann, "empty")


def test_cli_synth_and_subset(fake_coco, tmp_path):
    from typer.testing import CliRunner

    from prunebench.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            str(tmp_path / "s"),
            "--num-train",
            "2",
            "--num-val",
            "1",
            "--size",
            "48x64",
            "--classes",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert data.check_coco(tmp_path / "s", "annotations/instances_val.json", "val") == ["circle", "square"]
    res = runner.invoke(
        app, ["data", "subset", "--coco-root", str(fake_coco), "--n", "3", "--out", str(tmp_path / "c")]
    )
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "c" / "val2017").iterdir())) == 3
    res = runner.invoke(
        app, ["data", "subset", "--coco-root", str(tmp_path / "nope"), "--out", str(tmp_path / "c")]
    )
    assert res.exit_code != 0 and "not found" in res.output
