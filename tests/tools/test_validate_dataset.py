"""tools/validate_dataset.py: per-class counts and the problems it must flag."""

import importlib.util
import os
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from mta_clip.data import register_sem_seg_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("validate_dataset", os.path.join(ROOT, "tools", "validate_dataset.py"))
validate_dataset = importlib.util.module_from_spec(_spec)
sys.modules["validate_dataset"] = validate_dataset
_spec.loader.exec_module(validate_dataset)

CLASSES = ["sky", "road", "car"]


@pytest.fixture
def dataset(tmp_path):
    """A clean 3-class dataset of 4 images; yields (name, root, labels by stem)."""
    rng = np.random.default_rng(0)
    labels = {}
    for i in range(4):
        stem = f"im{i}"
        label = rng.integers(0, 3, (6, 8), dtype=np.uint8)
        label[0, 0] = 255
        os.makedirs(tmp_path / "images", exist_ok=True)
        os.makedirs(tmp_path / "labels", exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{stem}.png")
        Image.fromarray(label).save(tmp_path / "labels" / f"{stem}.png")
        labels[stem] = label
    name = f"validate_test_{os.path.basename(str(tmp_path))}"
    register_sem_seg_dataset(name, str(tmp_path / "images"), str(tmp_path / "labels"), CLASSES, image_suffix=".png")
    yield name, tmp_path, labels
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_clean_dataset_counts(dataset, capsys):
    name, _, labels = dataset
    assert validate_dataset.main([name]) == 0
    out = capsys.readouterr().out
    assert "No problem found." in out and "4 images" in out
    result = validate_dataset.validate(name)
    stacked = np.stack(list(labels.values()))
    for c in range(3):
        assert result["pixels"][c] == (stacked == c).sum()
        assert result["images_with"][c] == sum((lab == c).any() for lab in labels.values())
    assert result["ignored"] == 4 and result["problems"] == []


def test_planted_problems_are_flagged(dataset, capsys):
    name, root, labels = dataset
    bad = labels["im1"].copy()
    bad[2, 3] = 7  # not a class, not ignore
    Image.fromarray(bad).save(root / "labels" / "im1.png")
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(root / "labels" / "im2.png")  # wrong size
    (root / "images" / "im3.png").write_bytes(b"\x89PNG broken")  # unreadable image
    assert validate_dataset.main([name]) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS" in out
    assert "unknown label value 7 (1 pixels" in out and str(root / "labels" / "im1.png") in out
    assert "label size (5, 8) != image size (6, 8)" in out
    assert str(root / "images" / "im3.png") in out and "unreadable image" in out


def test_color_label_map_flagged(dataset, capsys):
    name, root, _ = dataset
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "labels" / "im0.png")
    assert validate_dataset.main([name, "--limit", "1"]) == 1
    assert "expected one channel" in capsys.readouterr().out


def test_unknown_dataset(capsys):
    assert validate_dataset.main(["no_such_dataset_xyz"]) == 2
    assert "not registered" in capsys.readouterr().err


def test_bad_import_is_an_argument_error(tmp_path, capsys):
    assert validate_dataset.main(["x", "--import", str(tmp_path / "nope.py")]) == 2
    assert "nope.py: no such file" in capsys.readouterr().err
    assert validate_dataset.main(["x", "--import", "no_such_module_xyz"]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err


def test_import_registers_user_dataset(tmp_path, capsys):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.ones((4, 4), np.uint8)).save(tmp_path / "a.png")
    script = tmp_path / "reg.py"
    script.write_text(
        "from mta_clip.data import register_sem_seg_dataset\n"
        f"register_sem_seg_dataset('validate_import_ds', {str(tmp_path)!r}, {str(tmp_path)!r}, ['x', 'y'])\n"
    )
    try:
        assert validate_dataset.main(["validate_import_ds", "--import", str(script)]) == 0
        assert "No problem found." in capsys.readouterr().out
        assert validate_dataset.validate("validate_import_ds")["pixels"].tolist() == [0, 16]
    finally:
        DatasetCatalog.remove("validate_import_ds")
        MetadataCatalog.remove("validate_import_ds")
