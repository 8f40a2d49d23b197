#!/usr/bin/env python
"""Semantic segmentation of images, folders, videos or a webcam with an MTA-CLIP / Mask2Former model.

    python demo/demo.py --weights output/model_final.pth --input img.jpg photos/ clip.mp4 --output out/
    python demo/demo.py --config-file configs/ade20k/X.yaml --input img.jpg photos/ clip.mp4 \\
        --output out/ --opts MODEL.WEIGHTS model_final.pth
    python demo/demo.py --config-file C --webcam [--output out/]

Writes, for an image ``a/b.jpg`` (relative to a folder given as input, else its file name):
  out/overlays/a/b.png   lossless overlay at the input resolution (tiny inputs upscaled): the
                         predicted regions, their class names inside the image, and a legend of
                         the classes present ordered by class index (colour, name, share)
  out/labels/a/b.png     label map: pixel values = class indices, saved as a palette PNG that
                         shows the class colours in any viewer (16-bit grayscale when C > 256)
For a video ``clip.mp4``: out/clip_overlay.mp4 and out/labels/clip/<frame>.png.
Grayscale, RGBA and 16-bit images are converted; unreadable files are reported and skipped.
Exit status 0 when every input was processed, 1 when some were skipped, 2 on bad arguments.
"""

import argparse
import logging
import os
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mta_clip  # noqa: E402,F401  (first: quiets third-party import warnings)

# isort: split
from detectron2.data.catalog import Metadata  # noqa: E402

from mta_clip.data.dataset_file import add_dataset_arguments  # noqa: E402
from mta_clip.demo_io import (  # noqa: E402
    collect_inputs,
    output_problem,
    overlay_bgr,
    read_image,
    save_demo_outputs,
)
from mta_clip.predictor import Predictor  # noqa: E402
from mta_clip.visualization import overlay_legend_width, save_label_png, short_names  # noqa: E402

logger = logging.getLogger("mta_clip.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config-file",
        metavar="FILE",
        help="model config (not needed with --weights of a model file written by train_net.py)",
    )
    parser.add_argument(
        "--weights", metavar="FILE", help="model file; alone it gives the config, class names and palette too"
    )
    add_dataset_arguments(parser)
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
# Drawing
# ------------------------------------------------------------------------------------------------


def display_metadata(metadata) -> Metadata:
    """Short display names (first synonym of 'a, b, c') and the dataset's colors."""
    return Metadata(
        name=f"{metadata.name}_display",
        stuff_classes=short_names(metadata.stuff_classes),
        stuff_colors=[tuple(int(v) for v in c) for c in metadata.stuff_colors],
    )


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------


def run_images(
    predictor: Predictor, items: List[Tuple[str, str]], out_dir: str, meta: Metadata, args
) -> Tuple[int, List[Tuple[str, str]]]:
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
            save_demo_outputs(out_dir, key, image, out["labels"], meta.stuff_classes, meta.stuff_colors, args.alpha)
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


def run_stream(
    predictor: Predictor, capture: cv2.VideoCapture, name: str, out_dir: Optional[str], meta: Metadata, args
) -> int:
    """Segments every frame; writes <name>_overlay.mp4 + label PNGs, or shows a window. -> frames."""
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer, tmp, final = None, None, None
    width = None
    n = 0
    try:
        for frame in tqdm.tqdm(_frames(capture), total=total, desc=name, unit="frame"):
            labels = predictor(frame, return_probs=False)["labels"]
            if width is None:  # every frame the same size, legend rows in class order
                width = overlay_legend_width(meta.stuff_classes, *frame.shape[:2])
            vis = overlay_bgr(frame, labels, meta.stuff_classes, meta.stuff_colors, args.alpha, width)
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
                save_label_png(os.path.join(out_dir, "labels", name, f"{n:06d}.png"), labels, meta.stuff_colors)
            n += 1
    finally:
        if writer is not None:
            writer.release()
            if n:
                os.replace(tmp, final)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return n


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
        predictor = Predictor(
            args.config_file,
            args.weights,
            device=args.device,
            opts=args.opts,
            dataset_files=args.dataset_file,
            imports=args.imports,
        )
    else:
        predictor = Predictor(
            args.weights, device=args.device, opts=args.opts, dataset_files=args.dataset_file, imports=args.imports
        )
    meta = display_metadata(predictor.metadata)
    failed: List[Tuple[str, str]] = list(missing)
    for m, why in missing:
        logger.warning("Skipping %s: %s", m, why)
    written = 0
    if images:
        n, bad = run_images(predictor, images, args.output, meta, args)
        written += n
        failed.extend(bad)
    for path in videos:
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            logger.warning("Skipping %s: not a readable video", path)
            failed.append((path, "not a readable video"))
            continue
        name = os.path.splitext(os.path.basename(path))[0]
        frames = run_stream(predictor, capture, name, args.output, meta, args)
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
            run_stream(predictor, capture, "webcam", args.output, meta, args)
            capture.release()
    print(f"Done: {written} input(s) written to {args.output}, {len(failed)} skipped.")
    for path, reason in failed:
        print(f"  skipped {path}: {reason}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
