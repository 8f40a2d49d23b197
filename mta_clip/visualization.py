"""Pictures of semantic segmentations: overlays, panels, legends, palette label PNGs.

Only numpy, OpenCV and Pillow are used here (no torch, no Detectron2), so deployment code can
draw the same pictures. Images are RGB ``uint8`` arrays ``(H, W, 3)``; label maps are integer
``(H, W)`` arrays of class indices where values outside ``[0, C)`` (e.g. 255) are "ignore".

- :func:`render_overlay`: the image with the classes painted over it (region borders, in-image
  class labels that neither overlap nor leave the image) and a legend ordered by class index with
  colour, name and share of the image. Inputs smaller than ``min_side`` are upscaled (integer
  factor, nearest neighbour for the labels) so that the text stays readable.
- :func:`render_panels`: image | ground truth | prediction | errors, side by side, one legend.
- :func:`label_png`: a "P" mode PNG whose pixel values are the class indices and whose palette
  holds the class colours, so any image viewer shows the colours.
"""

import colorsys
import io
import os
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "LabelBox",
    "colorize",
    "draw_legend",
    "label_png",
    "legend_entries",
    "legend_width",
    "overlay_legend_width",
    "place_labels",
    "readable_palette",
    "render_overlay",
    "render_panels",
    "save_label_png",
    "save_png",
    "short_names",
]

Color = Tuple[int, int, int]

# Distinct, mid-lightness colours that read well over photos; the first is not red so that a
# first class such as "sky" does not look alarming. Used in this order, then a hue walk.
_READABLE_BASE: Tuple[Color, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (219, 219, 141),
    (158, 218, 229),
    (57, 59, 121),
)
IGNORE_COLOR: Color = (0, 0, 0)
ERROR_COLOR: Color = (230, 25, 25)
MIN_SIDE = 384  # overlays of smaller inputs are upscaled by an integer factor to at least this


