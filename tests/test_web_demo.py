"""demo/web_demo.py in a real headless Chromium (Debian's chromium + chromium-driver, Selenium):
the page loads, an image is submitted, an overlay and a label PNG come back."""

import importlib.util
import io
import os
import shutil
import socket
import sys
import urllib.request

import cv2
import numpy as np
import pytest
from PIL import Image

from mta_clip.visualization import display_scale
from tests.conftest import ROOT, TOY_BASELINE_CONFIG, save_random_toy_weights

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
]


def _load_web_demo():
    spec = importlib.util.spec_from_file_location("mta_clip_web_demo", os.path.join(ROOT, "demo", "web_demo.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["mta_clip_web_demo"] = module
    spec.loader.exec_module(module)
    return module


def _browser(profile_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert chromium and driver, (
        "the browser test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver "
        "(.ci/run installs them)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile_dir}"]:  # fresh profile; no network use
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    web = _load_web_demo()
    weights = save_random_toy_weights(tmp_path_factory.mktemp("w"), seed=1)
    segmenter = web.Segmenter(TOY_BASELINE_CONFIG, [weights], "cpu", output_dir=str(tmp_path_factory.mktemp("o")))
    app = web.build_app(segmenter, [])
    port = _free_port()
    web.launch(app, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}", segmenter
    app.close()


def test_page_upload_segment_download(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, segmenter = served
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (64, 48), interpolation=cv2.INTER_NEAREST)
    path = str(tmp_path / "upload.png")
    cv2.imwrite(path, image)
    driver = _browser(tmp_path / "profile")
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#segment_button"))
        assert "MTA-CLIP" in driver.title or "MTA-CLIP" in driver.page_source
        driver.find_element(By.CSS_SELECTOR, "#input_image input[type=file]").send_keys(path)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input_image img"))
        driver.find_element(By.CSS_SELECTOR, "#segment_button").click()
        wait.until(
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, "#overlay_image img")
                and d.find_elements(By.CSS_SELECTOR, "#label_png a")
            )
        )
        overlay_url = driver.find_element(By.CSS_SELECTOR, "#overlay_image img").get_attribute("src")
        label_url = driver.find_element(By.CSS_SELECTOR, "#label_png a").get_attribute("href")
        table = driver.find_element(By.CSS_SELECTOR, "#class_shares").text
    finally:
        driver.quit()
    predictor = segmenter.predictor(next(iter(segmenter.choices)))
    labels = predictor(image, return_probs=False)["labels"]
    with urllib.request.urlopen(label_url, timeout=30) as r:  # the page's download link (local server)
        png = Image.open(io.BytesIO(r.read()))
        assert png.mode == "P"
        np.testing.assert_array_equal(np.array(png), labels)
    with urllib.request.urlopen(overlay_url, timeout=30) as r:
        overlay = np.array(Image.open(io.BytesIO(r.read())).convert("RGB"))
    s = display_scale(48, 64)
    assert overlay.shape[0] >= 48 * s and overlay.shape[1] > 64 * s  # upscaled overlay + legend
    names = [str(n).split(",")[0] for n in predictor.metadata.stuff_classes]
    for c in np.unique(labels):
        assert names[c] in table


def test_missing_weights_file_is_a_clear_error(capsys):
    web = _load_web_demo()
    assert web.main(["--config-file", TOY_BASELINE_CONFIG, "--weights", "/nonexistent/model.pth"]) == 2
    assert "/nonexistent/model.pth" in capsys.readouterr().err
    assert web.main([]) == 2 and "--weights" in capsys.readouterr().err
    assert web.main(["--weights", ""]) == 2 and "needs --config-file" in capsys.readouterr().err


def test_segmenter_from_a_model_file_alone(tmp_path):
    """A model file written by the trainer (config and class names inside) needs no --config-file."""
    import torch

    from mta_clip.checkpointer import AtomicCheckpointer
    from mta_clip.model_file import model_info
    from mta_clip.predictor import Predictor

    web = _load_web_demo()
    torch.manual_seed(2)
    reference = Predictor(TOY_BASELINE_CONFIG, weights="", device="cpu")
    AtomicCheckpointer(reference.model, str(tmp_path), model_info=model_info(reference.cfg)).save("model_final")
    model_file = str(tmp_path / "model_final.pth")
    segmenter = web.Segmenter(None, [model_file], "cpu", output_dir=str(tmp_path / "out"))
    image = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    overlay, table, label_path = segmenter(image[:, :, ::-1], model_file)
    labels = reference(image, return_probs=False)["labels"]
    np.testing.assert_array_equal(np.array(Image.open(label_path)), labels)
    assert overlay.shape[0] >= 48 and table
