"""Dataset registration: built-in ADE20k / Cityscapes names, metadata, register_sem_seg_dataset,
and fake dataset trees going through prepare -> register -> evaluate."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, CITYSCAPES_CATEGORIES
from PIL import Image

import mta_clip.data  # noqa: F401  (registers the datasets)
from mta_clip.data import register_sem_seg_dataset
from mta_clip.evaluation import PerClassSemSegEvaluator

from .test_prepare_scripts import _reference_names, ade, city, make_fake_ade, make_fake_cityscapes

OURS = [
    "ade20k_150_sem_seg_train",
    "ade20k_150_sem_seg_val",
    "cityscapes_19_sem_seg_train",
    "cityscapes_19_sem_seg_val",
]


@pytest.fixture
def registered():
    """Names registered by a test; removed afterwards."""
    names = []
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def test_builtin_names_and_metadata():
    listed = set(DatasetCatalog.list())
    assert set(OURS) <= listed
    # Detectron2's own registrations are still there, untouched.
    assert {"ade20k_sem_seg_train", "cityscapes_fine_sem_seg_val"} <= listed
    assert not hasattr(MetadataCatalog.get("ade20k_sem_seg_val"), "prompt_classes")
    for name in OURS:
        meta = MetadataCatalog.get(name)
        assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
        assert len(meta.stuff_classes) == len(meta.prompt_classes) == len(meta.stuff_colors)
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in meta.stuff_colors)
        assert meta.image_root and meta.sem_seg_root


def test_class_lists_match_independent_sources():
    ade_meta = MetadataCatalog.get("ade20k_150_sem_seg_val")
    assert ade_meta.stuff_classes == [c.strip() for c in ADE20K_SEM_SEG_CATEGORIES]
    assert ade_meta.prompt_classes == _reference_names("ade20k_150_short_class_names.txt")
    assert len(set(ade_meta.stuff_classes)) == 150
    cs_meta = MetadataCatalog.get("cityscapes_19_sem_seg_train")
    assert cs_meta.stuff_classes == _reference_names("cityscapes_19_class_names.txt")
    assert cs_meta.prompt_classes == cs_meta.stuff_classes
    by_train_id = {c["trainId"]: tuple(c["color"]) for c in CITYSCAPES_CATEGORIES}
    assert [tuple(c) for c in cs_meta.stuff_colors] == [by_train_id[i] for i in range(19)]


def _evaluate(name, out_dir, rng):
    """Runs the evaluator on perturbed ground truth; returns (results, expected per-class IoU)."""
    meta = MetadataCatalog.get(name)
    num = len(meta.stuff_classes)
    records = DatasetCatalog.get(name)
    evaluator = PerClassSemSegEvaluator(name, distributed=False, output_dir=str(out_dir))
    evaluator.reset()
    inter, union, gt_count = np.zeros(num), np.zeros(num), np.zeros(num)
    for rec in records:
        gt = np.asarray(Image.open(rec["sem_seg_file_name"])).astype(np.int64)
        pred = np.where(gt == 255, 0, gt)
        flip = rng.random(gt.shape) < 0.3
        pred[flip] = rng.integers(0, num, int(flip.sum()))
        scores = torch.nn.functional.one_hot(torch.from_numpy(pred), num).permute(2, 0, 1).float()
        evaluator.process([{"file_name": rec["file_name"]}], [{"sem_seg": scores}])
        valid = gt != 255
        for c in range(num):
            p, g = (pred == c) & valid, (gt == c) & valid
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
            gt_count[c] += g.sum()
    results = evaluator.evaluate()
    present = gt_count > 0
    expected = np.full(num, np.nan)
    expected[present] = 100.0 * inter[present] / union[present]
    return results, expected


@pytest.mark.parametrize("dataset", ["ade20k", "cityscapes"])
def test_prepare_register_evaluate(dataset, tmp_path, monkeypatch):
    root = tmp_path / "d2"
    if dataset == "ade20k":
        make_fake_ade(str(root), n=(2, 3))
        assert ade.main(["--root", str(root), "--workers", "1"]) == 0
        name, n_val = "ade20k_150_sem_seg_val", 3
    else:
        make_fake_cityscapes(str(root), cities=("bonn", "ulm"), per_city=2)
        assert city.main(["--root", str(root), "--workers", "1"]) == 0
        name, n_val = "cityscapes_19_sem_seg_val", 4
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))  # read lazily, after import
    records = DatasetCatalog.get(name)
    assert len(records) == n_val
    for rec in records:
        assert rec["file_name"].startswith(str(root)) and os.path.exists(rec["sem_seg_file_name"])
        with Image.open(rec["file_name"]) as im:
            assert (rec["height"], rec["width"]) == (im.height, im.width)
        assert "annotations_detectron2" in rec["sem_seg_file_name"] or rec["sem_seg_file_name"].endswith(
            "_gtFine_labelTrainIds.png"
        )
    meta = MetadataCatalog.get(name)
    assert meta.image_root.startswith(str(root)) and meta.sem_seg_root.startswith(str(root))

    results, expected = _evaluate(name, tmp_path / "eval", np.random.default_rng(0))
    res = results["sem_seg"]
    assert res["mIoU"] == pytest.approx(np.nanmean(expected))
    with open(tmp_path / "eval" / f"per_class_{name}.json", encoding="utf-8") as f:
        table = json.load(f)
    ious = np.array([np.nan if c["IoU"] is None else c["IoU"] for c in table["classes"]])
    np.testing.assert_allclose(ious, expected, equal_nan=True)
    assert table["summary"]["mIoU"] == pytest.approx(res["mIoU"])
    assert os.path.exists(tmp_path / "eval" / f"per_class_{name}.csv")


def test_missing_folders_name_path_and_script(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("cityscapes_19_sem_seg_train")
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "cityscapes", "leftImg8bit", "train") in msg
    assert "prepare_cityscapes_sem_seg.py" in msg
    make_fake_ade(str(tmp_path), n=(1, 1))  # raw data present, not prepared yet
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("ade20k_150_sem_seg_train")
    msg = str(e.value)
    assert os.path.join("ADEChallengeData2016", "annotations_detectron2", "training") in msg
    assert "prepare_ade20k_sem_seg.py" in msg and str(tmp_path) in msg


def _write_pair(root, rel, size, label_value=0, image_ext=".jpg", label_ext=".png"):
    img_path = os.path.join(root, "img", rel + image_ext)
    lab_path = os.path.join(root, "lab", rel + label_ext)
    os.makedirs(os.path.dirname(img_path), exist_ok=True)
    os.makedirs(os.path.dirname(lab_path), exist_ok=True)
    Image.fromarray(np.zeros(size + (3,), np.uint8)).save(img_path)
    Image.fromarray(np.full(size, label_value, np.uint8)).save(lab_path)
    return img_path, lab_path


def test_register_own_dataset(tmp_path, registered, caplog):
    root = str(tmp_path)
    a = _write_pair(root, "a/x", (5, 7), image_ext="_rgb.png", label_ext="_mask.png")
    b = _write_pair(root, "b/y", (6, 4), label_value=1, image_ext="_rgb.png", label_ext="_mask.png")
    _write_pair(root, "c/lonely", (3, 3), image_ext="_rgb.png", label_ext="_other.png")
    registered.append("my_data")
    register_sem_seg_dataset(
        "my_data",
        os.path.join(root, "img"),
        os.path.join(root, "lab"),
        ["floor", "wall"],
        image_suffix="_rgb.png",
        label_suffix="_mask.png",
    )
    with caplog.at_level(logging.WARNING):
        records = DatasetCatalog.get("my_data")
    assert records == [
        {"file_name": a[0], "sem_seg_file_name": a[1], "height": 5, "width": 7},
        {"file_name": b[0], "sem_seg_file_name": b[1], "height": 6, "width": 4},
    ]
    assert "1 image(s)" in caplog.text and "c/lonely" in caplog.text
    meta = MetadataCatalog.get("my_data")
    assert meta.stuff_classes == ["floor", "wall"] and meta.prompt_classes == ["floor", "wall"]
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert len(meta.stuff_colors) == 2 and meta.stuff_colors[0] != meta.stuff_colors[1]
    assert meta.image_root == os.path.join(root, "img")

    with pytest.raises(ValueError, match="already registered"):
        register_sem_seg_dataset("my_data", root, root, ["a"])
    register_sem_seg_dataset(
        "my_data",
        os.path.join(root, "img"),
        os.path.join(root, "lab"),
        ["floor", "wall"],
        prompt_names=["f", "w"],
        colors=[(1, 2, 3), (4, 5, 6)],
        image_suffix="_rgb.png",
        label_suffix="_mask.png",
        overwrite=True,
    )
    meta = MetadataCatalog.get("my_data")
    assert meta.prompt_classes == ["f", "w"] and [tuple(c) for c in meta.stuff_colors] == [(1, 2, 3), (4, 5, 6)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(class_names=[]), "empty"),
        (dict(class_names=["a", "a"]), "duplicate"),
        (dict(class_names=["a", "b"], prompt_names=["a"]), "prompt names"),
        (dict(class_names=["a", "b"], ignore_label=1), "is a class index"),
        (dict(class_names=["a"], colors=[(0, 0, 300)]), "RGB triples"),
    ],
)
def test_register_rejects_bad_arguments(tmp_path, registered, kwargs, match):
    registered.append("bad_data")
    with pytest.raises(ValueError, match=match):
        register_sem_seg_dataset("bad_data", str(tmp_path), str(tmp_path), **kwargs)
    assert "bad_data" not in DatasetCatalog.list()


def test_register_missing_folder_and_no_pairs(tmp_path, registered):
    registered.extend(["gone", "empty"])
    register_sem_seg_dataset("gone", str(tmp_path / "nope"), str(tmp_path), ["a"])
    with pytest.raises(FileNotFoundError, match="nope"):
        DatasetCatalog.get("gone")
    (tmp_path / "i").mkdir()
    (tmp_path / "l").mkdir()
    register_sem_seg_dataset("empty", str(tmp_path / "i"), str(tmp_path / "l"), ["a"])
    with pytest.raises(FileNotFoundError, match="0 images, 0 labels"):
        DatasetCatalog.get("empty")


def test_unreadable_image_header(tmp_path, registered):
    from mta_clip.data.datasets import load_dataset_dicts

    _write_pair(str(tmp_path), "ok", (4, 5))
    img, lab = _write_pair(str(tmp_path), "bad", (4, 5))
    with open(img, "wb") as f:
        f.write(b"garbage")
    registered.append("broken_data")
    register_sem_seg_dataset("broken_data", str(tmp_path / "img"), str(tmp_path / "lab"), ["a"])
    with pytest.raises(OSError, match="bad.jpg"):
        DatasetCatalog.get("broken_data")
    with pytest.raises(OSError, match="bad.jpg"):
        load_dataset_dicts("broken_data")  # tolerance is asked for explicitly, per call
    records = load_dataset_dicts("broken_data", tolerate_unreadable=True)
    assert [("height" in r) for r in records] == [False, True]  # sorted: bad, ok
    with pytest.raises(OSError, match="bad.jpg"):
        DatasetCatalog.get("broken_data")  # and nothing is left switched on
    DatasetCatalog.register("_other_loader", lambda: [{"file_name": "x"}])
    registered.append("_other_loader")
    assert load_dataset_dicts("_other_loader", tolerate_unreadable=True) == [{"file_name": "x"}]
