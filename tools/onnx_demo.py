#!/usr/bin/env python
"""Semantic segmentation with an exported ONNX file, ONNX Runtime only (no torch, no detectron2).

    python tools/onnx_demo.py --model mtaclip_r50.onnx --input img.jpg photos/ --output out/

Needs numpy, opencv-python(-headless) and onnxruntime. The file's metadata (written by
tools/export_model.py) gives the class names, palette and test size. Each image is resized like
the test data (short side INPUT.MIN_SIZE_TEST, long side at most MAX_SIZE_TEST; the exact size of
a fixed-size file), segmented, and the class distribution is resized back (bilinear) before the
argmax. Writes, for ``a.jpg``:
  out/overlays/a.jpg   the image blended with the class colors, and a legend of the classes
                       present (largest first, share of the image)
  out/labels/a.png     the label map (class index per pixel; uint16 PNG when C > 255)
The drawing is kept here (self-contained) so that the deployment machine needs no project code.
Exit status 0 when every image was processed, 1 when some were skipped.
"""

import argparse
import glob
import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import onnxruntime as ort

logger = logging.getLogger("onnx_demo")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
METADATA_KEY = "mta_clip"


class OnnxSegmenter:
    """An exported file in an ONNX Runtime session, applied to BGR uint8 images of any size."""

    def __init__(self, path: str, threads: int = 0):
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: export it with tools/export_model.py")
        self.meta: Dict = json.loads(props[METADATA_KEY])
        self.class_names: List[str] = self.meta["class_names"]
        self.palette = np.asarray(self.meta["palette"], dtype=np.uint8)  # (C, 3) RGB
        self.dtype = np.float32 if self.meta["input"].get("dtype") == "float32" else np.uint8

    def run_size(self, height: int, width: int) -> Tuple[int, int]:
        """The size the model runs at for an image of (height, width)."""
        if self.meta.get("image_size"):
            return tuple(self.meta["image_size"])
        short, longest = self.meta["input"]["min_size_test"], self.meta["input"]["max_size_test"]
        scale = short / min(height, width) if short > 0 else 1.0
        if longest > 0 and max(height, width) * scale > longest:
            scale = longest / max(height, width)
        h, w = int(height * scale + 0.5), int(width * scale + 0.5)
        lo = int(self.meta.get("min_image_size", 1))
        return max(h, lo), max(w, lo)

    def __call__(self, image_bgr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 BGR -> labels (H, W) int64 and probs (C, H, W) float32 at the image size."""
        height, width = image_bgr.shape[:2]
        h, w = self.run_size(height, width)
        resized = (
            image_bgr if (h, w) == (height, width) else cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        )
        probs, labels = self.session.run(["probs", "labels"], {"image": resized[None].astype(self.dtype)})
        probs = probs[0]
        if (h, w) == (height, width):
            return labels[0], probs
        back = cv2.resize(probs.transpose(1, 2, 0), (width, height), interpolation=cv2.INTER_LINEAR)
        back = back.reshape(height, width, -1).transpose(2, 0, 1)
        return back.argmax(0), back


def overlay(
    image_bgr: np.ndarray, labels: np.ndarray, palette: np.ndarray, names: Sequence[str], alpha: float = 0.5
) -> np.ndarray:
    """The image blended with the class colors, with a legend panel on the right."""
    colors = palette[np.clip(labels, 0, len(palette) - 1)][:, :, ::-1]  # RGB -> BGR
    blended = (image_bgr.astype(np.float32) * (1 - alpha) + colors.astype(np.float32) * alpha).round().astype(np.uint8)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    present = [c for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    row, pad = 18, 6
    entries = [f"{names[c]} {100.0 * counts[c] / labels.size:.1f}%" for c in present]
    width = max([cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] for t in entries] + [0]) + 3 * pad + 12
    height = max(blended.shape[0], pad + row * len(entries))
    canvas = np.full((height, blended.shape[1] + width, 3), 255, np.uint8)
    canvas[: blended.shape[0], : blended.shape[1]] = blended
    x0 = blended.shape[1] + pad
    for i, (c, text) in enumerate(zip(present, entries)):
        y = pad + i * row
        bgr = tuple(int(v) for v in palette[c][::-1])
        cv2.rectangle(canvas, (x0, y + 2), (x0 + 12, y + 14), bgr, thickness=-1)
        cv2.putText(canvas, text, (x0 + 12 + pad, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def _write_image(path: str, image: np.ndarray) -> None:
    """cv2.imwrite to a temporary sibling, then rename: the file appears whole or not at all."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stem, ext = os.path.splitext(path)
    tmp = f"{stem}.tmp-{os.getpid()}{ext}"
    try:
        if not cv2.imwrite(tmp, image):
            raise OSError(f"could not write {path}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _inputs(patterns: Sequence[str]) -> List[Tuple[str, str]]:
    """(path, output stem) of every image named by files, folders or glob patterns."""
    found = []
    for p in patterns:
        if os.path.isdir(p):
            for root, _, files in os.walk(p):
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTS):
                        full = os.path.join(root, f)
                        found.append((full, os.path.splitext(os.path.relpath(full, p))[0]))
        else:
            matches = sorted(glob.glob(p)) or [p]
            found.extend((m, os.path.splitext(os.path.basename(m))[0]) for m in matches)
    return found


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="ONNX file written by tools/export_model.py")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = its default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = OnnxSegmenter(args.model, args.threads)
    skipped = 0
    for path, stem in _inputs(args.input):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            logger.error("skipped %s: not a readable image", path)
            skipped += 1
            continue
        labels, _ = model(image)
        _write_image(
            os.path.join(args.output, "overlays", stem + ".jpg"),
            overlay(image, labels, model.palette, model.class_names),
        )
        dtype = np.uint16 if len(model.class_names) > 255 else np.uint8
        _write_image(os.path.join(args.output, "labels", stem + ".png"), labels.astype(dtype))
        logger.info("%s -> %s", path, os.path.join(args.output, "overlays", stem + ".jpg"))
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
