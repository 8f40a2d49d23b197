"""mta_clip.visualization: sizes, palette PNGs, label boxes, legend order, panels."""

import io
import itertools
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mta_clip import visualization as vis
from mta_clip.data.class_names import ADE20K_CLASSES, ADE20K_COLORS
from tests.conftest import ROOT

NAMES = ["sky", "grass", "road", "water", "car", "building"]
COLORS = [(135, 195, 240), (70, 165, 45), (105, 105, 110), (25, 60, 150), (200, 30, 35), (165, 110, 70)]


def test_importable_without_torch_or_detectron2():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('v', {repr(ROOT + '/mta_clip/visualization.py')})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert 'torch' not in sys.modules and 'detectron2' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_label_png_is_palette_image_with_class_indices():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, (13, 17))
    labels[0, :5] = 255  # ignore
    with Image.open(io.BytesIO(vis.label_png(labels, COLORS))) as png:
        assert png.mode == "P" and png.size == (17, 13)
        np.testing.assert_array_equal(np.array(png), labels)
        palette = np.array(png.getpalette(), np.uint8).reshape(-1, 3)
        rgb = np.array(png.convert("RGB"))
    np.testing.assert_array_equal(palette[:6], np.array(COLORS, np.uint8))
    # what a viewer shows: the class colours, black where ignored
    for y, x in itertools.product(range(13), range(17)):
        expected = (0, 0, 0) if labels[y, x] == 255 else COLORS[labels[y, x]]
        assert tuple(rgb[y, x]) == expected


def test_label_png_many_classes_is_16_bit():
    labels = np.arange(300 * 2).reshape(20, 30) % 300
    with Image.open(io.BytesIO(vis.label_png(labels, vis.readable_palette(300)))) as png:
        assert png.mode.startswith("I")
        np.testing.assert_array_equal(np.array(png), labels)
    with pytest.raises(ValueError, match="labels must be"):
        vis.label_png(np.zeros((2, 2, 2), int), COLORS)


def test_readable_palette_is_distinct_and_sky_not_red():
    pal = vis.readable_palette(150)
    assert len(set(pal)) == 150
    r, g, b = pal[0]
    assert not (r > 180 and g < 90 and b < 90)


def test_overlay_sizes_and_lossless_png(tmp_path):
    rng = np.random.default_rng(1)
    tiny = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    labels = np.zeros((24, 32), np.int64)
    labels[:, 16:] = 2
    out = vis.render_overlay(tiny, labels, NAMES, COLORS)
    assert out.shape[0] == 16 * 24 and out.shape[1] > 16 * 32  # upscaled x16 (384 / 24), legend
    big = rng.integers(0, 256, (400, 500, 3), dtype=np.uint8)
    out = vis.render_overlay(big, np.zeros((400, 500), np.int64), NAMES, COLORS, alpha=0.0, in_image_labels=False)
    assert out.shape[0] == 400 and out.shape[1] > 500
    # alpha 0: the image itself (no border inside one region), unchanged at the input resolution
    np.testing.assert_array_equal(out[:, :500], big)
    vis.save_png(str(tmp_path / "o.png"), out)
    with Image.open(tmp_path / "o.png") as png:
        np.testing.assert_array_equal(np.array(png), out)


def _crowded(h=48, w=64, k=12, seed=0):
    """A small map cut into k vertical stripes of random widths, plus a few blobs."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(2, w - 2), k - 1, replace=False))
    labels = np.zeros((h, w), np.int64)
    for i, c in enumerate(cuts):
        labels[:, c:] = i + 1
    labels[10:20, 5:30] = 13
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_boxes_inside_image_and_disjoint(seed):
    labels = _crowded(seed=seed)
    names = [f"long class name {i}" for i in range(20)]
    for scale in (1, 6):
        big = np.repeat(np.repeat(labels, scale, 0), scale, 1)
        boxes = vis.place_labels(big, names, font_size=12)
        h, w = big.shape
        for b in boxes:
            assert 0 <= b.x0 < b.x1 <= w and 0 <= b.y0 < b.y1 <= h, b
            assert (big[b.y0 : b.y1, b.x0 : b.x1] == b.cls).any(), b  # on its own region
            assert b.text == names[b.cls]
        for a, b in itertools.combinations(boxes, 2):
            assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0, (a, b)
        assert len({b.cls for b in boxes}) == len(boxes)
    assert len(boxes) >= 3  # at the readable scale several names fit


def test_legend_order_is_class_index_and_stable_across_frames():
    a = np.zeros((30, 40), np.int64)
    a[:, 30:] = 4  # class 0 big, class 4 small
    b = np.full((30, 40), 4, np.int64)
    b[:, 35:] = 0  # class 4 big, class 0 small
    ea, eb = vis.legend_entries(a, 6), vis.legend_entries(b, 6)
    assert [c for c, _ in ea] == [c for c, _ in eb] == [0, 4]
    assert ea[0][1] == pytest.approx(100 * 30 / 40) and eb[1][1] == pytest.approx(100 * 35 / 40)
    width = vis.overlay_legend_width(NAMES, 30, 40)
    img = np.zeros((30, 40, 3), np.uint8)
    fa = vis.render_overlay(img, a, NAMES, COLORS, legend_width_px=width, grow=False)
    fb = vis.render_overlay(img, b, NAMES, COLORS, legend_width_px=width, grow=False)
    assert fa.shape == fb.shape
    panel_a, panel_b = fa[:, -width:], fb[:, -width:]
    # the swatch rows are at the same place in both frames: class 0 first, then class 4

    def swatch_row(panel, cls):
        rows = np.nonzero((panel == np.array(COLORS[cls], np.uint8)).all(axis=2).any(axis=1))[0]
        return rows.min()

    assert swatch_row(panel_a, 0) == swatch_row(panel_b, 0) < swatch_row(panel_a, 4) == swatch_row(panel_b, 4)


def test_legend_cut_with_more_row_when_not_growing():
    entries = [(i, 1.0) for i in range(150)]
    names = vis.short_names(ADE20K_CLASSES)
    grown = vis.draw_legend(100, entries, names, ADE20K_COLORS, 12)
    assert grown.shape[0] > 100 * 10
    fixed = vis.draw_legend(100, entries, names, ADE20K_COLORS, 12, grow=False)
    assert fixed.shape[0] == 100


def test_panels_errors_tile():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    gt = np.zeros((64, 64), np.int64)
    gt[32:] = 1
    gt[:4] = 255
    pred = gt.copy()
    pred[40:50, 10:30] = 4
    pred[:4] = 2
    out = vis.render_panels(image, pred, gt, NAMES, COLORS)
    s = vis.display_scale(64, 64, 256)
    assert s == 4
    tile = 64 * s
    assert out.shape[1] > 4 * tile  # 4 tiles + legend
    # the errors tile is the 4th tile (gaps of 4 pixels), under a title strip
    x0 = 3 * (tile + 4)
    title_h = out.shape[0] - tile
    assert 0 < title_h < 60
    errors = out[title_h : title_h + tile, x0 : x0 + tile]
    wrong = np.repeat(np.repeat((pred != gt) & (gt != 255), s, 0), s, 1)
    ignored = np.repeat(np.repeat(gt == 255, s, 0), s, 1)
    red = (errors == np.array(vis.ERROR_COLOR, np.uint8)).all(axis=2)
    np.testing.assert_array_equal(red, wrong)
    assert (errors[ignored] == 0).all()
    only_pred = vis.render_panels(image, pred, None, NAMES, COLORS)
    assert only_pred.shape[1] < out.shape[1]
