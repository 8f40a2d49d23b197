"""tools/export_model.py on the toy baseline: writes a checked, self-describing file; bad requests
are clear errors that write nothing."""

import logging
import os

import numpy as np
import pytest
import torch

from mta_clip.export import ExportedModel, read_metadata
from mta_clip.predictor import Predictor
from tests.conftest import TOY_BASELINE_CONFIG, load_tool, save_random_toy_weights


def toy_args(weights, size=(96, 128)):
    """Arguments of tools/export_model.py for the toy baseline as TorchScript at ``size`` (no --output)."""
    return ["--config-file", TOY_BASELINE_CONFIG, "--weights", weights, "--format", "torchscript", "--size"] + [
        str(v) for v in size
    ]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_toy_weights(tmp_path_factory.mktemp("export_tool"), seed=3)


def test_torchscript_export_with_check(weights, tmp_path, capsys):
    out = str(tmp_path / "toy.ts")
    tool = load_tool("export_model")
    assert tool.main(toy_args(weights) + ["--output", out]) == 0
    printed = capsys.readouterr().out
    assert "check at 96x128" in printed and "labels differ on 0.0000% of pixels" in printed
    meta = read_metadata(out)
    assert meta["class_names"] == ["sky", "grass", "road", "water", "car", "building"]
    assert len(meta["palette"]) == 6 and meta["image_size"] == [96, 128] and meta["dynamic"] is False
    assert meta["test_resize"] is True  # the default: the file resizes like the test mapper
    assert meta["weights"] == os.path.basename(weights)
    # the same labels as the Predictor (an independent path: numpy image, Detectron2 resize, model forward)
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    expected = Predictor(TOY_BASELINE_CONFIG, weights=weights)(image)
    probs, labels = ExportedModel(out)(torch.from_numpy(image)[None])
    assert (labels[0] == expected["labels"]).mean() >= 0.999
    np.testing.assert_allclose(probs[0], expected["probs"], atol=1e-4)


def test_model_file_alone(weights, tmp_path):
    """A model file with its description (as train_net.py writes it) needs no --config-file; the
    class names and palette in the exported file come from it."""
    from mta_clip.config import setup_cfg
    from mta_clip.model_file import INFO_KEY, model_info

    info = model_info(setup_cfg(TOY_BASELINE_CONFIG, ["MODEL.DEVICE", "cpu"]))
    info["classes"] = ["a", "b", "c", "d", "e", "f"]
    info["palette"] = [[i, 2 * i, 3 * i] for i in range(6)]
    model_file = str(tmp_path / "model.pth")
    torch.save({"model": torch.load(weights)["model"], INFO_KEY: info}, model_file)
    out = str(tmp_path / "m.ts")
    tool = load_tool("export_model")
    assert tool.main(["--weights", model_file, "--format", "torchscript", "--size", "64", "64", "--output", out]) == 0
    meta = read_metadata(out)
    assert meta["class_names"] == info["classes"] and meta["palette"] == info["palette"]
    image = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    from_config = str(tmp_path / "c.ts")
    assert tool.main(toy_args(weights, (64, 64)) + ["--output", from_config]) == 0
    np.testing.assert_array_equal(ExportedModel(out)(image)[0], ExportedModel(from_config)(image)[0])


def test_bad_requests(weights, tmp_path, caplog):
    tool = load_tool("export_model")
    out = str(tmp_path / "x.ts")
    base = ["--config-file", TOY_BASELINE_CONFIG, "--weights", weights, "--output", out]
    with pytest.raises(SystemExit) as exc:  # argparse: exit status 2 with a message
        tool.main(base + ["--format", "torchscript", "--dynamic"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        tool.main(base + ["--format", "onnx"])  # neither --size nor --dynamic
    caplog.set_level(logging.ERROR)
    aug = ["--opts", "TEST.AUG.ENABLED", "True"]
    assert tool.main(base + ["--format", "torchscript", "--size", "64", "64"] + aug) == 2
    assert "TEST.AUG.ENABLED" in caplog.text
    # without the resize inside, a dynamic file's network serves sides >= 64 only
    assert tool.main(base + ["--format", "onnx", "--dynamic", "--no-test-resize", "--sample-size", "40", "64"]) == 2
    assert ">= 64" in caplog.text
    assert not os.path.exists(out)


def test_check_on_your_own_images(weights, tmp_path, capsys, caplog):
    """--check-images: the check runs on the user's images (resized to a fixed-size file's size);
    an unreadable one is an error naming it, and nothing is written."""
    import cv2

    tool = load_tool("export_model")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    cv2.imwrite(str(folder / "a.png"), rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "b.jpg"), rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    base = toy_args(weights)
    out = str(tmp_path / "m.ts")
    assert tool.main(base + ["--output", out, "--check-images", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("check at 96x128") == 2 and "checked 2 images" in printed
    (folder / "c.png").write_bytes(b"not an image")
    caplog.set_level(logging.ERROR)
    other = str(tmp_path / "n.ts")
    assert tool.main(base + ["--output", other, "--check-images", str(folder)]) == 2
    assert "c.png" in caplog.text and not os.path.exists(other)
