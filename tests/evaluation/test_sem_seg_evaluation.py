"""PerClassSemSegEvaluator: Detectron2's metrics plus per-class CSV / JSON and a log table."""

import csv
import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

from mta_clip.data import register_sem_seg_dataset
from mta_clip.evaluation import PerClassSemSegEvaluator, format_per_class_table, per_class_metrics
from mta_clip.evaluation.sem_seg_evaluation import load_sem_seg_labels

CLASSES = ["sky", "road, route", "car"]  # a comma inside a name must survive the CSV


@pytest.fixture
def dataset(tmp_path):
    """3 classes, 3 images; class 2 ("car") never appears in the ground truth."""
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for i in range(3):
        gt = rng.integers(0, 2, (7, 9), dtype=np.uint8)
        gt[:2, :2] = 255
        pred = gt.astype(np.int64).copy()
        pred[gt == 255] = rng.integers(0, 3)
        noise = rng.random(gt.shape) < 0.25
        pred[noise] = rng.integers(0, 3, int(noise.sum()))
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "lab").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(gt).save(tmp_path / "lab" / f"{i}.png")
        gts.append(gt)
        preds.append(pred)
    name = f"eval_test_{os.path.basename(str(tmp_path))}"
    register_sem_seg_dataset(name, str(tmp_path / "img"), str(tmp_path / "lab"), CLASSES, image_suffix=".png")
    yield name, gts, preds
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _run(evaluator_cls, name, preds, out_dir, **kwargs):
    evaluator = evaluator_cls(name, distributed=False, output_dir=str(out_dir), **kwargs)
    evaluator.reset()
    for rec, pred in zip(DatasetCatalog.get(name), preds):
        scores = torch.nn.functional.one_hot(torch.from_numpy(pred), len(CLASSES)).permute(2, 0, 1).float()
        evaluator.process([{"file_name": rec["file_name"]}], [{"sem_seg": scores}])
    return evaluator.evaluate()


def _direct(gts, preds, c):
    """IoU and accuracy of class c in percent by direct counting over valid pixels."""
    g = np.concatenate([x.ravel() for x in gts]).astype(np.int64)
    p = np.concatenate([x.ravel() for x in preds])
    valid = g != 255
    tp = np.sum((p == c) & (g == c) & valid)
    union = np.sum(((p == c) | (g == c)) & valid)
    n_gt = np.sum((g == c) & valid)
    if n_gt == 0:
        return float("nan"), float("nan")
    return 100.0 * tp / union, 100.0 * tp / n_gt


def test_per_class_files_and_metrics(dataset, tmp_path, caplog):
    name, gts, preds = dataset
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="mta_clip.evaluation.sem_seg_evaluation"):
        results = _run(PerClassSemSegEvaluator, name, preds, out)
    # Detectron2's own metrics (its default label loader fails on numpy 2, hence ours)
    plain = _run(SemSegEvaluator, name, preds, tmp_path / "plain", sem_seg_loading_fn=load_sem_seg_labels)
    assert results["sem_seg"].keys() == plain["sem_seg"].keys()
    for k, v in plain["sem_seg"].items():
        assert results["sem_seg"][k] == pytest.approx(v, nan_ok=True)

    with open(out / f"per_class_{name}.json", encoding="utf-8") as f:
        table = json.load(f)
    assert table["dataset"] == name
    assert set(table["summary"]) == {"mIoU", "fwIoU", "mACC", "pACC"}
    assert table["summary"]["mIoU"] == pytest.approx(results["sem_seg"]["mIoU"])
    with open(out / f"per_class_{name}.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == CLASSES == [c["name"] for c in table["classes"]]
    for c in range(3):
        iou, acc = _direct(gts, preds, c)
        entry = table["classes"][c]
        if math.isnan(iou):
            assert entry["IoU"] is None and entry["Acc"] is None
            assert rows[c]["IoU"] == "" and rows[c]["Acc"] == ""
        else:
            assert entry["IoU"] == pytest.approx(iou) and float(rows[c]["IoU"]) == pytest.approx(iou, abs=1e-4)
            assert entry["Acc"] == pytest.approx(acc) and float(rows[c]["Acc"]) == pytest.approx(acc, abs=1e-4)
            assert entry["IoU"] == pytest.approx(results["sem_seg"][f"IoU-{CLASSES[c]}"])
        g = np.concatenate([x.ravel() for x in gts])
        assert entry["gt_pixels"] == int(np.sum(g == c)) == int(rows[c]["gt_pixels"])
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary file left
    assert "Per-class results on" in caplog.text and "road, route" in caplog.text
    assert f"{results['sem_seg']['mIoU']:.2f}" in caplog.text


def test_per_class_metrics_matches_direct_counting():
    rng = np.random.default_rng(3)
    num = 4
    gt = rng.integers(0, num + 1, 500)  # value num stands for "ignore"
    pred = rng.integers(0, num, 500)
    conf = np.zeros((num + 1, num + 1), np.int64)
    np.add.at(conf, (pred, gt), 1)
    rows = per_class_metrics(conf, [f"c{i}" for i in range(num)])
    for c, row in enumerate(rows):
        valid = gt != num
        tp = np.sum((pred == c) & (gt == c))
        assert row["IoU"] == pytest.approx(100.0 * tp / np.sum(((pred == c) | (gt == c)) & valid))
        assert row["Acc"] == pytest.approx(100.0 * tp / np.sum(gt == c))
        assert row["pred_pixels"] == np.sum((pred == c) & valid)


def test_table_layout():
    rows = [{"name": f"class{i}", "IoU": float(i), "Acc": float("nan")} for i in range(7)]
    text = format_per_class_table(rows, columns=3).splitlines()
    assert len(text) == 2 + 3  # header, separator, ceil(7 / 3) rows
    assert text[0].count("class") == 3
    assert "class0" in text[2] and "class3" in text[2] and "class6" in text[2]
    assert "6.00" in text[2] and "-" in text[2]


def _numpy2_copy_semantics(monkeypatch):
    """On numpy 1.x, make ``np.array(..., copy=False)`` refuse as numpy 2 does where a copy is
    needed (always, for a PIL image); on numpy 2 the real behaviour is in force."""
    if int(np.__version__.split(".")[0]) >= 2:
        return
    original = np.array

    def array(obj, *args, copy=True, **kwargs):
        if copy is False and isinstance(obj, Image.Image):
            raise ValueError("Unable to avoid copy while creating an array as requested.")
        return original(obj, *args, copy=copy, **kwargs)

    monkeypatch.setattr(np, "array", array)


def test_evaluation_under_numpy2_copy_semantics(dataset, tmp_path, monkeypatch):
    name, gts, preds = dataset
    expected = _run(PerClassSemSegEvaluator, name, preds, tmp_path / "before")
    _numpy2_copy_semantics(monkeypatch)
    with pytest.raises(ValueError, match="Unable to avoid copy"):  # Detectron2's default loader
        _run(SemSegEvaluator, name, preds, tmp_path / "plain")
    results = _run(PerClassSemSegEvaluator, name, preds, tmp_path / "out")
    assert results["sem_seg"]["mIoU"] == pytest.approx(expected["sem_seg"]["mIoU"])
    for c in range(2):
        assert results["sem_seg"][f"IoU-{CLASSES[c]}"] == pytest.approx(_direct(gts, preds, c)[0])
    labels = load_sem_seg_labels(DatasetCatalog.get(name)[0]["sem_seg_file_name"], dtype=int)
    assert labels.flags.writeable and labels.dtype == np.int_ and np.array_equal(labels, gts[0])
