#!/usr/bin/env python
"""Semantic segmentation with an exported ONNX file, ONNX Runtime only (no torch, no detectron2).

    python tools/onnx_demo.py --model mtaclip_r50.onnx --input img.jpg photos/ --output out/

Writes the same files as demo/demo.py does for the same labels; for an image ``a/b.jpg``
(relative to a folder given as input, else its file name):
  out/overlays/a/b.png   lossless overlay (class names inside the image, legend of the classes
                         present), drawn by the project's mta_clip/visualization.py
  out/labels/a/b.png     label map: pixel values = class indices, a palette PNG that shows the
                         class colours in any viewer (16-bit grayscale when C > 256)
Needs numpy, opencv-python(-headless), Pillow and onnxruntime, plus three torch-free files of the
project that demo/demo.py uses to read images and write these files: mta_clip/demo_io.py,
visualization.py and atomic_io.py. They are loaded by file path (the package itself, which
imports torch and detectron2, is not imported) from ../mta_clip next to this script, or from the
folder given by --package-dir when the script is copied to a machine without the project.

The file's metadata (written by tools/export_model.py) gives the class names, palette and how
an image is run:
  - "test_resize" and "dynamic": the file resizes like the test data and returns the result at
    the image's size: the image is given as it is (when the file's batch is dynamic, up to
    --batch-size images of the same size in one call);
  - not "dynamic": the file serves "image_size" only: the image is resized to it (bilinear) and
    the class distribution back to the image's size (bilinear) before the argmax;
  - "dynamic" without "test_resize" (older exports): the image is resized like the test data
    (short side INPUT.MIN_SIZE_TEST, long side at most MAX_SIZE_TEST), the distribution back as
    above.
Grayscale, RGBA and 16-bit images are converted; unreadable files and videos are reported and
skipped. Exit status 0 when every image was processed, 1 when some were skipped, 2 on bad
arguments, a missing project file or an unusable model file.
"""

import argparse
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from types import ModuleType
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

logger = logging.getLogger("onnx_demo")

METADATA_KEY = "mta_clip"
# the project's files this script loads (demo_io imports the other two)
PACKAGE_FILES = ("demo_io.py", "visualization.py", "atomic_io.py")
_LOAD_ERRORS = (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail, ort_errors.NoSuchFile)
_RUN_ERRORS = (ort_errors.InvalidArgument, ort_errors.Fail, ort_errors.RuntimeException)


def default_package_dir() -> str:
    """``mta_clip/`` of the project this script belongs to (``tools/../mta_clip``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mta_clip")


def load_project_modules(package_dir: str) -> ModuleType:
    """The project's torch-free modules, loaded from ``package_dir`` by file path: a package whose
    ``demo_io`` and ``visualization`` attributes are those modules.

    The folder is registered as a package under a private name, so that the relative imports of
    ``demo_io`` (``visualization``, ``atomic_io``) resolve to its own files, while the project's
    ``__init__.py`` (which imports torch and detectron2) is not run.
    """
    folder = os.path.abspath(package_dir)
    missing = [f for f in PACKAGE_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(
            f"tools/onnx_demo.py needs the project's files {', '.join(os.path.join(folder, f) for f in missing)} "
            f"(it reads images and draws with them, like demo/demo.py): copy {', '.join(PACKAGE_FILES)} from the "
            f"project's mta_clip/ folder to this machine and pass that folder as --package-dir"
        )
    name = "_onnx_demo_mta_clip_" + hashlib.sha1(folder.encode()).hexdigest()[:12]
    if name not in sys.modules:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [folder]
        sys.modules[name] = importlib.util.module_from_spec(spec)
    importlib.import_module(name + ".demo_io")  # imports .visualization too
    return sys.modules[name]


def read_model_metadata(session: ort.InferenceSession, path: str) -> Dict:
    """The JSON metadata tools/export_model.py writes, checked for what this script uses."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: export it with tools/export_model.py")
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the '{METADATA_KEY}' metadata is not JSON ({e})") from e
    required = ["class_names", "palette", "input"] + ([] if meta.get("dynamic") else ["image_size"])
    absent = [k for k in required if not meta.get(k)]
    if absent:
        raise ValueError(f"{path}: the '{METADATA_KEY}' metadata lacks {', '.join(absent)}")
    test_size = ("min_size_test", "max_size_test")
    if meta.get("dynamic") and not meta.get("test_resize") and any(k not in meta["input"] for k in test_size):
        raise ValueError(f"{path}: the '{METADATA_KEY}' metadata lacks input.min_size_test / input.max_size_test")
    if len(meta["palette"]) != len(meta["class_names"]):
        raise ValueError(
            f"{path}: {len(meta['class_names'])} class names but {len(meta['palette'])} palette colors in the metadata"
        )
    return meta


def run_size(meta: Dict, height: int, width: int) -> Tuple[int, int]:
    """The (h, w) at which a file with metadata ``meta`` is run for an image of (height, width)."""
    if not meta.get("dynamic"):
        h, w = meta["image_size"]
        return int(h), int(w)
    if meta.get("test_resize"):
        return height, width
    short, longest = meta["input"]["min_size_test"], meta["input"]["max_size_test"]
    scale = short / min(height, width) if short > 0 else 1.0
    if longest > 0 and max(height, width) * scale > longest:
        scale = longest / max(height, width)
    lo = int(meta.get("min_image_size", 1))
    return max(int(height * scale + 0.5), lo), max(int(width * scale + 0.5), lo)


