#!/usr/bin/env python
"""Checks a registered semantic-segmentation dataset before training on it.

    python tools/validate_dataset.py ade20k_150_sem_seg_val
    python tools/validate_dataset.py my_data_train --import my_project.register_my_data
    python tools/validate_dataset.py --dataset-file my_data.yaml       # every dataset the file declares

Reads every image and label map of the dataset and prints: per-class pixel counts (and the number
of images containing the class), label values that are neither a class index nor the ignore
label, label maps whose size differs from the image (or from the dataset dict's height/width),
label maps that are not single-channel, and unreadable files. Exit status 1 when any problem is
found, 0 otherwise, 2 for an unknown dataset.
"""

import argparse
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image
from tabulate import tabulate
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mta_clip  # noqa: E402,F401  (first: registers the built-in datasets, quiets import warnings)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from mta_clip.data.dataset_file import (  # noqa: E402
    add_dataset_arguments,
    import_registration,
    register_dataset_file,
)
from mta_clip.data.datasets import load_dataset_dicts  # noqa: E402
from mta_clip.data.file_checks import exif_orientation, oriented_size  # noqa: E402

MAX_EXAMPLES = 5


def validate(name: str, limit: Optional[int] = None) -> Dict:
    """Reads the dataset; returns counts and problems (see the module docstring)."""
    meta = MetadataCatalog.get(name)
    classes = list(meta.stuff_classes)
    ignore = int(meta.ignore_label)
    num = len(classes)
    records = load_dataset_dicts(name, tolerate_unreadable=True)  # report unreadable images instead of stopping
    if limit:
        records = records[:limit]
    pixels = np.zeros(num, np.int64)
    images_with = np.zeros(num, np.int64)
    ignored = 0
    unknown_pixels: Dict[int, int] = defaultdict(int)
    unknown_files: Dict[int, List[str]] = defaultdict(list)
    problems: List[str] = []
    notes: List[str] = []
    for rec in tqdm(records, desc=name, unit="img"):
        image_path, label_path = rec.get("file_name"), rec.get("sem_seg_file_name")
        if not label_path:
            problems.append(f"{image_path}: dataset dict has no sem_seg_file_name")
            continue
        try:
            with Image.open(image_path) as im:
                im.load()
                image_size = oriented_size(im)  # as the loader sees it
                orientation = exif_orientation(im)
            if orientation != 1:
                notes.append(
                    f"{image_path}: EXIF orientation {orientation}: loaded rotated/flipped as "
                    f"{image_size[0]}x{image_size[1]} (H x W); its label must have that size"
                )
        except (OSError, ValueError, SyntaxError) as e:
            problems.append(f"{image_path}: unreadable image ({e})")
            image_size = None
        try:
            with Image.open(label_path) as im:
                im.load()
                mode = im.mode
                label = np.asarray(im)
        except (OSError, ValueError, SyntaxError) as e:
            problems.append(f"{label_path}: unreadable label map ({e})")
            continue
        if label.ndim != 2:
            problems.append(f"{label_path}: label map has mode {mode} / shape {label.shape}, expected one channel")
            continue
        if image_size is not None and label.shape != image_size:
            problems.append(f"{label_path}: label size {label.shape} != image size {image_size} ({image_path})")
        if "height" in rec and "width" in rec and image_size is not None:
            if (rec["height"], rec["width"]) != image_size:
                problems.append(
                    f"{image_path}: dataset dict says {rec['height']}x{rec['width']}, image is "
                    f"{image_size[0]}x{image_size[1]}"
                )
        values, counts = np.unique(label.astype(np.int64), return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            if 0 <= v < num:
                pixels[v] += c
                images_with[v] += 1
            elif v == ignore:
                ignored += c
            else:
                unknown_pixels[v] += c
                unknown_files[v].append(label_path)
    for v in sorted(unknown_pixels):
        files = unknown_files[v]
        more = f" and {len(files) - MAX_EXAMPLES} more" if len(files) > MAX_EXAMPLES else ""
        problems.append(
            f"unknown label value {v} ({unknown_pixels[v]} pixels; classes are 0..{num - 1}, ignore "
            f"{ignore}) in {len(files)} file(s): {', '.join(files[:MAX_EXAMPLES])}{more}"
        )
    return {
        "name": name,
        "num_images": len(records),
        "classes": classes,
        "pixels": pixels,
        "images_with": images_with,
        "ignored": ignored,
        "unknown": dict(unknown_pixels),
        "problems": problems,
        "notes": notes,
    }


def report(result: Dict) -> str:
    total = int(result["pixels"].sum()) + result["ignored"] + sum(result["unknown"].values())
    rows = []
    for i, name in enumerate(result["classes"]):
        n = int(result["pixels"][i])
        rows.append([i, name, n, 100.0 * n / max(total, 1), int(result["images_with"][i])])
    lines = [
        f"Dataset {result['name']}: {result['num_images']} images, {total} pixels ({result['ignored']} ignored)",
        tabulate(
            rows,
            headers=["id", "class", "pixels", "% of pixels", "images"],
            tablefmt="pipe",
            floatfmt=("g", "g", "g", ".3f", "g"),
        ),
    ]
    absent = [result["classes"][i] for i in range(len(result["classes"])) if result["pixels"][i] == 0]
    if absent:
        lines.append(f"Classes without any pixel ({len(absent)}): {', '.join(absent)}")
    notes = result.get("notes", [])
    if notes:
        lines.append(f"NOTES ({len(notes)}):")
        lines.extend(f"  {n}" for n in notes)
    if result["problems"]:
        lines.append(f"PROBLEMS ({len(result['problems'])}):")
        lines.extend(f"  {p}" for p in result["problems"])
    elif notes:
        lines.append(f"No error, but {len(notes)} file(s) to look at (NOTES above).")
    else:
        lines.append("No problem found.")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="registered dataset name (with --dataset-file: default all of its)")
    add_dataset_arguments(parser)
    parser.add_argument("--limit", type=int, default=None, help="check only the first N images")
    args = parser.parse_args(argv)
    for target in args.imports:
        try:
            import_registration(target)
        except ImportError as e:  # ModuleNotFoundError included: a bad name or path is an argument error
            print(f"error: {e}", file=sys.stderr)
            return 2
    from_files = []
    for path in args.dataset_file:
        try:
            from_files.extend(register_dataset_file(path))
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    names = [args.name] if args.name else from_files
    if not names:
        print("error: give a dataset name and/or --dataset-file", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        status = max(status, _check_one(name, args.limit))
    return status


def _check_one(name: str, limit: Optional[int]) -> int:
    if name not in DatasetCatalog.list():
        known = ", ".join(sorted(n for n in DatasetCatalog.list() if "sem_seg" in n))
        print(f"error: dataset {name!r} is not registered. Semantic datasets: {known}", file=sys.stderr)
        return 2
    meta = MetadataCatalog.get(name)
    if not meta.get("stuff_classes") or meta.get("ignore_label") is None:
        print(f"error: dataset {name!r} has no stuff_classes / ignore_label metadata", file=sys.stderr)
        return 2
    try:
        result = validate(name, limit)
    except (FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report(result))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
