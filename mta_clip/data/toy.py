"""Generated toy semantic-segmentation dataset ``toy_sem_seg_{train,val}``.

Small RGB PNG images of textured shapes (rectangles, ellipses, polygons, stripes) over simple
scenes, with uint8 label PNGs in Detectron2's sem_seg format (class index per pixel, 255 = ignore).
Each class has a distinctive color and texture, so a small model learns it fast; sizes, positions,
per-image color jitter, noise and occlusions vary.

The files are written on first use into
``$DETECTRON2_DATASETS/toy_sem_seg/{images,labels}/{train,val}`` (default ``datasets/``).
Generation is deterministic and atomic: everything goes into a temporary sibling folder that is
renamed into place once complete (a ``VERSION`` marker is written last), so an interrupted run never
leaves a dataset that counts as complete, and concurrent generators do not corrupt each other.
"""

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "TOY_CLASSES",
    "TOY_COLORS",
    "default_toy_root",
    "generate_toy_dataset",
    "is_toy_dataset_complete",
    "load_toy_sem_seg",
    "register_toy_sem_seg",
]

logger = logging.getLogger(__name__)

# Bump when the generator's output changes: a dataset with another marker is regenerated.
TOY_VERSION = 1
TOY_DIRNAME = "toy_sem_seg"
IGNORE_LABEL = 255
SPLIT_SIZES = {"train": 320, "val": 40}
IMAGE_SIZE = 96
_SPLIT_SEEDS = {"train": 1, "val": 2}
_TMP_PREFIX = f".{TOY_DIRNAME}.tmp-"
_OLD_PREFIX = f".{TOY_DIRNAME}.old-"
_STALE_TMP_SECONDS = 3600.0

TOY_CLASSES = ["sky", "grass", "road", "water", "car", "building"]
# RGB base color of every class (also the display colors of the metadata).
TOY_COLORS = [
    [135, 195, 240],  # sky: light blue, smooth vertical gradient
    [70, 165, 45],  # grass: green, coarse grain
    [105, 105, 110],  # road: gray, lane dashes
    [25, 60, 150],  # water: deep blue, horizontal waves
    [200, 30, 35],  # car: red, glossy highlight band
    [165, 110, 70],  # building: brown, dark window grid
]
_SKY, _GRASS, _ROAD, _WATER, _CAR, _BUILDING = range(len(TOY_CLASSES))
_GROUNDS = (_GRASS, _ROAD, _WATER)


def default_toy_root() -> str:
    """``$DETECTRON2_DATASETS/toy_sem_seg`` (``datasets/toy_sem_seg`` when unset)."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), TOY_DIRNAME)


def _marker(sizes: Dict[str, int], image_size: int) -> Dict:
    return {"version": TOY_VERSION, "sizes": dict(sorted(sizes.items())), "image_size": image_size}


def _file_stems(split: str, n: int) -> List[str]:
    return [f"{split}_{i:05d}" for i in range(n)]


def is_toy_dataset_complete(root: str, sizes: Optional[Dict[str, int]] = None, image_size: int = IMAGE_SIZE) -> bool:
    """True if ``root`` holds every file of a finished generation with the expected marker."""
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    try:
        with open(os.path.join(root, "VERSION"), "r", encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    if marker != _marker(sizes, image_size):
        return False
    for split, n in sizes.items():
        for sub, ext in (("images", ".png"), ("labels", ".png")):
            folder = os.path.join(root, sub, split)
            try:
                present = set(os.listdir(folder))
            except OSError:
                return False
            if not all(s + ext in present for s in _file_stems(split, n)):
                return False
    return True


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------


def _draw_shape(label: np.ndarray, cls: int, rng: np.random.Generator) -> None:
    """Paints one random shape of class ``cls`` into ``label`` (H, W) uint8, in place."""
    h, w = label.shape
    kind = rng.choice(["rectangle", "ellipse", "polygon", "stripe"], p=[0.3, 0.3, 0.25, 0.15])
    size = int(rng.integers(12, max(13, int(0.55 * min(h, w)))))
    cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
    if kind == "rectangle":
        rw = size
        rh = max(6, int(size * rng.uniform(0.4, 1.6)))
        x0, y0 = cx - rw // 2, cy - rh // 2
        cv2.rectangle(label, (x0, y0), (x0 + rw, y0 + rh), int(cls), thickness=-1)
    elif kind == "ellipse":
        axes = (max(5, size // 2), max(4, int(size * rng.uniform(0.25, 0.8))))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(label, (cx, cy), axes, angle, 0, 360, int(cls), thickness=-1)
    elif kind == "polygon":
        n = int(rng.integers(3, 8))
        # roughly even angles keep the polygon from collapsing into a sliver
        offset = rng.uniform(0, 2 * np.pi)
        angles = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2 * np.pi / n) + offset
        radii = rng.uniform(0.5, 1.0, n) * size * 0.65
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(label, [np.round(pts).astype(np.int32)], int(cls))
    else:  # stripe: a band across the whole image at a random angle
        thickness = int(rng.integers(6, 16))
        theta = float(rng.uniform(0, np.pi))
        dx, dy = np.cos(theta) * 2 * (h + w), np.sin(theta) * 2 * (h + w)
        p0 = (int(round(cx - dx)), int(round(cy - dy)))
        p1 = (int(round(cx + dx)), int(round(cy + dy)))
        cv2.line(label, p0, p1, int(cls), thickness=thickness)


def _make_label(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) uint8 label map: a scene, shapes, sometimes an ignore region."""
    h = w = size
    label = np.empty((h, w), np.uint8)
    if rng.random() < 0.6:  # outdoor scene: sky above a ground class
        horizon = int(rng.integers(h // 4, 2 * h // 3))
        label[:horizon] = _SKY
        label[horizon:] = rng.choice(_GROUNDS)
    else:  # a single background class
        label[:] = rng.integers(0, len(TOY_CLASSES))
    for _ in range(int(rng.integers(1, 5))):
        _draw_shape(label, int(rng.integers(0, len(TOY_CLASSES))), rng)
    if rng.random() < 0.3:  # unlabelled clutter
        if rng.random() < 0.5:
            band = int(rng.integers(2, 7))
            side = int(rng.integers(0, 4))
            sl = [np.s_[:band, :], np.s_[-band:, :], np.s_[:, :band], np.s_[:, -band:]][side]
            label[sl] = IGNORE_LABEL
        else:
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(3, 11)), int(rng.integers(3, 11)))
            cv2.ellipse(label, center, axes, 0.0, 0, 360, IGNORE_LABEL, thickness=-1)
    return label


