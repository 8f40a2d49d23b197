#!/usr/bin/env python
"""Semantic segmentation of images, folders, videos or a webcam with an MTA-CLIP / Mask2Former model.

    python demo/demo.py --weights output/model_final.pth --input img.jpg photos/ clip.mp4 --output out/
    python demo/demo.py --config-file configs/ade20k/X.yaml --input img.jpg photos/ clip.mp4 \\
        --output out/ --opts MODEL.WEIGHTS model_final.pth
    python demo/demo.py --config-file C --webcam [--output out/]

Writes, for an image ``a/b.jpg`` (relative to a folder given as input, else its file name):
  out/overlays/a/b.jpg   the image with the predicted regions (Detectron2's Visualizer) and a
                         legend of the classes present (largest first, share of the image)
  out/labels/a/b.png     raw label map (class index per pixel; uint16 PNG when C > 255)
For a video ``clip.mp4``: out/clip_overlay.mp4 and out/labels/clip/<frame>.png.
Grayscale, RGBA and 16-bit images are converted; unreadable files are reported and skipped.
Exit status 0 when every input was processed, 1 when some were skipped, 2 on bad arguments.
"""
import argparse
import glob
import logging
import os
import sys
import tempfile
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import tqdm
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.data.catalog import Metadata  # noqa: E402
from detectron2.utils.visualizer import ColorMode, Visualizer  # noqa: E402

from mta_clip.atomic_io import atomic_output  # noqa: E402
from mta_clip.predictor import Predictor, to_bgr_uint8  # noqa: E402

