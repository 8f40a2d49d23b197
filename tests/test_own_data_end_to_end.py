"""A user's own data from the command line only: train on a dataset declared by a dataset file,
evaluate from the model file alone, run the demo and the Predictor from the model file alone."""

import importlib.util
import json
import os
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from mta_clip.model_file import INFO_KEY
from mta_clip.predictor import Predictor
from tests.conftest import ROOT, load_tool

EXAMPLE = os.path.join(ROOT, "datasets", "example_own_data")
DATASET_FILE = os.path.join(EXAMPLE, "example_own_data.yaml")
CLASSES = ["background", "disc", "bar"]


def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


train_net = _module("mta_clip_train_net", os.path.join(ROOT, "train_net.py"))
demo = _module("mta_clip_demo_e2e", os.path.join(ROOT, "demo", "demo.py"))


def _forget_example_datasets():
    for name in ("example_own_data_train", "example_own_data_val"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def _miou(predictor, folder_images, folder_labels):
    """Detectron2's mIoU definition, computed here with a slow loop over the prediction files."""
    inter, union = np.zeros(3), np.zeros(3)
    for name in sorted(os.listdir(folder_images)):
        labels = predictor(cv2.imread(os.path.join(folder_images, name)))["labels"]
        gt = np.asarray(Image.open(os.path.join(folder_labels, name.replace(".jpg", ".png"))))
        valid = gt != 255
        for c in range(3):
            p, g = (labels == c) & valid, gt == c
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
    present = union > 0
    return 100.0 * np.mean(inter[present] / union[present])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_file, restore_loggers):
    """MTA-CLIP toy trained 3 iterations on the example dataset declared only by its dataset file."""
    tmp = tmp_path_factory.mktemp("own")
    clip = str(tmp / "clip.pt")
    shutil.copy(tiny_clip_file, clip)
    out = str(tmp / "run")
    _forget_example_datasets()
    args = train_net.get_parser().parse_args(
        [
            "--config-file",
            os.path.join(ROOT, "configs", "toy", "mtaclip_toy.yaml"),
            "--dataset-file",
            DATASET_FILE,
            "DATASETS.TRAIN",
            "('example_own_data_train',)",
            "DATASETS.TEST",
            "('example_own_data_val',)",
            "MODEL.CLIP.WEIGHTS",
            clip,
            "MODEL.DEVICE",
            "cpu",
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.WARMUP_ITERS",
            "1",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "DATALOADER.NUM_WORKERS",
            "0",
            "INPUT.MIN_SIZE_TRAIN",
            "(64,)",
            "INPUT.CROP.SIZE",
            "(64, 64)",
            "INPUT.MIN_SIZE_TEST",
            "64",
            "OUTPUT_DIR",
            out,
        ]
    )
    train_net.main(args)
    with open(os.path.join(out, "metrics.json")) as f:
        miou = [json.loads(line)["sem_seg/mIoU"] for line in f if "sem_seg/mIoU" in line]
    os.remove(clip)  # from now on everything must come from the model file
    _forget_example_datasets()
    return out, miou[-1]


def test_model_file_describes_the_model(trained):
    out, miou = trained
    data = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)
    info = data[INFO_KEY]
    assert info["classes"] == CLASSES and info["prompt_classes"] == ["background", "circle", "stripe"]
    assert info["palette"] == [[90, 90, 90], [220, 40, 40], [40, 60, 220]] and info["ignore_label"] == 255
    assert "NUM_CLASSES: 3" in info["config"] and DATASET_FILE in info["config"]
    assert 0.0 <= miou <= 100.0
    with open(os.path.join(out, "config.yaml")) as f:
        assert "NUM_CLASSES: 3" in f.read()


def test_eval_predictor_demo_from_the_model_file_alone(trained, tmp_path, capsys):
    out, train_miou = trained
    weights = os.path.join(out, "model_final.pth")
    # --eval-only with no config file: the config (and its dataset file) come from the model file.
    args = train_net.get_parser().parse_args(
        ["--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "e")]
    )
    results = train_net.main(args)
    assert results["sem_seg"]["mIoU"] == pytest.approx(train_miou, abs=1e-6)
    predictor = Predictor(weights)
    assert list(predictor.metadata.stuff_classes) == CLASSES
    expected = _miou(predictor, os.path.join(EXAMPLE, "images", "val"), os.path.join(EXAMPLE, "labels", "val"))
    assert results["sem_seg"]["mIoU"] == pytest.approx(expected, abs=1e-4)
    # The demo from the model file alone writes the Predictor's labels.
    rc = demo.main(
        [
            "--weights",
            weights,
            "--input",
            os.path.join(EXAMPLE, "images", "val"),
            "--output",
            str(tmp_path / "demo"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0, capsys.readouterr()
    for name in ("val_0", "val_1"):
        labels = np.asarray(Image.open(tmp_path / "demo" / "labels" / f"{name}.png"))  # palette PNG: indices
        image = cv2.imread(os.path.join(EXAMPLE, "images", "val", f"{name}.jpg"))
        np.testing.assert_array_equal(labels, predictor(image)["labels"])
    # The slim inference file: weights + description only, much smaller, same predictions.
    slim = str(tmp_path / "model_slim.pth")
    tool = load_tool("slim_checkpoint")
    assert tool.main([weights, slim]) == 0
    data = torch.load(slim, map_location="cpu", weights_only=True)
    assert set(data) == {"model", INFO_KEY}
    assert os.path.getsize(slim) < 0.5 * os.path.getsize(weights)
    image = cv2.imread(os.path.join(EXAMPLE, "images", "val", "val_0.jpg"))
    np.testing.assert_array_equal(Predictor(slim)(image)["labels"], predictor(image)["labels"])
