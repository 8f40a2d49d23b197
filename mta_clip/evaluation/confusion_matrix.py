"""Confusion matrix of a semantic-segmentation evaluation: CSV, PNG heatmap, most confused pairs.

Rows are ground-truth classes, columns predicted classes (``M[g, p]`` = pixels of class ``g``
predicted as ``p``); pixels whose ground truth is ignored are not counted. The heatmap shows every
row divided by its sum (the share of the class's pixels that went to each prediction), so small
classes are as visible as large ones. Only numpy, OpenCV and Pillow.
"""

import io
import logging
from typing import List, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "confusion_csv",
    "confusion_heatmap",
    "from_detectron2",
    "most_confused_pairs",
    "row_normalized",
]

logger = logging.getLogger(__name__)


def from_detectron2(conf_matrix: np.ndarray, num_classes: int) -> np.ndarray:
    """Detectron2's ``SemSegEvaluator._conf_matrix`` (C+1, C+1), ``[pred, gt]``, index C = ignore
    -> (C, C) int64 ``[gt, pred]`` without ignored pixels."""
    conf = np.asarray(conf_matrix)
    if conf.shape != (num_classes + 1, num_classes + 1):
        raise ValueError(f"expected a ({num_classes + 1}, {num_classes + 1}) matrix, got {conf.shape}")
    return conf[:num_classes, :num_classes].T.astype(np.int64)


def row_normalized(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum; rows of classes without ground-truth pixels are all 0."""
    m = np.asarray(matrix, dtype=np.float64)
    sums = m.sum(axis=1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def confusion_csv(matrix: np.ndarray, names: Sequence[str]) -> str:
    """CSV text: header ``gt \\ pred, <names>``, then one row of pixel counts per ground-truth class."""
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["gt \\ pred"] + list(names))
    for name, row in zip(names, np.asarray(matrix)):
        writer.writerow([name] + [int(v) for v in row])
    return buf.getvalue()


def most_confused_pairs(matrix: np.ndarray, names: Sequence[str], k: int = 10) -> List[Tuple[str, str, int, float]]:
    """The ``k`` largest off-diagonal counts: (gt name, predicted name, pixels, % of the gt class)."""
    m = np.asarray(matrix, dtype=np.int64)
    norm = row_normalized(m)
    off = m.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = []
    for idx in flat:
        g, p = np.unravel_index(idx, off.shape)
        if off[g, p] <= 0:
            break
        pairs.append((names[g], names[p], int(off[g, p]), 100.0 * float(norm[g, p])))
    return pairs


def _viridis(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> RGB uint8 with OpenCV's viridis map."""
    v = np.clip(np.round(values * 255), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(v, cv2.COLORMAP_VIRIDIS)[..., ::-1]


def confusion_heatmap(matrix: np.ndarray, names: Sequence[str], title: str = "") -> np.ndarray:
    """(H, W, 3) RGB heatmap of the row-normalized matrix with class names on both axes.

    The cell size shrinks with the class count (24 px up to 20 classes, 9 px at 150), the names
    are written at every row and every column (rotated), a grid line every 10 classes, and the
    percentages inside the cells when there are at most 25 classes.
    """
    m = np.asarray(matrix)
    n = m.shape[0]
    norm = row_normalized(m)
    cell = int(np.clip(1400 // max(n, 1), 9, 36))
    font_size = max(8, min(14, cell - 1))
    font = ImageFont.load_default(size=font_size)
    label_w = max(int(font.getlength(str(x))) for x in names) + 8
    top = label_w + (font_size + 12 if title else 0)
    legend_w = 60
    caption = "rows: ground truth (each row sums to 100%)   columns: prediction"
    width = max(label_w + n * cell + legend_w + 10, label_w + int(font.getlength(caption)) + 10)
    height = top + n * cell + font_size + 30
    image = Image.new("RGB", (width, height), (255, 255, 255))
    grid = np.repeat(np.repeat(_viridis(norm), cell, axis=0), cell, axis=1)
    image.paste(Image.fromarray(grid), (label_w, top))
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((4, 4), title, font=font, fill=(0, 0, 0))
    for i, name in enumerate(names):  # row names (ground truth)
        y = top + i * cell + (cell - font_size) // 2 - 1
        draw.text((label_w - 4 - font.getlength(name), y), name, font=font, fill=(0, 0, 0))
    column = Image.new("RGB", (label_w, cell), (255, 255, 255))
    for i, name in enumerate(names):  # column names (prediction), rotated
        column.paste((255, 255, 255), (0, 0, label_w, cell))
        ImageDraw.Draw(column).text((4, (cell - font_size) // 2 - 1), name, font=font, fill=(0, 0, 0))
        image.paste(column.rotate(90, expand=True), (label_w + i * cell, top - label_w))
    for i in range(0, n + 1, 10 if n > 20 else 1):
        x = label_w + i * cell
        y = top + i * cell
        draw.line([(x, top), (x, top + n * cell)], fill=(255, 255, 255), width=1)
        draw.line([(label_w, y), (label_w + n * cell, y)], fill=(255, 255, 255), width=1)
    if n <= 25:
        for g in range(n):
            for p in range(n):
                if m[g, p]:
                    text = f"{100 * norm[g, p]:.0f}"
                    color = (0, 0, 0) if norm[g, p] > 0.6 else (255, 255, 255)
                    tx = label_w + p * cell + (cell - font.getlength(text)) / 2
                    draw.text((tx, top + g * cell + (cell - font_size) / 2 - 1), text, font=font, fill=color)
    # colour bar and axis captions
    bar_x = label_w + n * cell + 14
    bar_h = n * cell
    ramp = _viridis(np.linspace(1, 0, max(bar_h, 2))[:, None].repeat(14, axis=1))
    image.paste(Image.fromarray(ramp), (bar_x, top))
    draw.text((bar_x + 16, top - 2), "100%", font=font, fill=(0, 0, 0))
    draw.text((bar_x + 16, top + bar_h - font_size), "0%", font=font, fill=(0, 0, 0))
    draw.text((label_w, top + n * cell + 8), caption, font=font, fill=(0, 0, 0))
    return np.asarray(image)