logger = logging.getLogger("mta_clip.demo")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.45
ROW_H = 18


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE",
                        help="model config (not needed with --weights of a model file written by train_net.py)")
    parser.add_argument("--weights", metavar="FILE",
                        help="model file; alone it gives the config, class names and palette too")
    parser.add_argument("--dataset-file", action="append", default=[], metavar="FILE",
                        help="dataset file to register (datasets named by the config); repeatable")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="module or .py file to import first (own dataset registration); repeatable")
    parser.add_argument("--input", nargs="+", default=[], help="image files, folders, glob patterns or videos")
    parser.add_argument("--webcam", action="store_true", help="read the default camera")
    parser.add_argument("--output", help="output folder (required except with --webcam)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1 ..."
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the overlay")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def _is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTS)


def collect_inputs(inputs: Sequence[str]) -> Tuple[List[Tuple[str, str]], List[str], List[Tuple[str, str]]]:
    """-> ([(image path, output key)], [video paths], [(input that gives nothing, why)])."""
    images, videos, missing = [], [], []
    used = set()

    def add(path: str, key: str) -> None:
        base, n = key, 1
        while key in used:  # two inputs with the same name: keep both
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
                    elif _is_video(f):
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
            if _is_video(path):
                videos.append(path)
            else:  # any other file is tried as an image; an unreadable one is reported
                add(path, os.path.splitext(os.path.basename(path))[0])
    return images, videos, missing


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


# ------------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------------


def display_metadata(metadata) -> Metadata:
    """Short display names (first synonym of 'a, b, c') and the dataset's colors."""
    names = [str(n).split(",")[0].strip() for n in metadata.stuff_classes]
    return Metadata(name=f"{metadata.name}_display", stuff_classes=names, stuff_colors=metadata.stuff_colors)


def legend_width(names: Sequence[str]) -> int:
    text_w = max(cv2.getTextSize(f"{n} 100.0%", FONT, FONT_SCALE, 1)[0][0] for n in names)
    return text_w + 2 * ROW_H + 8


def draw_legend(
    image_rgb: np.ndarray, labels: np.ndarray, meta: Metadata, width: int, grow: bool = True
) -> np.ndarray:
    """Appends a white panel listing the classes present (largest first) with their colors.

    ``grow``: make the canvas taller when the list does not fit (images); otherwise the list is cut
    and ends with "..." (videos need a fixed frame size).
    """
    h = image_rgb.shape[0]
    ids, counts = np.unique(labels, return_counts=True)
    keep = ids < len(meta.stuff_classes)
    ids, counts = ids[keep], counts[keep]
    order = np.argsort(-counts, kind="stable")
    entries = [(int(ids[i]), 100.0 * counts[i] / labels.size) for i in order]
    rows_fit = max(1, (h - 8) // ROW_H)
    if grow:
        height = max(h, len(entries) * ROW_H + 8)
    else:
        height = h
        if len(entries) > rows_fit:
            entries = entries[: rows_fit - 1] + [(-1, 0.0)]
    canvas = np.full((height, image_rgb.shape[1] + width, 3), 255, np.uint8)
    canvas[:h, : image_rgb.shape[1]] = image_rgb
    x0 = image_rgb.shape[1] + 6
    for row, (cls, share) in enumerate(entries):
        y = 4 + row * ROW_H
        if cls < 0:
            cv2.putText(canvas, "...", (x0, y + ROW_H - 5), FONT, FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
            break
        color = tuple(int(c) for c in meta.stuff_colors[cls])
        cv2.rectangle(canvas, (x0, y + 2), (x0 + ROW_H - 4, y + ROW_H - 2), color, thickness=-1)
        cv2.rectangle(canvas, (x0, y + 2), (x0 + ROW_H - 4, y + ROW_H - 2), (0, 0, 0), thickness=1)
        text = f"{meta.stuff_classes[cls]} {share:.1f}%"
        cv2.putText(canvas, text, (x0 + ROW_H + 2, y + ROW_H - 5), FONT, FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def render(image_bgr: np.ndarray, labels: np.ndarray, meta: Metadata, width: int, alpha: float,
           grow: bool = True) -> np.ndarray:
    """-> (H', W + legend, 3) uint8 BGR overlay with legend."""
    vis = Visualizer(image_bgr[:, :, ::-1], meta, instance_mode=ColorMode.IMAGE)
    overlay = vis.draw_sem_seg(labels, alpha=alpha).get_image()
    return draw_legend(overlay, labels, meta, width, grow=grow)[:, :, ::-1]


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------


def write_image_atomic(path: str, image: np.ndarray) -> None:
    """Encodes ``image`` in the format of ``path``'s extension and writes it atomically."""
    ok, buf = cv2.imencode(os.path.splitext(path)[1], image)
    if not ok:
        raise OSError(f"could not encode {path}")
    with atomic_output(path) as tmp:
        buf.tofile(tmp)


def label_png(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return labels.astype(np.uint8 if num_classes <= 255 else np.uint16)


def run_images(predictor: Predictor, items: List[Tuple[str, str]], out_dir: str, meta: Metadata, width: int,
               args) -> Tuple[int, List[Tuple[str, str]]]:
    """Processes images in batches; returns (written, [(path, reason) skipped])."""
    written, failed = 0, []
    bar = tqdm.tqdm(total=len(items), desc="images", unit="img", disable=len(items) < 2)
    batch: List[Tuple[str, str, np.ndarray]] = []

    def flush() -> None:
        nonlocal written
        if not batch:
            return
        outs = predictor.predict_batch([b[2] for b in batch], return_probs=False)
        for (_path, key, image), out in zip(batch, outs):
            labels = out["labels"]
            write_image_atomic(os.path.join(out_dir, "labels", key + ".png"), label_png(labels, predictor.num_classes))
            write_image_atomic(
                os.path.join(out_dir, "overlays", key + ".jpg"), render(image, labels, meta, width, args.alpha)
            )
            written += 1
        bar.update(len(batch))
        batch.clear()

    for path, key in items:
        try:
            image = read_image(path)
        except (OSError, ValueError) as e:
            logger.warning("Skipping %s: %s", path, e)
            failed.append((path, str(e)))
            bar.update(1)
            continue
        batch.append((path, key, image))
        if len(batch) >= max(1, args.batch_size):
            flush()
    flush()
    bar.close()
    return written, failed


def _frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def run_stream(predictor: Predictor, capture: cv2.VideoCapture, name: str, out_dir: Optional[str],
               meta: Metadata, width: int, args) -> int:
    """Segments every frame; writes <name>_overlay.mp4 + label PNGs, or shows a window. -> frames."""
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer, tmp, final = None, None, None
    n = 0
    try:
        for frame in tqdm.tqdm(_frames(capture), total=total, desc=name, unit="frame"):
            labels = predictor(frame, return_probs=False)["labels"]
            vis = render(frame, labels, meta, width, args.alpha, grow=False)
            if out_dir is None:
                cv2.imshow(name, vis)
                if cv2.waitKey(1) == 27:  # Esc
                    break
            else:
                if writer is None:
                    os.makedirs(out_dir, exist_ok=True)
                    final = os.path.join(out_dir, f"{name}_overlay.mp4")
                    tmp = os.path.join(out_dir, f".{name}_overlay.tmp-{os.getpid()}.mp4")
                    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (vis.shape[1], vis.shape[0]))
                    if not writer.isOpened():
                        raise OSError(f"cannot open a video writer for {final}")
                writer.write(vis)
                write_image_atomic(
                    os.path.join(out_dir, "labels", name, f"{n:06d}.png"), label_png(labels, predictor.num_classes)
                )
            n += 1
    finally:
        if writer is not None:
            writer.release()
            if n:
                os.replace(tmp, final)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return n


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    if not args.input and not args.webcam:
        print("error: give --input and/or --webcam", file=sys.stderr)
        return 2
    if args.input and not args.output:
        print("error: --output is required with --input", file=sys.stderr)
        return 2
    if not args.config_file and not args.weights:
        print("error: give --weights MODEL_FILE (written by train_net.py) and/or --config-file", file=sys.stderr)
        return 2
    if args.weights and not os.path.isfile(args.weights):
        print(f"error: --weights {args.weights}: no such file", file=sys.stderr)
        return 2
    if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
        print(f"error: --output {args.output} exists and is not a folder", file=sys.stderr)
        return 2
    images, videos, missing = collect_inputs(args.input)
    if args.input and not images and not videos:
        print("error: no input to process: " + "; ".join(f"{m}: {why}" for m, why in missing), file=sys.stderr)
        return 2
    if args.output:
        problem = output_problem(args.output)  # before the (slow) model build
        if problem:
            print(f"error: --output {args.output}: {problem}", file=sys.stderr)
            return 2
    if args.config_file:
        predictor = Predictor(args.config_file, args.weights, device=args.device, opts=args.opts,
                              dataset_files=args.dataset_file, imports=args.imports)
    else:
        predictor = Predictor(args.weights, device=args.device, opts=args.opts, dataset_files=args.dataset_file,
                              imports=args.imports)
    meta = display_metadata(predictor.metadata)
    width = legend_width(meta.stuff_classes)
    failed: List[Tuple[str, str]] = list(missing)
    for m, why in missing:
        logger.warning("Skipping %s: %s", m, why)
    written = 0
    if images:
        n, bad = run_images(predictor, images, args.output, meta, width, args)
        written += n
        failed.extend(bad)
    for path in videos:
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            logger.warning("Skipping %s: not a readable video", path)
            failed.append((path, "not a readable video"))
            continue
        name = os.path.splitext(os.path.basename(path))[0]
        frames = run_stream(predictor, capture, name, args.output, meta, width, args)
        capture.release()
        if frames == 0:
            failed.append((path, "no frame could be read"))
        else:
            written += 1
    if args.webcam:
        capture = cv2.VideoCapture(0)
        if not capture.isOpened():
            failed.append(("webcam", "cannot open camera 0"))
        else:
            run_stream(predictor, capture, "webcam", args.output, meta, width, args)
            capture.release()
    print(f"Done: {written} input(s) written to {args.output}, {len(failed)} skipped.")
    for path, reason in failed:
        print(f"  skipped {path}: {reason}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
