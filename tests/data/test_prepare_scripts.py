"""datasets/prepare_{ade20k,cityscapes}_sem_seg.py on generated fake dataset trees."""

import importlib.util
import os
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(ROOT, "tests", "reference")


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "datasets", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # worker processes pickle its functions by module name
    spec.loader.exec_module(module)
    return module


ade = _load_script("prepare_ade20k_sem_seg")
city = _load_script("prepare_cityscapes_sem_seg")


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def make_fake_ade(root, n=(3, 2), size=(12, 16), seed=0):
    """Fake ADEChallengeData2016 tree; returns {split: {stem: raw label}}."""
    rng = np.random.default_rng(seed)
    raw = {}
    for split, count in zip(("training", "validation"), n):
        raw[split] = {}
        for i in range(count):
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
            label = rng.integers(0, 151, size, dtype=np.uint8)
            label[0, :3] = (0, 1, 150)  # both ends of the range and "other"
            _png(os.path.join(root, "ADEChallengeData2016", "annotations", split, stem + ".png"), label)
            image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
            path = os.path.join(root, "ADEChallengeData2016", "images", split, stem + ".jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(image).save(path, quality=95)
            raw[split][stem] = label
    return raw


# The official Cityscapes label table (name, labelId), written independently of the script;
# the trainId of an evaluated class is its position in the 19-class reference list.
CITYSCAPES_LABEL_IDS = {
    "unlabeled": 0,
    "ego vehicle": 1,
    "rectification border": 2,
    "out of roi": 3,
    "static": 4,
    "dynamic": 5,
    "ground": 6,
    "road": 7,
    "sidewalk": 8,
    "parking": 9,
    "rail track": 10,
    "building": 11,
    "wall": 12,
    "fence": 13,
    "guard rail": 14,
    "bridge": 15,
    "tunnel": 16,
    "pole": 17,
    "polegroup": 18,
    "traffic light": 19,
    "traffic sign": 20,
    "vegetation": 21,
    "terrain": 22,
    "sky": 23,
    "person": 24,
    "rider": 25,
    "car": 26,
    "truck": 27,
    "bus": 28,
    "caravan": 29,
    "trailer": 30,
    "train": 31,
    "motorcycle": 32,
    "bicycle": 33,
}


def _reference_names(fname):
    with open(os.path.join(REFERENCE, fname), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def expected_train_ids(label_ids):
    names = _reference_names("cityscapes_19_class_names.txt")
    out = np.full(label_ids.shape, 255, np.uint8)
    for train_id, name in enumerate(names):
        out[label_ids == CITYSCAPES_LABEL_IDS[name]] = train_id
    return out


def make_fake_cityscapes(root, cities=("aachen", "bonn"), per_city=2, size=(10, 20), seed=1):
    """Fake cityscapes tree (train and val); returns {label path: raw labelIds}."""
    rng = np.random.default_rng(seed)
    raw = {}
    for split in ("train", "val"):
        for city_name in cities:
            for i in range(per_city):
                stem = f"{city_name}_{i:06d}_000019"
                image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
                images = os.path.join(root, "cityscapes", "leftImg8bit", split, city_name)
                _png(os.path.join(images, stem + "_leftImg8bit.png"), image)
                ids = rng.integers(0, 36, size, dtype=np.uint8)  # 34, 35: not in the table
                path = os.path.join(root, "cityscapes", "gtFine", split, city_name, stem + "_gtFine_labelIds.png")
                _png(path, ids)
                raw[path] = ids
    return raw


# ------------------------------------------------------------------------------------------ ADE20k


def test_ade20k_conversion_values_and_summary(tmp_path, capsys):
    raw = make_fake_ade(str(tmp_path))
    assert ade.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "training" in out and "written      3" in out and "written      2" in out
    for split, labels in raw.items():
        out_dir = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / split
        assert sorted(os.listdir(out_dir)) == sorted(s + ".png" for s in labels)
        for stem, label in labels.items():
            got = np.asarray(Image.open(out_dir / (stem + ".png")))
            assert got.dtype == np.uint8
            expected = label.astype(np.int64) - 1
            expected[label == 0] = 255
            np.testing.assert_array_equal(got, expected)
            assert got[0, 0] == 255 and got[0, 1] == 0 and got[0, 2] == 149


def test_ade20k_is_resumable(tmp_path, capsys):
    make_fake_ade(str(tmp_path))
    assert ade.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    out_dir = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "training"
    first = out_dir / "ADE_train_00000001.png"
    os.remove(out_dir / "ADE_train_00000002.png")
    (out_dir / ".ADE_train_00000003.png.tmp-123.png").write_bytes(b"half-written")
    before = first.stat().st_mtime_ns
    capsys.readouterr()
    assert ade.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "written      1, already present      2" in out
    assert "written      0, already present      2" in out  # validation
    assert first.stat().st_mtime_ns == before
    assert sorted(os.listdir(out_dir)) == [f"ADE_train_0000000{i}.png" for i in (1, 2, 3)]
    assert ade.main(["--root", str(tmp_path), "--workers", "1", "--overwrite"]) == 0
    assert "written      3, already present      0" in capsys.readouterr().out


def test_ade20k_parallel_equals_serial(tmp_path):
    make_fake_ade(str(tmp_path / "a"), n=(4, 1))
    make_fake_ade(str(tmp_path / "b"), n=(4, 1))
    assert ade.main(["--root", str(tmp_path / "a"), "--workers", "1"]) == 0
    assert ade.main(["--root", str(tmp_path / "b"), "--workers", "2"]) == 0
    sub = os.path.join("ADEChallengeData2016", "annotations_detectron2", "training")
    for name in os.listdir(tmp_path / "a" / sub):
        a = np.asarray(Image.open(tmp_path / "a" / sub / name))
        b = np.asarray(Image.open(tmp_path / "b" / sub / name))
        np.testing.assert_array_equal(a, b)


def test_ade20k_wrong_layout_shows_expected_tree(tmp_path, capsys):
    (tmp_path / "ADEChallengeData2016" / "images" / "training").mkdir(parents=True)
    assert ade.main(["--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing folder" in err and "annotations" in err
    assert "Expected layout" in err and "images/" in err and "validation/ADE_val_00000001.jpg" in err
    assert not (tmp_path / "ADEChallengeData2016" / "annotations_detectron2").exists()


def test_ade20k_bad_label_is_reported_others_written(tmp_path, capsys):
    make_fake_ade(str(tmp_path))
    bad = tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_val_00000001.png"
    _png(str(bad), np.full((12, 16), 200, np.uint8))
    assert ade.main(["--root", str(tmp_path), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "200" in err
    out_dir = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation"
    assert os.listdir(out_dir) == ["ADE_val_00000002.png"]


# -------------------------------------------------------------------------------------- Cityscapes


def test_cityscapes_train_ids(tmp_path, capsys):
    raw = make_fake_cityscapes(str(tmp_path))
    assert city.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "train  written      4" in out and "val    written      4" in out
    for path, ids in raw.items():
        dst = path.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")
        got = np.asarray(Image.open(dst))
        np.testing.assert_array_equal(got, expected_train_ids(ids))
    # The table itself: 19 classes, trainIds 0..18, every other id ignored.
    table = city.LABEL_ID_TO_TRAIN_ID
    assert sorted(table.values()) == list(range(19))
    names = _reference_names("cityscapes_19_class_names.txt")
    assert {CITYSCAPES_LABEL_IDS[n]: i for i, n in enumerate(names)} == table


def test_cityscapes_resumable_and_layout(tmp_path, capsys):
    make_fake_cityscapes(str(tmp_path), cities=("ulm",), per_city=2)
    assert city.main(["--root", str(tmp_path), "--workers", "2"]) == 0
    capsys.readouterr()
    assert city.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    assert "written      0, already present      2" in capsys.readouterr().out
    empty = tmp_path / "empty"
    (empty / "cityscapes" / "gtFine" / "train").mkdir(parents=True)
    assert city.main(["--root", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "leftImg8bit" in err and "Expected layout" in err and "_gtFine_labelIds.png" in err


@pytest.mark.parametrize("module", [ade, city])
def test_convert_label_rejects_color_maps(module):
    with pytest.raises(ValueError, match="single-channel"):
        module.convert_label(np.zeros((4, 4, 3), np.uint8))
