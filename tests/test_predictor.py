"""mta_clip.predictor.Predictor on the toy baseline config with random weights (CPU)."""

import numpy as np
import pytest
import torch

from mta_clip.evaluation import SemSegTTA
from mta_clip.predictor import Predictor, to_bgr_uint8
from tests.conftest import TOY_BASELINE_CONFIG as CONFIG
from tests.conftest import save_random_toy_weights

NUM_CLASSES = 6


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random toy model saved as a checkpoint, so that several predictors share weights."""
    return save_random_toy_weights(tmp_path_factory.mktemp("w"), seed=0)


@pytest.fixture(scope="module")
def predictor(weights):
    return Predictor(CONFIG, weights=weights, device="cpu")


def test_outputs_match_the_model(predictor):
    img = _image(20, 28)
    out = predictor(img)
    assert out["labels"].shape == (20, 28) and out["labels"].dtype == np.int64
    assert out["probs"].shape == (NUM_CLASSES, 20, 28) and out["probs"].dtype == np.float32
    np.testing.assert_allclose(out["probs"].sum(0), 1.0, rtol=1e-5)
    assert (out["probs"] >= 0).all()
    np.testing.assert_array_equal(out["labels"], out["probs"].argmax(0))
    # Independent path: the model on the RGB image resized to the test size (short side 96).
    rgb = torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(rgb, size=(96, 134), mode="bilinear", align_corners=False)
    with torch.no_grad():
        scores = predictor.model([{"image": resized[0].round().clamp(0, 255), "height": 20, "width": 28}])[0]["sem_seg"]
    direct = (scores / scores.sum(0, keepdim=True)).numpy()
    np.testing.assert_allclose(out["probs"], direct, atol=0.02)
    assert predictor.metadata.stuff_classes == ["sky", "grass", "road", "water", "car", "building"]


def test_weights_are_loaded(weights, predictor):
    again = Predictor(CONFIG, weights=weights, device="cpu")
    img = _image(24, 24, seed=3)
    np.testing.assert_array_equal(again(img)["probs"], predictor(img)["probs"])
    random = Predictor(CONFIG, weights="", device="cpu")
    assert not np.allclose(random(img)["probs"], predictor(img)["probs"])


def test_image_kinds_are_converted(predictor):
    img = _image(18, 22, seed=1)
    gray = img[:, :, 1]
    ref_gray = predictor(np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(predictor(gray)["probs"], ref_gray["probs"])
    rgba = np.concatenate([img, np.full((18, 22, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(predictor(rgba)["probs"], predictor(img)["probs"])
    wide = img.astype(np.uint16) * 257
    np.testing.assert_array_equal(predictor(wide)["labels"], predictor(img)["labels"])
    with pytest.raises(ValueError, match="uint8 or uint16"):
        predictor(img.astype(np.float32))
    with pytest.raises(ValueError, match="image"):
        to_bgr_uint8(np.zeros((4, 4, 2), np.uint8))


def test_batches(predictor):
    a, b, c = _image(20, 28, 4), _image(20, 28, 5), _image(16, 40, 6)
    batch = predictor.predict_batch([a, b], return_probs=False)
    assert set(batch[0]) == {"labels"}
    for img, res in zip((a, b), batch):
        single = predictor(img)
        agree = (single["labels"] == res["labels"]).mean()
        assert agree > 0.99
    mixed = predictor.predict_batch([a, c, b], batch_size=2)
    assert [r["labels"].shape for r in mixed] == [(20, 28), (16, 40), (20, 28)]
    assert [r["probs"].shape for r in mixed] == [(NUM_CLASSES, 20, 28), (NUM_CLASSES, 16, 40), (NUM_CLASSES, 20, 28)]


def test_test_time_augmentation_switches(weights):
    opts = [
        "TEST.AUG.ENABLED",
        "True",
        "TEST.AUG.SCALES",
        "[0.75, 1.0]",
        "TEST.SLIDE.ENABLED",
        "True",
        "TEST.SLIDE.CROP_SIZE",
        "[64, 64]",
        "TEST.SLIDE.STRIDE",
        "[48, 48]",
    ]
    predictor = Predictor(CONFIG, weights=weights, device="cpu", opts=opts)
    assert isinstance(predictor.model, SemSegTTA) and predictor.model.flip
    out = predictor(_image(20, 30, 2))
    assert out["labels"].shape == (20, 30) and out["probs"].shape == (NUM_CLASSES, 20, 30)
    np.testing.assert_allclose(out["probs"].sum(0), 1.0, rtol=1e-5)


def test_cuda_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        Predictor(CONFIG, weights="", device="cuda")


def test_weights_are_checked_before_loading(tmp_path):
    """A URL is never fetched and a missing file names itself (as in train_net.py)."""
    with pytest.raises(ValueError, match="never downloads"):
        Predictor(CONFIG, weights="https://example.com/model_final.pth", device="cpu")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Predictor(CONFIG, weights=str(tmp_path / "nope.pth"), device="cpu")


def test_visualize_returns_bgr_overlay_with_legend(predictor):
    image = np.zeros((40, 50, 3), np.uint8)
    labels = np.full((40, 50), 2, np.int64)
    labels[:, 25:] = 4
    vis = predictor.visualize(image, {"labels": labels}, alpha=1.0)
    scale = -(-384 // 40)  # small inputs are upscaled to a 384-pixel short side
    assert vis.dtype == np.uint8 and vis.shape[0] == 40 * scale and vis.shape[1] > 50 * scale
    colors = predictor.metadata.stuff_colors  # RGB
    # alpha 1 on a black image: a pixel inside each region has its class colour, in BGR order
    assert tuple(vis[2 * scale, 5 * scale]) == tuple(colors[2][::-1])
    assert tuple(vis[38 * scale, 48 * scale]) == tuple(colors[4][::-1])