def _class_textures(rng: np.random.Generator, size: int) -> np.ndarray:
    """(C, size, size, 3) float32 RGB texture of every class for one image."""
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.asarray(TOY_COLORS, np.float32) + rng.uniform(-20, 20, (len(TOY_CLASSES), 3))
    tex = np.broadcast_to(base[:, None, None, :], (len(TOY_CLASSES), h, w, 3)).copy()
    tex[_SKY] += (18.0 * (0.5 - yy / h))[..., None]  # lighter at the top
    tex[_SKY] += rng.normal(0, 3, (h, w, 1))
    tex[_GRASS] += rng.normal(0, 18, (h, w, 1)) * np.array([0.5, 1.0, 0.4], np.float32)
    tex[_ROAD] += rng.normal(0, 5, (h, w, 1))
    dash = ((yy.astype(np.int32) // 3) % 6 == 0) & ((xx.astype(np.int32) // 8) % 2 == 0)
    tex[_ROAD][dash] = [225.0, 215.0, 120.0]
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.35, 0.6)
    tex[_WATER] += (22.0 * np.sin(freq * yy + 0.15 * xx + phase))[..., None] * np.array([0.3, 0.6, 1.0], np.float32)
    tex[_WATER] += rng.normal(0, 3, (h, w, 1))
    tex[_CAR] += rng.normal(0, 4, (h, w, 1))
    glint = (xx + yy + rng.uniform(0, 16)) % 16 < 3
    tex[_CAR][glint] += 55.0
    ox, oy = rng.integers(0, 7, 2)
    window = (((xx + ox) % 7) < 3) & (((yy + oy) % 8) < 4)
    tex[_BUILDING][window] *= 0.35
    tex[_BUILDING] += rng.normal(0, 4, (h, w, 1))
    return tex


def _make_image(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 RGB image rendered from ``label``."""
    h, w = label.shape
    tex = _class_textures(rng, h)
    known = label != IGNORE_LABEL
    image = np.empty((h, w, 3), np.float32)
    image[known] = tex[label[known], np.nonzero(known)[0], np.nonzero(known)[1]]
    image[~known] = rng.uniform(0, 255, (int((~known).sum()), 3))
    image += rng.normal(0, 3, (h, w, 3))  # sensor noise
    image *= rng.uniform(0.8, 1.2)  # global exposure
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def make_toy_sample(split: str, index: int, image_size: int = IMAGE_SIZE) -> Tuple[np.ndarray, ...]:
    """Deterministic (image (H, W, 3) uint8 RGB, label (H, W) uint8) pair ``index`` of ``split``."""
    rng = np.random.default_rng([TOY_VERSION, _SPLIT_SEEDS[split], index])
    label = _make_label(rng, image_size)
    image = _make_image(label, rng)
    return image, label


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _write_png(path: str, array: np.ndarray) -> None:
    if not cv2.imwrite(path, array, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"Could not write {path}")


def _remove_stale_temp_dirs(parent: str) -> None:
    """Deletes leftovers of interrupted generations older than an hour (never a live one)."""
    now = time.time()
    for name in os.listdir(parent):
        if not (name.startswith(_TMP_PREFIX) or name.startswith(_OLD_PREFIX)):
            continue
        path = os.path.join(parent, name)
        try:
            if now - os.path.getmtime(path) > _STALE_TMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def generate_toy_dataset(
    root: Optional[str] = None,
    sizes: Optional[Dict[str, int]] = None,
    image_size: int = IMAGE_SIZE,
) -> str:
    """Writes the toy dataset into ``root`` (default :func:`default_toy_root`) unless complete.

    Returns the root. Safe against interruption and concurrent calls (see module docstring).
    """
    root = os.path.abspath(default_toy_root() if root is None else root)
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(_SPLIT_SEEDS)
    if unknown:
        raise ValueError(f"Unknown toy split(s) {sorted(unknown)}; expected {sorted(_SPLIT_SEEDS)}")
    if is_toy_dataset_complete(root, sizes, image_size):
        return root

    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temp_dirs(parent)
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=parent)
    try:
        for split, n in sizes.items():
            img_dir = os.path.join(tmp, "images", split)
            lab_dir = os.path.join(tmp, "labels", split)
            os.makedirs(img_dir)
            os.makedirs(lab_dir)
            for i, stem in enumerate(_file_stems(split, n)):
                image, label = make_toy_sample(split, i, image_size)
                _write_png(os.path.join(img_dir, stem + ".png"), image[:, :, ::-1])  # RGB -> BGR
                _write_png(os.path.join(lab_dir, stem + ".png"), label)
        with open(os.path.join(tmp, "VERSION"), "w", encoding="utf-8") as f:
            json.dump(_marker(sizes, image_size), f)
        _move_into_place(tmp, root, sizes, image_size)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        f"Generated toy dataset {sizes} ({image_size}x{image_size}) in {root} in {time.perf_counter() - start:.2f} s"
    )
    return root


def _move_into_place(tmp: str, root: str, sizes: Dict[str, int], image_size: int) -> None:
    """Renames the finished ``tmp`` to ``root``, replacing an incomplete / outdated ``root``."""
    for _ in range(3):
        try:
            os.rename(tmp, root)
            return
        except OSError:
            if not os.path.exists(root):
                raise
        # ``root`` exists: another process finished first, or it is stale.
        if is_toy_dataset_complete(root, sizes, image_size):
            return
        old = tempfile.mkdtemp(prefix=_OLD_PREFIX, dir=os.path.dirname(root))
        try:
            os.rename(root, os.path.join(old, TOY_DIRNAME))
        except FileNotFoundError:
            pass  # someone else moved it aside
        shutil.rmtree(old, ignore_errors=True)
    raise RuntimeError(f"Could not move the generated toy dataset into {root}")


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------


def load_toy_sem_seg(root: str, split: str) -> List[Dict]:
    """Generates the dataset under ``root`` if needed; returns the dataset dicts of ``split``."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"Unknown toy split {split!r}; expected one of {sorted(SPLIT_SIZES)}")
    generate_toy_dataset(root)
    img_dir = os.path.join(root, "images", split)
    lab_dir = os.path.join(root, "labels", split)
    return [
        {
            "file_name": os.path.join(img_dir, stem + ".png"),
            "sem_seg_file_name": os.path.join(lab_dir, stem + ".png"),
            "height": IMAGE_SIZE,
            "width": IMAGE_SIZE,
            "image_id": stem,
        }
        for stem in _file_stems(split, SPLIT_SIZES[split])
    ]


def register_toy_sem_seg(root: Optional[str] = None, prefix: str = TOY_DIRNAME) -> None:
    """Registers ``{prefix}_train`` and ``{prefix}_val`` with files under ``root`` (lazy)."""
    root = os.path.abspath(default_toy_root() if root is None else root)
    for split in SPLIT_SIZES:
        name = f"{prefix}_{split}"
        DatasetCatalog.register(name, lambda root=root, split=split: load_toy_sem_seg(root, split))
        MetadataCatalog.get(name).set(
            stuff_classes=list(TOY_CLASSES),
            prompt_classes=list(TOY_CLASSES),
            stuff_colors=[list(c) for c in TOY_COLORS],
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
            image_root=os.path.join(root, "images", split),
            sem_seg_root=os.path.join(root, "labels", split),
        )


if f"{TOY_DIRNAME}_train" not in DatasetCatalog.list():
    register_toy_sem_seg()