class OnnxSegmenter:
    """An exported file in an ONNX Runtime session, applied to BGR uint8 images of any size."""

    def __init__(self, path: str, threads: int = 0):
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.meta = read_model_metadata(self.session, path)
        self.class_names: List[str] = list(self.meta["class_names"])
        self.palette = [tuple(int(v) for v in c) for c in self.meta["palette"]]  # RGB
        self.dtype = np.float32 if self.meta["input"].get("dtype") == "float32" else np.uint8
        image_input = self.session.get_inputs()[0]
        self.input_name = image_input.name
        batch = image_input.shape[0]
        # None: any batch size (a dynamic axis has a name, not a number)
        self.max_batch: Optional[int] = batch if isinstance(batch, int) else None
        if self.max_batch not in (None, 1):
            raise ValueError(f"{path} takes batches of exactly {batch} images; this script runs 1 or a dynamic batch")

    def predict(self, images: Sequence[np.ndarray], batch_size: int = 1) -> List[np.ndarray]:
        """(H, W, 3) uint8 BGR images -> their (H, W) int64 label maps. Images that run at the same
        size go through the model together, up to ``batch_size`` (1 when the file's batch is fixed)."""
        step = max(1, batch_size if self.max_batch is None else self.max_batch)
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(run_size(self.meta, *image.shape[:2]), []).append(i)
        out: List[Optional[np.ndarray]] = [None] * len(images)
        for (h, w), members in groups.items():
            for start in range(0, len(members), step):
                part = members[start : start + step]
                batch = np.stack([self._resized(images[i], h, w) for i in part]).astype(self.dtype)
                probs, labels = self.session.run(["probs", "labels"], {self.input_name: batch})
                for k, i in enumerate(part):
                    out[i] = self._at_image_size(probs[k], labels[k], *images[i].shape[:2])
        return out

    @staticmethod
    def _resized(image: np.ndarray, h: int, w: int) -> np.ndarray:
        if image.shape[:2] == (h, w):
            return image
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)

    @staticmethod
    def _at_image_size(probs: np.ndarray, labels: np.ndarray, height: int, width: int) -> np.ndarray:
        """Labels at (height, width): the file's own when it ran at that size, else the argmax of
        the class distribution resized back (bilinear, float32)."""
        if labels.shape == (height, width):
            return labels
        back = cv2.resize(probs.transpose(1, 2, 0).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        return back.reshape(height, width, -1).argmax(2)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="ONNX file written by tools/export_model.py")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the overlay")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images per model call (files with a dynamic batch size)"
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = its default)")
    parser.add_argument(
        "--package-dir",
        metavar="FOLDER",
        default=default_package_dir(),
        help=f"folder with the project's {', '.join(PACKAGE_FILES)} (default: %(default)s)",
    )
    return parser


def run_images(
    model: OnnxSegmenter, project: ModuleType, items: List[Tuple[str, str]], out_dir: str, args
) -> Tuple[int, List[Tuple[str, str]]]:
    """Reads, segments and writes the images in batches; returns (written, [(path, reason) skipped])."""
    names = project.visualization.short_names(model.class_names)
    written, failed = 0, []
    batch: List[Tuple[str, str, np.ndarray]] = []

    def flush() -> None:
        nonlocal written
        if not batch:
            return
        try:
            labels = model.predict([b[2] for b in batch], args.batch_size)
        except _RUN_ERRORS as e:
            for path, _, _ in batch:
                logger.warning("Skipping %s: ONNX Runtime could not run it (%s)", path, e)
                failed.append((path, f"ONNX Runtime could not run it ({e})"))
            batch.clear()
            return
        for (path, key, image), lab in zip(batch, labels):
            overlay, _ = project.demo_io.save_demo_outputs(out_dir, key, image, lab, names, model.palette, args.alpha)
            logger.info("%s -> %s", path, overlay)
            written += 1
        batch.clear()

    for path, key in items:
        try:
            image = project.demo_io.read_image(path)
        except (OSError, ValueError) as e:
            logger.warning("Skipping %s: %s", path, e)
            failed.append((path, str(e)))
            continue
        batch.append((path, key, image))
        if len(batch) >= max(1, args.batch_size):
            flush()
    flush()
    return written, failed


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1:
        logger.error("--batch-size must be at least 1, got %d", args.batch_size)
        return 2
    try:
        project = load_project_modules(args.package_dir)
    except FileNotFoundError as e:
        logger.error("%s", e)
        return 2
    if not os.path.isfile(args.model):
        logger.error("--model %s: no such file", args.model)
        return 2
    images, videos, missing = project.demo_io.collect_inputs(args.input)
    failed: List[Tuple[str, str]] = list(missing) + [(v, "a video (demo/demo.py segments videos)") for v in videos]
    if not images:
        logger.error("no image to process: %s", "; ".join(f"{m}: {why}" for m, why in failed))
        return 2
    problem = project.demo_io.output_problem(args.output)
    if problem:
        logger.error("--output %s: %s", args.output, problem)
        return 2
    try:
        model = OnnxSegmenter(args.model, args.threads)
    except (ValueError, *_LOAD_ERRORS) as e:
        logger.error("--model %s: not a usable exported file: %s", args.model, e)
        return 2
    if args.batch_size > 1 and model.max_batch is not None:
        logger.warning("%s takes one image per call (fixed batch size): --batch-size is not used", args.model)
    for path, why in failed:
        logger.warning("Skipping %s: %s", path, why)
    written, bad = run_images(model, project, images, args.output, args)
    failed.extend(bad)
    logger.info("Done: %d image(s) written to %s, %d skipped", written, args.output, len(failed))
    for path, why in failed:
        logger.info("  skipped %s: %s", path, why)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
