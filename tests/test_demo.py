"""demo/demo.py on generated images, a broken file and a short video (toy config, CPU)."""

import importlib.util
import os
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from mta_clip.predictor import Predictor
from tests.conftest import ROOT, save_random_toy_weights
from tests.conftest import TOY_BASELINE_CONFIG as CONFIG

_spec = importlib.util.spec_from_file_location("mta_clip_demo", os.path.join(ROOT, "demo", "demo.py"))
demo = importlib.util.module_from_spec(_spec)
sys.modules["mta_clip_demo"] = demo
_spec.loader.exec_module(demo)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(weights path, Predictor with those weights) of a random toy model."""
    path = save_random_toy_weights(tmp_path_factory.mktemp("w"), seed=1)
    return path, Predictor(CONFIG, weights=path, device="cpu")


def _run_demo(weights, output, *inputs) -> int:
    """demo/demo.py's exit code for the toy config with ``weights`` on CPU, writing to ``output``;
    ``inputs``: the input options (``"--input", path, ...`` or ``"--webcam"``)."""
    args = ["--config-file", CONFIG, *inputs, "--output", str(output), "--device", "cpu"]
    return demo.main(args + ["--opts", "MODEL.WEIGHTS", weights])


def test_images_folder_and_bad_files(model, tmp_path, capsys):
    weights, predictor = model
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    color = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(src / "color.jpg"), color)
    gray16 = rng.integers(0, 65536, (20, 18), dtype=np.uint16)
    cv2.imwrite(str(src / "sub" / "gray16.png"), gray16)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    cv2.imwrite(str(src / "rgba.png"), rgba)
    (src / "broken.png").write_bytes(b"not an image")
    single = tmp_path / "single.png"
    cv2.imwrite(str(single), color[:10, :12])
    out = tmp_path / "out"
    rc = _run_demo(weights, out, "--input", str(src), str(single), str(tmp_path / "missing.jpg"))
    assert rc == 1  # two inputs skipped, the run went on
    printed = capsys.readouterr().out
    assert "4 input(s) written" in printed and "broken.png" in printed and "missing.jpg" in printed
    expected = {
        "color": cv2.imread(str(src / "color.jpg")),
        os.path.join("sub", "gray16"): gray16,
        "rgba": rgba,
        "single": color[:10, :12],
    }
    for key, image in expected.items():
        with Image.open(out / "labels" / (key + ".png")) as png:
            assert png.mode == "P"  # class colours in any viewer, pixel values = class indices
            labels = np.array(png)
            palette = np.array(png.getpalette()[: 3 * 6], np.uint8).reshape(6, 3)
        assert labels.shape == image.shape[:2]
        np.testing.assert_array_equal(labels, predictor(image)["labels"])
        np.testing.assert_array_equal(palette, np.array(predictor.metadata.stuff_colors, np.uint8))
        overlay = cv2.imread(str(out / "overlays" / (key + ".png")))
        s = -(-384 // min(image.shape[:2]))  # tiny inputs are upscaled by an integer factor
        assert overlay.shape[0] >= s * image.shape[0] and overlay.shape[1] > s * image.shape[1]  # legend
    assert not (out / "labels" / "broken.png").exists()
    hidden = [f for _, _, files in os.walk(out) for f in files if f.startswith(".")]
    assert hidden == []


def test_video(model, tmp_path):
    weights, _ = model
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (32, 24))
    assert writer.isOpened()
    rng = np.random.default_rng(2)
    for _ in range(3):
        writer.write(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    rc = _run_demo(weights, out, "--input", path)
    assert rc == 0
    assert sorted(os.listdir(out / "labels" / "clip")) == ["000000.png", "000001.png", "000002.png"]
    capture = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 3


def test_arguments(capsys, tmp_path):
    assert demo.main(["--config-file", CONFIG]) == 2
    assert demo.main(["--config-file", CONFIG, "--input", "x.jpg"]) == 2
    assert "--output" in capsys.readouterr().err
    # checked before the model is built: an output that is a file, inputs that give nothing
    a_file = tmp_path / "a.png"
    a_file.write_bytes(b"x")
    assert demo.main(["--config-file", CONFIG, "--input", str(a_file), "--output", str(a_file)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        demo.main(
            [
                "--config-file",
                CONFIG,
                "--input",
                str(tmp_path / "empty"),
                str(tmp_path / "nope.jpg"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "folder has no image" in err and "nope.jpg: no such file" in err
    assert not (tmp_path / "out").exists()


def test_folders_give_their_videos_too(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.MP4", ".hidden.png", "notes.txt"):
        (tmp_path / "in" / name).write_bytes(b"")
    images, videos, missing = demo.collect_inputs([str(tmp_path / "in")])
    assert [key for _, key in images] == ["a"]
    assert videos == [str(tmp_path / "in" / "sub" / "b.MP4")] and missing == []


def test_webcam(model, tmp_path, monkeypatch):
    """--webcam reads camera 0 frame by frame; stood in for by a short video (no camera here)."""
    weights, _ = model
    video = str(tmp_path / "camera.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (32, 24))
    rng = np.random.default_rng(3)
    for _ in range(2):
        writer.write(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    writer.release()
    opened = []
    real_capture = cv2.VideoCapture

    def fake_capture(source):
        opened.append(source)
        return real_capture(video if source == 0 else source)

    monkeypatch.setattr(demo.cv2, "VideoCapture", fake_capture)
    out = tmp_path / "out"
    rc = _run_demo(weights, out, "--webcam")
    assert rc == 0 and opened == [0]
    assert sorted(os.listdir(out / "labels" / "webcam")) == ["000000.png", "000001.png"]
    assert os.path.isfile(out / "webcam_overlay.mp4")


def test_webcam_that_cannot_open_is_reported(model, tmp_path, monkeypatch, capsys):
    weights, _ = model

    class Closed:
        def isOpened(self):
            return False

    monkeypatch.setattr(demo.cv2, "VideoCapture", lambda source: Closed())
    rc = _run_demo(weights, tmp_path, "--webcam")
    assert rc == 1
    assert "cannot open camera 0" in capsys.readouterr().out


def test_output_that_cannot_be_written_stops_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "file").write_text("x")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(demo, "Predictor", no_model)
    rc = demo.main(["--config-file", CONFIG, "--input", str(image), "--output", str(tmp_path / "file" / "out")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output" in err[0] and "cannot be created or written" in err[0]
    assert demo.main(["--weights", str(tmp_path / "nope.pth"), "--input", str(image), "--output", str(tmp_path)]) == 2
    assert "--weights" in capsys.readouterr().err


def test_truncated_image_is_reported_with_its_name(model, tmp_path, capsys):
    weights, _ = model
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (tmp_path / "cut.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    rc = _run_demo(weights, tmp_path / "o", "--input", str(tmp_path / "cut.jpg"))
    assert rc == 1
    out = capsys.readouterr().out
    assert "cut.jpg" in out and "truncated" in out and "tools/validate_dataset.py" in out
