"""Unusable dataset files: truncated images, labels out of range or of another size, EXIF rotation."""

import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from mta_clip.data import register_sem_seg_dataset
from mta_clip.data.datasets import load_sem_seg_pairs
from mta_clip.engine import Trainer
from tests.conftest import load_tool, toy_cfg

CLASSES = ["a", "b", "c"]


def _dataset(tmp_path, name, label_fn=None, truncate=False, exif=None, n=2):
    (tmp_path / "im").mkdir()
    (tmp_path / "lb").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        kwargs = {}
        if exif and i == 0:
            info = image.getexif()
            info[274] = exif
            kwargs["exif"] = info
        image.save(tmp_path / "im" / f"{i}.jpg", quality=95, **kwargs)
        h, w = (32, 24) if exif in (5, 6, 7, 8) and i == 0 else (24, 32)
        label = rng.integers(0, 3, (h, w), dtype=np.uint8)
        if label_fn is not None and i == 0:
            label = label_fn(label)
        Image.fromarray(label).save(tmp_path / "lb" / f"{i}.png")
    if truncate:
        data = (tmp_path / "im" / "0.jpg").read_bytes()
        (tmp_path / "im" / "0.jpg").write_bytes(data[: len(data) // 2])
    register_sem_seg_dataset(name, str(tmp_path / "im"), str(tmp_path / "lb"), CLASSES, overwrite=True)
    return str(tmp_path / "im" / "0.jpg"), str(tmp_path / "lb" / "0.png")


def _evaluate(name, tmp_path):
    cfg = toy_cfg("mask2former_toy.yaml", ["DATASETS.TRAIN", f"('{name}',)", "OUTPUT_DIR", str(tmp_path / "o")])
    evaluator = Trainer.build_evaluator(cfg, name)
    evaluator.reset()
    for rec in DatasetCatalog.get(name):
        scores = torch.zeros(3, rec["height"], rec["width"])
        evaluator.process([{"file_name": rec["file_name"]}], [{"sem_seg": scores}])
    return evaluator.evaluate()


def test_evaluation_checks_label_values(tmp_path):
    def bad(label):
        label[0, 0] = 7
        return label

    _, label_file = _dataset(tmp_path, "fc_values", bad)
    with pytest.raises(ValueError, match=rf"Label file {label_file}: label values \[7\] are outside \[0, 3\)"):
        _evaluate("fc_values", tmp_path)


def test_evaluation_checks_label_size(tmp_path):
    _, label_file = _dataset(tmp_path, "fc_size", lambda label: label[:20])
    with pytest.raises(ValueError, match=rf"Label file {label_file} has size \(20, 32\) .* has \(24, 32\)"):
        _evaluate("fc_size", tmp_path)


def test_clean_labels_evaluate(tmp_path):
    _dataset(tmp_path, "fc_clean")
    assert "mIoU" in _evaluate("fc_clean", tmp_path)["sem_seg"]


def test_truncated_image_names_the_file_in_training_and_evaluation(tmp_path):
    image_file, _ = _dataset(tmp_path, "fc_trunc", truncate=True)
    cfg = toy_cfg(
        "mask2former_toy.yaml",
        [
            "DATASETS.TRAIN",
            "('fc_trunc',)",
            "DATASETS.TEST",
            "('fc_trunc',)",
            "OUTPUT_DIR",
            str(tmp_path / "o"),
            "DATALOADER.NUM_WORKERS",
            "0",
        ],
    )
    record = next(r for r in DatasetCatalog.get("fc_trunc") if r["file_name"] == image_file)
    from mta_clip.data import SemanticMaskFormerMapper
    from mta_clip.data.file_checks import ExplainReadErrors

    for mapper in (ExplainReadErrors(SemanticMaskFormerMapper(cfg, True)), Trainer.build_test_loader(cfg, "fc_trunc")):
        with pytest.raises(OSError, match=rf"cannot read {image_file}.*tools/validate_dataset.py"):
            if isinstance(mapper, ExplainReadErrors):
                mapper(dict(record))
            else:
                for _ in mapper:
                    pass
    tool = load_tool("validate_dataset")
    assert tool.main(["fc_trunc"]) == 1


def test_exif_orientation_loader_and_validator_agree(tmp_path, capsys):
    image_file, _ = _dataset(tmp_path, "fc_exif", exif=6)
    records = load_sem_seg_pairs(str(tmp_path / "im"), str(tmp_path / "lb"))
    rec = next(r for r in records if r["file_name"] == image_file)
    from detectron2.data import detection_utils as utils

    loaded = utils.read_image(image_file, format="RGB")
    assert (rec["height"], rec["width"]) == loaded.shape[:2] == (32, 24)
    tool = load_tool("validate_dataset")
    assert tool.main(["fc_exif"]) == 0
    out = capsys.readouterr().out
    assert "No problem found." not in out and "EXIF orientation 6" in out and os.path.basename(image_file) in out
    MetadataCatalog.remove("fc_exif")
    DatasetCatalog.remove("fc_exif")