def readable_palette(num_classes: int) -> List[Color]:
    """``num_classes`` distinct RGB colours: 20 hand-picked ones, then a golden-ratio hue walk."""
    colors = list(_READABLE_BASE[:num_classes])
    for i in range(len(colors), num_classes):
        hue = (i * 0.618033988749895) % 1.0
        sat = 0.55 + 0.35 * ((i // 5) % 2)
        val = 0.9 - 0.3 * ((i // 2) % 2)
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colors.append((int(round(r * 255)), int(round(g * 255)), int(round(b * 255))))
    return colors


def short_names(names: Sequence[str]) -> List[str]:
    """Display names: the first synonym of ADE20k-style ``"a, b, c"`` names."""
    return [str(n).split(",")[0].strip() for n in names]


def _palette_array(colors: Sequence[Sequence[int]]) -> np.ndarray:
    """(256, 3) uint8 lookup table: class colours, then IGNORE_COLOR."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = IGNORE_COLOR
    n = min(len(colors), 256)
    if n:
        lut[:n] = np.asarray(colors[:n], dtype=np.uint8).reshape(n, 3)
    return lut


def _valid(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return (labels >= 0) & (labels < num_classes)


def colorize(labels: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) RGB; values outside ``[0, C)`` get IGNORE_COLOR."""
    labels = np.asarray(labels)
    table = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    out = np.empty(labels.shape + (3,), np.uint8)
    out[:] = IGNORE_COLOR
    valid = _valid(labels, len(table))
    out[valid] = table[labels[valid]]
    return out


# ------------------------------------------------------------------------------------------------
# Label files
# ------------------------------------------------------------------------------------------------


def label_png(labels: np.ndarray, colors: Sequence[Sequence[int]]) -> bytes:
    """PNG bytes of a label map whose pixel values are the class indices.

    With at most 256 classes: a palette ("P" mode) image; index ``i`` shows ``colors[i]`` in any
    viewer, unused entries (255 = ignore) are black. More classes: a 16-bit grayscale PNG.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError(f"label values must be in 0..65535, got {labels.min()}..{labels.max()}")
    buf = io.BytesIO()
    if len(colors) <= 256 and (not labels.size or labels.max() <= 255):
        image = Image.fromarray(labels.astype(np.uint8), mode="P")
        image.putpalette(_palette_array(colors).reshape(-1).tolist())
        image.save(buf, format="PNG", optimize=False)
    else:
        image = Image.fromarray(labels.astype(np.uint16))
        image.save(buf, format="PNG")
    return buf.getvalue()


def _write_atomic(path: str, data: bytes) -> None:
    from .atomic_io import atomic_output  # imported here: this module stays importable alone

    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def save_label_png(path: str, labels: np.ndarray, colors: Sequence[Sequence[int]]) -> None:
    """Writes :func:`label_png` to ``path`` atomically (folders created)."""
    _write_atomic(path, label_png(labels, colors))


def png_bytes(image_rgb: np.ndarray) -> bytes:
    """Lossless PNG bytes of an (H, W, 3) RGB uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_rgb)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def save_png(path: str, image_rgb: np.ndarray) -> None:
    """Writes an (H, W, 3) RGB uint8 image as a lossless PNG, atomically (folders created)."""
    _write_atomic(path, png_bytes(image_rgb))


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font (no system font needed)."""
    return ImageFont.load_default(size=max(8, int(size)))


def _text_size(font, text: str) -> Tuple[int, int]:
    x0, y0, x1, y1 = font.getbbox(text)
    return int(x1 - min(x0, 0)), int(y1 - min(y0, 0))


def font_size_for(height: int, width: int) -> int:
    return int(np.clip(round(min(height, width) / 24), 12, 28))


def _text_color(rgb: Sequence[int]) -> Color:
    """Black or white, whichever contrasts more with ``rgb`` (relative luminance)."""
    r, g, b = (float(c) for c in rgb)
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


# ------------------------------------------------------------------------------------------------
# In-image labels
# ------------------------------------------------------------------------------------------------


class LabelBox:
    """A class label drawn inside the image: box ``[x0, x1) x [y0, y1)`` in pixels."""

    __slots__ = ("cls", "text", "x0", "y0", "x1", "y1")

    def __init__(self, cls: int, text: str, x0: int, y0: int, x1: int, y1: int):
        self.cls, self.text, self.x0, self.y0, self.x1, self.y1 = cls, text, x0, y0, x1, y1

    def overlaps(self, other: "LabelBox", gap: int = 0) -> bool:
        return not (
            self.x1 + gap <= other.x0
            or other.x1 + gap <= self.x0
            or self.y1 + gap <= other.y0
            or other.y1 + gap <= self.y0
        )

    def __repr__(self) -> str:
        return f"LabelBox({self.cls}, {self.text!r}, {self.x0}, {self.y0}, {self.x1}, {self.y1})"


def place_labels(
    labels: np.ndarray,
    names: Sequence[str],
    font_size: Optional[int] = None,
    min_share: float = 0.004,
    max_candidates: int = 400,
) -> List[LabelBox]:
    """Boxes for the names of the classes present: inside the image and pairwise disjoint.

    Classes are placed largest first. Each box is tried at points of its class region, deepest
    inside the region first (distance transform); the first position that stays inside the image
    and overlaps no placed box wins. A class whose name fits nowhere gets no box (the legend still
    lists it); classes below ``min_share`` of the image get none either.
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    font = _font(font_size or font_size_for(h, w))
    pad = 2
    ids, counts = np.unique(labels[_valid(labels, len(names))], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    placed: List[LabelBox] = []
    for i in order:
        cls, area = int(ids[i]), int(counts[i])
        if area < min_share * labels.size:
            continue
        text = names[cls]
        tw, th = _text_size(font, text)
        bw, bh = tw + 2 * pad, th + 2 * pad
        if bw > w or bh > h:
            continue
        mask = np.zeros((h + 2, w + 2), np.uint8)
        mask[1:-1, 1:-1] = labels == cls  # zero frame: the image border counts as region border
        depth = cv2.distanceTransform(mask, cv2.DIST_L2, 3)[1:-1, 1:-1]
        step = max(1, min(bh, bw) // 3)
        sub = depth[::step, ::step]
        ys, xs = np.nonzero(sub > 0)
        if ys.size == 0:
            continue
        best = np.argsort(-sub[ys, xs], kind="stable")[:max_candidates]
        for j in best:
            cy, cx = int(ys[j]) * step, int(xs[j]) * step
            x0 = int(np.clip(cx - bw // 2, 0, w - bw))
            y0 = int(np.clip(cy - bh // 2, 0, h - bh))
            box = LabelBox(cls, text, x0, y0, x0 + bw, y0 + bh)
            if not any(box.overlaps(p, gap=1) for p in placed):
                placed.append(box)
                break
    return placed


def _draw_boxes(canvas: np.ndarray, boxes: Sequence[LabelBox], colors, font_size: int) -> np.ndarray:
    if not boxes:
        return canvas
    font = _font(font_size)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for b in boxes:
        fill = tuple(int(c) for c in colors[b.cls])
        draw.rectangle([b.x0, b.y0, b.x1 - 1, b.y1 - 1], fill=fill, outline=(20, 20, 20))
        x0, y0, _, _ = font.getbbox(b.text)
        draw.text((b.x0 + 2 - min(x0, 0), b.y0 + 2 - min(y0, 0)), b.text, font=font, fill=_text_color(fill))
    return np.asarray(image)


# ------------------------------------------------------------------------------------------------
# Legend
# ------------------------------------------------------------------------------------------------


def legend_entries(
    labels: np.ndarray, num_classes: int, classes: Optional[Sequence[int]] = None
) -> List[Tuple[int, float]]:
    """[(class index, % of the labelled pixels)] of the classes present, ordered by class index.

    ``classes``: list these classes (in index order) even when absent (share 0).
    """
    labels = np.asarray(labels)
    valid = labels[_valid(labels, num_classes)]
    counts = np.bincount(valid.ravel().astype(np.int64), minlength=num_classes)
    total = max(int(labels.size), 1)
    present = set(np.nonzero(counts)[0].tolist()) | set(int(c) for c in (classes or ()))
    return [(c, 100.0 * counts[c] / total) for c in sorted(present)]


def legend_width(names: Sequence[str], font_size: int) -> int:
    """Width in pixels of a legend that fits every one of ``names`` (fixed width for videos)."""
    font = _font(font_size)
    text_w = max((_text_size(font, f"{n}  100.0%")[0] for n in names), default=0)
    return text_w + font_size * 2 + 16


def draw_legend(
    height: int,
    entries: Sequence[Tuple[int, float]],
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    font_size: int,
    width: Optional[int] = None,
    grow: bool = True,
) -> np.ndarray:
    """White (H', width, 3) panel: one row per entry (colour swatch, name, share), in the given order.

    ``grow``: the panel gets taller than ``height`` when the rows need it; otherwise rows that do
    not fit are replaced by a last row "+ N more".
    """
    font = _font(font_size)
    row_h = font_size + 8
    if width is None:
        width = legend_width([names[c] for c, _ in entries] or [""], font_size)
    rows = list(entries)
    fit = max(1, (height - 8) // row_h)
    more = 0
    if not grow and len(rows) > fit:
        more = len(rows) - (fit - 1)
        rows = rows[: fit - 1]
    panel_h = max(height, (len(rows) + (1 if more else 0)) * row_h + 8)
    image = Image.new("RGB", (width, panel_h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    sw = font_size
    for r, (cls, share) in enumerate(rows):
        y = 4 + r * row_h
        draw.rectangle([6, y + 3, 6 + sw, y + 3 + sw], fill=tuple(int(c) for c in colors[cls]), outline=(0, 0, 0))
        draw.text((12 + sw, y + 3), f"{names[cls]}  {share:.1f}%", font=font, fill=(0, 0, 0))
    if more:
        draw.text((12 + sw, 4 + len(rows) * row_h + 3), f"+ {more} more", font=font, fill=(0, 0, 0))
    return np.asarray(image)


def overlay_legend_width(names: Sequence[str], height: int, width: int, min_side: int = MIN_SIDE) -> int:
    """The legend width :func:`render_overlay` uses for an (H, W) input when it fits every name:
    pass it as ``legend_width_px`` to give all frames of a video the same size."""
    factor = display_scale(height, width, min_side)
    return legend_width(names, font_size_for(height * factor, width * factor))


def _hstack(parts: Sequence[np.ndarray], gap: int = 0) -> np.ndarray:
    height = max(p.shape[0] for p in parts)
    out = []
    for i, p in enumerate(parts):
        if p.shape[0] < height:
            p = np.concatenate([p, np.full((height - p.shape[0],) + p.shape[1:], 255, np.uint8)], axis=0)
        out.append(p)
        if gap and i + 1 < len(parts):
            out.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(out, axis=1)


# ------------------------------------------------------------------------------------------------
# Overlay and panels
# ------------------------------------------------------------------------------------------------


def display_scale(height: int, width: int, min_side: int = MIN_SIDE) -> int:
    """Integer upscaling factor that brings the shorter side to at least ``min_side``."""
    return max(1, int(np.ceil(min_side / max(1, min(height, width)))))


def _upscale(image_rgb: np.ndarray, labels: np.ndarray, factor: int) -> Tuple[np.ndarray, np.ndarray]:
    if factor == 1:
        return image_rgb, labels
    h, w = labels.shape
    image = cv2.resize(image_rgb, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST)
    big = np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)
    return image, big


def _check(image_rgb: np.ndarray, labels: np.ndarray) -> None:
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image_rgb.shape} {image_rgb.dtype}")
    if labels.shape != image_rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {image_rgb.shape[:2]} differ in size")


def _paint(image_rgb: np.ndarray, labels: np.ndarray, colors, alpha: float) -> np.ndarray:
    """Colours blended over the image (ignored pixels untouched), darker region borders."""
    valid = _valid(labels, len(colors))
    color = colorize(labels, colors).astype(np.float32)
    out = image_rgb.astype(np.float32)
    out[valid] = (1.0 - alpha) * out[valid] + alpha * color[valid]
    lab = labels.astype(np.int32)
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    out[edge] = 0.35 * out[edge]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def render_overlay(
    image_rgb: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    alpha: float = 0.55,
    in_image_labels: bool = True,
    legend: bool = True,
    legend_width_px: Optional[int] = None,
    grow: bool = True,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """The image with its segmentation painted over it and a legend on the right.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        labels: (H, W) class indices; values outside ``[0, C)`` are left unpainted.
        names, colors: C display names and C RGB colours.
        legend_width_px: fixed legend width (videos: every frame the same size); None = fit.
        grow: let the legend make the picture taller when it has many rows (False: "+ N more").
    Returns:
        (s*H [or more], s*W + legend, 3) uint8 RGB, ``s = display_scale(H, W, min_side)``.
    """
    labels = np.asarray(labels)
    _check(image_rgb, labels)
    factor = display_scale(*labels.shape, min_side=min_side)
    image, big = _upscale(image_rgb, labels, factor)
    font_size = font_size_for(*big.shape)
    canvas = _paint(image, big, colors, alpha)
    if in_image_labels:
        canvas = _draw_boxes(canvas, place_labels(big, names, font_size), colors, font_size)
    if not legend:
        return canvas
    entries = legend_entries(labels, len(names))
    panel = draw_legend(canvas.shape[0], entries, names, colors, font_size, legend_width_px, grow=grow)
    return _hstack([canvas, panel])


def _title(tile: np.ndarray, text: str, font_size: int) -> np.ndarray:
    font = _font(font_size)
    strip = Image.new("RGB", (tile.shape[1], font_size + 10), (255, 255, 255))
    ImageDraw.Draw(strip).text((4, 4), text, font=font, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), tile], axis=0)


def error_map(image_rgb: np.ndarray, pred: np.ndarray, gt: np.ndarray, num_classes: int) -> Tuple[np.ndarray, float]:
    """Errors tile and error rate: grey image where right, ERROR_COLOR where wrong, black where
    the ground truth is ignored. The rate is % of the labelled pixels."""
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    out = np.repeat((0.35 * gray.astype(np.float32) + 110).astype(np.uint8)[:, :, None], 3, axis=2)
    labelled = _valid(gt, num_classes)
    wrong = labelled & (pred != gt)
    out[wrong] = ERROR_COLOR
    out[~labelled] = IGNORE_COLOR
    rate = 100.0 * wrong.sum() / max(int(labelled.sum()), 1)
    return out, float(rate)


def render_panels(
    image_rgb: np.ndarray,
    pred: np.ndarray,
    gt: Optional[np.ndarray],
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    alpha: float = 0.55,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """image | ground truth | prediction | errors (without ``gt``: image | prediction), with
    titles and one legend (classes of either map, by class index, share in the prediction)."""
    pred = np.asarray(pred)
    _check(image_rgb, pred)
    if gt is not None:
        gt = np.asarray(gt)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    factor = display_scale(*pred.shape, min_side=min(min_side, 256))
    image, big_pred = _upscale(image_rgb, pred, factor)
    font_size = font_size_for(*big_pred.shape)
    tiles = [_title(image, "image", font_size)]
    classes = []
    if gt is not None:
        _, big_gt = _upscale(image_rgb, gt, factor)
        tile = _paint(image, big_gt, colors, alpha)
        tile = _draw_boxes(tile, place_labels(big_gt, names, font_size), colors, font_size)
        tiles.append(_title(tile, "ground truth", font_size))
        classes = sorted(set(np.unique(gt[_valid(gt, len(names))]).tolist()))
    tile = _paint(image, big_pred, colors, alpha)
    tile = _draw_boxes(tile, place_labels(big_pred, names, font_size), colors, font_size)
    tiles.append(_title(tile, "prediction", font_size))
    if gt is not None:
        errors, rate = error_map(image, big_pred, big_gt, len(names))
        tiles.append(_title(errors, f"errors ({rate:.1f}% wrong)", font_size))
    entries = legend_entries(pred, len(names), classes)
    panel = draw_legend(tiles[0].shape[0], entries, names, colors, font_size)
    return _hstack(tiles + [panel], gap=4)
