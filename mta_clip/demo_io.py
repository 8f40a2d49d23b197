"""Files in and out of the demos (``demo/demo.py`` with PyTorch, ``tools/onnx_demo.py`` with ONNX
Runtime), so that both read the same inputs and write the same files.

Only numpy, OpenCV and Pillow are used here and in the modules it imports (``visualization``,
``atomic_io``), so ``tools/onnx_demo.py`` loads these files without torch or Detectron2.

- :func:`collect_inputs`: image files, folders (relative paths as output keys), glob patterns,
  videos.
- :func:`read_image`: any image file as (H, W, 3) uint8 BGR; unreadable or truncated files raise.
- :func:`save_demo_outputs`: ``overlays/<key>.png`` and ``labels/<key>.png`` of one image.
"""

import glob
import os
import tempfile
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from .visualization import render_overlay, save_label_png, save_png

__all__ = [
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "collect_inputs",
    "is_video",
    "output_problem",
    "overlay_bgr",
    "read_image",
    "save_demo_outputs",
    "to_bgr_uint8",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTS)


def collect_inputs(inputs: Sequence[str]) -> Tuple[List[Tuple[str, str]], List[str], List[Tuple[str, str]]]:
    """-> ([(image path, output key)], [video paths], [(input that gives nothing, why)]).

    A folder gives its images and videos (recursively, hidden files left out) with the path
    relative to it, without extension, as key; a file or glob pattern gives its matches keyed by
    file name. Two inputs with the same key get ``_1``, ``_2`` ... appended. Any file that is not a
    video is tried as an image (an unreadable one is reported when read).
    """
    images, videos, missing = [], [], []
    used = set()

    def add(path: str, key: str) -> None:
        base, n = key, 1
        while key in used:
            key, n = f"{base}_{n}", n + 1
        used.add(key)
        images.append((path, key))

    for item in inputs:
        if os.path.isdir(item):
            found, found_videos = [], []
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames.sort()
                for f in sorted(filenames):
                    if f.startswith("."):
                        continue
                    if f.lower().endswith(IMAGE_EXTS):
                        found.append(os.path.join(dirpath, f))
                    elif is_video(f):
                        found_videos.append(os.path.join(dirpath, f))
            for path in found:
                add(path, os.path.splitext(os.path.relpath(path, item))[0])
            videos.extend(found_videos)
            if not found and not found_videos:
                missing.append((item, f"folder has no image ({', '.join(IMAGE_EXTS)}) or video file"))
            continue
        matches = [item] if os.path.exists(item) else sorted(glob.glob(os.path.expanduser(item)))
        if not matches:
            missing.append((item, "no such file"))
        for path in matches:
            if is_video(path):
                videos.append(path)
            else:
                add(path, os.path.splitext(os.path.basename(path))[0])
    return images, videos, missing


def to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """Any image as loaded by ``cv2.imread(..., IMREAD_UNCHANGED)`` -> (H, W, 3) uint8 BGR.

    Accepts (H, W) / (H, W, 1) grayscale, (H, W, 3) BGR, (H, W, 4) BGRA (alpha dropped), uint8 or
    uint16 (scaled by 255/65535). Anything else raises ValueError.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy image, got {type(image).__name__}")
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 or uint16 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR; grayscale / RGBA / 16-bit converted. Raises ValueError if unreadable."""
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError("not a readable image (tools/validate_dataset.py checks a whole dataset)")
    try:  # OpenCV decodes a truncated file without an error; PIL notices
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError) as e:
        raise ValueError(f"truncated or damaged image ({e}); tools/validate_dataset.py checks a whole dataset") from e
    return to_bgr_uint8(image)


def output_problem(folder: str) -> Optional[str]:
    """Why ``folder`` cannot receive the outputs (None when it can): created if missing, then a
    probe file is written and removed."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        return "exists and is not a folder"
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        return f"cannot be created or written ({e.strerror or e})"
    return None


def overlay_bgr(
    image_bgr: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    alpha: float,
    legend_width_px: Optional[int] = None,
) -> np.ndarray:
    """:func:`render_overlay` of a BGR image, returned in BGR (``legend_width_px``: fixed legend
    width, every frame of a video the same size, rows that do not fit become "+ N more")."""
    vis = render_overlay(
        image_bgr[:, :, ::-1],
        labels,
        names,
        colors,
        alpha=alpha,
        legend_width_px=legend_width_px,
        grow=legend_width_px is None,
    )
    return np.ascontiguousarray(vis[:, :, ::-1])


def save_demo_outputs(
    out_dir: str,
    key: str,
    image_bgr: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    alpha: float,
) -> Tuple[str, str]:
    """Writes, atomically, ``out_dir/overlays/<key>.png`` (the overlay with display ``names``, a
    lossless PNG) and ``out_dir/labels/<key>.png`` (:func:`save_label_png`); returns both paths."""
    overlay_path = os.path.join(out_dir, "overlays", key + ".png")
    label_path = os.path.join(out_dir, "labels", key + ".png")
    save_label_png(label_path, labels, colors)
    save_png(overlay_path, render_overlay(image_bgr[:, :, ::-1], labels, names, colors, alpha=alpha))
    return overlay_path, label_path
