#!/usr/bin/env python
"""Exports a trained semantic model (baseline or MTA-CLIP) to ONNX or TorchScript and checks it.

    python tools/export_model.py --weights output/x/model_final.pth --format onnx --dynamic --output m.onnx
    python tools/export_model.py --config-file C --weights W.pth --format torchscript --size 512 512 --output m.ts

A model file written by ``train_net.py`` carries its config, class names and palette: ``--weights``
alone is enough. Other checkpoints (Detectron2 / Mask2Former files) need ``--config-file``.

The file takes a (B, H, W, 3) BGR image (uint8, or float32 with ``--input-dtype float32``; values
0..255) and returns ``probs`` (B, C, H, W) and ``labels`` (B, H, W) at that size, as ``Predictor``
does: the resize to the test size (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST; ``--no-test-resize``: none,
the model runs at the given size), preprocessing and semantic inference are inside it, MTA-CLIP's
text features are stored as constants, and the class names and palette are in its metadata (see
docs/export.md). ``--dynamic``: batch, height and width are free. After writing, the tool runs the file (ONNX
Runtime / torch.jit) and PyTorch on random images and prints the differences; it exits with status
1 and writes nothing when the labels differ on more than 0.1 % of the pixels, and with status 2
(a message, nothing written) for requests it cannot serve.
"""

import argparse
import json
import logging
import os
import sys
from typing import List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mta_clip  # noqa: E402,F401  (registers models and datasets)
from mta_clip.export import FORMATS, ExportCheckError, export_metadata, export_model  # noqa: E402
from mta_clip.predictor import Predictor  # noqa: E402

logger = logging.getLogger("mta_clip.export_model")


def build_for_export(config_file: Optional[str], weights: str, opts: Sequence[str] = ()):
    """(cfg, model in eval mode with ``weights`` loaded, export metadata) on the CPU.

    ``config_file`` None: ``weights`` must be a model file written by ``train_net.py`` (config, class
    names and palette inside); with a config file, class names and palette come from the model
    file when it has them, else from the config's datasets (as ``Predictor`` does).
    """
    if config_file:
        predictor = Predictor(config_file, weights, device="cpu", opts=opts)
    else:
        predictor = Predictor(weights, device="cpu", opts=opts)
    cfg = predictor.cfg
    if cfg.TEST.AUG.ENABLED:
        raise ValueError(
            "TEST.AUG.ENABLED is True: multi-scale / flip test-time augmentation is not part of the exported "
            "graph; export with --opts TEST.AUG.ENABLED False (the file is single-scale)"
        )
    if not weights:
        logger.warning("no --weights: exporting a randomly initialized model")
    meta = predictor.metadata
    metadata = export_metadata(
        cfg,
        meta.stuff_classes,
        meta.stuff_colors,
        getattr(meta, "ignore_label", 255),
        config_file=os.path.basename(config_file or ""),
        weights=os.path.basename(weights),
    )
    return cfg, predictor.model.eval(), metadata


def read_check_images(patterns: Sequence[str]) -> List:
    """(H, W, 3) BGR uint8 images named by files / folders / globs (``mta_clip.demo_io``'s rules)."""
    from mta_clip.demo_io import collect_inputs, read_image

    items, videos, missing = collect_inputs(patterns)
    problems = [f"{path}: {why}" for path, why in missing] + [f"{path}: a video" for path in videos]
    images = []
    for path, _ in items:
        try:
            images.append(read_image(path))
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
    if problems:
        raise ValueError("--check-images: " + "; ".join(problems))
    if not images:
        raise ValueError(f"--check-images {' '.join(patterns)}: no images found")
    return images


def test_size_of(cfg):
    """(INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST) of the test mapper's resize, None when it has none."""
    return (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) if cfg.INPUT.MIN_SIZE_TEST > 0 else None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config-file",
        default=None,
        help="YAML config of the model (not needed for a model file written by train_net.py)",
    )
    parser.add_argument(
        "--weights",
        required=True,
        help="model file / checkpoint (.pth / .pkl); '' = random weights (needs --config-file)",
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", required=True, help="file to write (.onnx / .ts)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), help="fixed image size (the only size the file serves)"
    )
    group.add_argument("--dynamic", action="store_true", help="ONNX: any batch size and image size")
    parser.add_argument(
        "--sample-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="with --dynamic: size of the tracing / check image (default 512 512)",
    )
    parser.add_argument("--input-dtype", choices=("uint8", "float32"), default="uint8")
    parser.add_argument(
        "--no-test-resize",
        action="store_true",
        help="leave the resize to the test size out of the file (it then runs the model at the size it is given)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    parser.add_argument(
        "--check-images",
        nargs="+",
        metavar="PATH",
        default=None,
        help="image files / folders / globs of your data to check on instead of random images",
    )
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.dynamic and args.size is None:
        parser.error("give --size H W (fixed size) or --dynamic (ONNX only)")
    if not args.config_file and not args.weights:
        parser.error("give --weights (a model file written by train_net.py) or --config-file with --weights")
    if args.dynamic and args.format == "torchscript":
        parser.error("--dynamic needs --format onnx: a TorchScript trace serves one size (use --size H W)")
    size = args.size if args.size is not None else (args.sample_size or (512, 512))
    try:
        check_images = read_check_images(args.check_images) if args.check_images and not args.no_check else None
        cfg, model, metadata = build_for_export(args.config_file, args.weights, args.opts)
        with torch.no_grad():
            report = export_model(
                model,
                args.output,
                fmt=args.format,
                input_format=cfg.INPUT.FORMAT,
                size=size,
                dynamic=args.dynamic,
                metadata=metadata,
                input_dtype=args.input_dtype,
                check=not args.no_check,
                test_size=None if args.no_test_resize else test_size_of(cfg),
                check_images=check_images,
            )
    except ExportCheckError as exc:
        logger.error("check failed, nothing written: %s", exc)
        return 1
    except (ValueError, OSError) as exc:
        logger.error("cannot export: %s", exc)
        return 2
    for check in report["checks"]:
        print(
            f"check at {check['size'][0]}x{check['size'][1]}: max |probs - PyTorch| = "
            f"{check['max_abs_prob_diff']:.3g}, labels differ on {100 * check['label_mismatch']:.4f}% of pixels"
        )
    if check_images:
        worst = max(c["max_abs_prob_diff"] for c in report["checks"])
        mismatch = sum(c["label_mismatch"] * c["size"][0] * c["size"][1] for c in report["checks"])
        pixels = sum(c["size"][0] * c["size"][1] for c in report["checks"])
        print(
            f"checked {len(report['checks'])} images: max |probs - PyTorch| = {worst:.3g}, labels differ on "
            f"{100 * mismatch / pixels:.4f}% of all pixels"
        )
    print(json.dumps({"output": report["output"], "format": report["format"], "dynamic": report["dynamic"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
