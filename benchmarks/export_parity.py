"""Benchmark of agreement: an exported ONNX file (ONNX Runtime) against ``Predictor`` (PyTorch) on
a folder of images with ground truth, each image also rescaled so that the file's resize works.

For every scale the images are resized (cv2, bilinear; labels nearest) and segmented by both; the
table gives the share of pixels where the two label maps agree, the largest probability difference,
and the mIoU of each against the ground truth (ignore label excluded). The file must carry the test
resize (the default of ``tools/export_model.py``), since the images go in at their own size.

Usage::

    .venv/bin/python tools/export_model.py --weights output/toy_mtaclip/model_final.pth \\
        --format onnx --dynamic --sample-size 96 128 --output toy.onnx
    .venv/bin/python benchmarks/export_parity.py --onnx toy.onnx \\
        --weights output/toy_mtaclip/model_final.pth \\
        --images datasets/toy_sem_seg/images/val --labels datasets/toy_sem_seg/labels/val
"""

import argparse
import glob
import os
import sys
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int) -> np.ndarray:
    keep = gt != ignore
    return np.bincount(num_classes * gt[keep].astype(np.int64) + pred[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def miou(conf: np.ndarray) -> float:
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return float(100 * (inter[present] / union[present]).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True, help="file written by tools/export_model.py (with the test resize)")
    parser.add_argument("--weights", required=True, help="the model file it was exported from")
    parser.add_argument("--config-file", default=None, help="needed when the model file carries no config")
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--labels", required=True, help="folder of label PNGs with the images' file names")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.6, 1.7])
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    import cv2
    from tabulate import tabulate

    from mta_clip.export import ExportedModel
    from mta_clip.predictor import Predictor

    exported = ExportedModel(args.onnx)
    if not exported.metadata.get("test_resize"):
        raise SystemExit(f"{args.onnx} has no test resize inside: export it without --no-test-resize")
    if args.config_file:
        predictor = Predictor(args.config_file, weights=args.weights, device="cpu")
    else:
        predictor = Predictor(args.weights, device="cpu")
    num_classes = len(exported.metadata["class_names"])
    ignore = int(exported.metadata.get("ignore_label", 255))
    paths = sorted(glob.glob(os.path.join(args.images, "*")))
    if not paths:
        raise SystemExit(f"no images in {args.images}")
    rows = []
    for scale in args.scales:
        agree, pixels, worst = 0, 0, 0.0
        conf_onnx = np.zeros((num_classes, num_classes), np.int64)
        conf_torch = np.zeros_like(conf_onnx)
        for path in paths:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            gt = cv2.imread(os.path.join(args.labels, os.path.splitext(os.path.basename(path))[0] + ".png"), -1)
            if image is None or gt is None:
                raise SystemExit(f"cannot read {path} or its label")
            if scale != 1.0:
                size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
                image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
                gt = cv2.resize(gt, size, interpolation=cv2.INTER_NEAREST)
            probs, labels = exported(image[None])
            ref = predictor(image)
            agree += int((labels[0] == ref["labels"]).sum())
            pixels += labels[0].size
            worst = max(worst, float(np.abs(probs[0] - ref["probs"]).max()))
            conf_onnx += confusion(labels[0], gt, num_classes, ignore)
            conf_torch += confusion(ref["labels"], gt, num_classes, ignore)
        h, w = image.shape[:2]
        rows.append([scale, f"{h}x{w}", len(paths), 100 * agree / pixels, worst, miou(conf_torch), miou(conf_onnx)])
    print(f"{args.onnx} (ONNX Runtime) vs Predictor (PyTorch), images of {args.images}")
    headers = ["scale", "size (last)", "images", "labels equal (%)", "max |probs diff|", "mIoU Predictor", "mIoU ONNX"]
    print(tabulate(rows, headers=headers, floatfmt=("g", "", "d", ".4f", ".2e", ".2f", ".2f")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
