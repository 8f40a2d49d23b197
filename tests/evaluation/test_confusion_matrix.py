"""Confusion matrix (CSV, heatmap, most confused pairs) and prediction panels of the evaluator."""

import csv
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage
from PIL import Image

from mta_clip.data import register_sem_seg_dataset
from mta_clip.evaluation import PerClassSemSegEvaluator
from mta_clip.evaluation import confusion_matrix as cm

CLASSES = ["sky", "road, route", "car"]
# Two 2x3 images. Hand count of (gt, pred) over pixels whose gt is not 255:
#   image 0: (0,0) (0,1) (1,1) | (1,2) (2,2) [255 skipped]     image 1: (2,2) (2,0) (0,0) | (1,1) (1,1) (1,1)
GTS = [np.array([[0, 0, 1], [1, 2, 255]]), np.array([[2, 2, 0], [1, 1, 1]])]
PREDS = [np.array([[0, 1, 1], [2, 2, 0]]), np.array([[2, 0, 0], [1, 1, 1]])]
HAND = np.array(
    [
        # pred: 0  1  2
        [2, 1, 0],  # gt 0 (sky): (0,0) in image 0 and in image 1 = 2, (0,1) = 1
        [0, 4, 1],  # gt 1 (road): (1,1) + 3 x (1,1) = 4, (1,2) = 1
        [1, 0, 2],  # gt 2 (car): (2,2) + (2,2) = 2, (2,0) = 1
    ]
)


@pytest.fixture
def dataset(tmp_path):
    for d in ("img", "lab"):
        (tmp_path / d).mkdir()
    for i, gt in enumerate(GTS):
        Image.fromarray(np.full((2, 3, 3), 60 * i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(gt.astype(np.uint8)).save(tmp_path / "lab" / f"{i}.png")
    name = f"confusion_test_{os.path.basename(str(tmp_path))}"
    register_sem_seg_dataset(name, str(tmp_path / "img"), str(tmp_path / "lab"), CLASSES, image_suffix=".png")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _run(name, out_dir, **kwargs):
    evaluator = PerClassSemSegEvaluator(name, distributed=False, output_dir=str(out_dir), **kwargs)
    evaluator.reset()
    for rec, pred in zip(DatasetCatalog.get(name), PREDS):
        scores = torch.nn.functional.one_hot(torch.from_numpy(pred), len(CLASSES)).permute(2, 0, 1).float()
        evaluator.process([{"file_name": rec["file_name"]}], [{"sem_seg": scores}])
    return evaluator.evaluate()


def test_confusion_matrix_files_and_log_match_hand_count(dataset, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="mta_clip"):
        _run(dataset, out, num_panels=1)
    with open(out / f"confusion_{dataset}.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["gt \\ pred"] + CLASSES
    assert [r[0] for r in rows[1:]] == CLASSES
    np.testing.assert_array_equal(np.array([[int(v) for v in r[1:]] for r in rows[1:]]), HAND)
    with Image.open(out / f"confusion_{dataset}.png") as png:
        assert png.mode == "RGB" and png.size[0] > 100
    # largest off-diagonal counts: each is 1 pixel; shares of the gt class: 1/3, 1/5, 1/3
    assert "sky -> road: 33.3% (1 px)" in caplog.text
    assert "road -> car: 20.0% (1 px)" in caplog.text and "car -> sky: 33.3% (1 px)" in caplog.text
    panels = sorted(os.listdir(out / "panels"))
    assert panels == ["000_0.png"]  # num_panels=1


def test_row_normalization_and_pairs():
    norm = cm.row_normalized(np.array([[3, 1, 0], [0, 0, 0], [1, 0, 2]]))
    np.testing.assert_allclose(norm, [[0.75, 0.25, 0], [0, 0, 0], [1 / 3, 0, 2 / 3]])
    pairs = cm.most_confused_pairs(np.array([[5, 7, 0], [2, 9, 0], [0, 0, 0]]), ["a", "b", "c"], k=5)
    assert pairs == [("a", "b", 7, pytest.approx(700 / 12)), ("b", "a", 2, pytest.approx(200 / 11))]
    d2 = np.zeros((4, 4), np.int64)
    d2[0, 1] = 5  # Detectron2: [pred, gt] -> ours [gt, pred]
    d2[2, 3] = 9  # ground truth ignored (index C): not counted
    expected = np.zeros((3, 3), np.int64)
    expected[1, 0] = 5
    np.testing.assert_array_equal(cm.from_detectron2(d2, 3), expected)


def test_heatmap_readable_at_150_classes():
    names = [f"class {i}" for i in range(150)]
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 100, (150, 150)) + np.diag(np.full(150, 5000))
    image = cm.confusion_heatmap(matrix, names)
    cell = 9
    assert image.shape[0] >= 150 * cell and image.shape[1] >= 150 * cell
    assert image.shape[1] < 2400  # fits a screen width


def test_panels_go_to_event_storage_during_training(dataset, tmp_path):
    with EventStorage(7) as storage:
        _run(dataset, tmp_path / "out", num_panels=0, tensorboard_panels=2)
        images = storage._vis_data
    assert [name for name, _, _ in images] == [f"{dataset}/panel_0", f"{dataset}/panel_1"]
    assert all(img.ndim == 3 and img.shape[0] == 3 and img.dtype == np.uint8 and it == 7 for _, img, it in images)
    assert not (tmp_path / "out" / "panels").exists()
