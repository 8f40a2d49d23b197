"""tools/onnx_demo.py: ONNX Runtime only (torch and detectron2 cannot be imported in its process),
same labels as the PyTorch Predictor, overlays and label maps written."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mta_clip.predictor import Predictor
from tests.conftest import ROOT, TOY_BASELINE_CONFIG, load_tool, save_random_toy_weights

# runs the demo with torch and detectron2 made unimportable (a None entry in sys.modules)
RUNNER = (
    "import runpy, sys; sys.modules['torch'] = None; sys.modules['detectron2'] = None; "
    "sys.argv = ['onnx_demo.py'] + sys.argv[1:]; "
    "runpy.run_path({demo!r}, run_name='__main__')"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_demo")
    weights = save_random_toy_weights(folder, seed=4)
    path = str(folder / "toy.onnx")
    tool = load_tool("export_model")
    assert (
        tool.main(
            [
                "--config-file",
                TOY_BASELINE_CONFIG,
                "--weights",
                weights,
                "--format",
                "onnx",
                "--size",
                "96",
                "128",
                "--output",
                path,
            ]
        )
        == 0
    )
    return weights, path


def test_demo_without_torch(exported, tmp_path):
    weights, model_path = exported
    rng = np.random.default_rng(5)
    images = tmp_path / "in"
    images.mkdir()
    same_size = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(images / "a.png"), same_size)
    cv2.imwrite(str(images / "b.png"), rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = RUNNER.format(demo=os.path.join(ROOT, "tools", "onnx_demo.py"))
    proc = subprocess.run(
        [sys.executable, "-c", code, "--model", model_path, "--input", str(images), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr  # one unreadable input was skipped
    assert "skipped" in proc.stderr and "broken.png" in proc.stderr
    labels = cv2.imread(str(out / "labels" / "a.png"), cv2.IMREAD_UNCHANGED)
    expected = Predictor(TOY_BASELINE_CONFIG, weights=weights)(same_size)["labels"]
    assert labels.shape == (96, 128) and (labels == expected).mean() >= 0.999
    overlay = cv2.imread(str(out / "overlays" / "a.jpg"))
    assert overlay.shape[0] == 96 and overlay.shape[1] > 128  # image + legend panel
    other = cv2.imread(str(out / "labels" / "b.png"), cv2.IMREAD_UNCHANGED)
    assert other.shape == (50, 70) and other.max() < 6
    assert not any(".tmp-" in f for _, _, files in os.walk(out) for f in files)
