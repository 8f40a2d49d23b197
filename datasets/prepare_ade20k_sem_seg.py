#!/usr/bin/env python
"""Writes ADE20k-150 label maps in Detectron2's sem_seg format.

Reads   $DETECTRON2_DATASETS/ADEChallengeData2016/annotations/{training,validation}/*.png
        (0 = other, 1..150 = classes)
Writes  $DETECTRON2_DATASETS/ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png
        (0 -> 255 = ignore, v -> v - 1, so classes are 0..149)

Resumable: a label map already written is skipped (files are written to a temporary name and
renamed, so an existing file is complete). ``--overwrite`` rewrites everything.
Exit status: 0 done, 1 some files failed (listed), 2 wrong folder layout.
"""

import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # _prepare_common, also when loaded by file path
from _prepare_common import LayoutError, clean_temporaries, convert_splits, make_parser, run_and_report  # noqa: E402

DIRNAME = "ADEChallengeData2016"
SPLITS = ("training", "validation")
OUT_DIRNAME = "annotations_detectron2"
NUM_CLASSES = 150
IGNORE_LABEL = 255

EXPECTED_TREE = f"""Expected layout:
  $DETECTRON2_DATASETS/            (or --root)
    {DIRNAME}/
      images/
        training/ADE_train_00000001.jpg ...
        validation/ADE_val_00000001.jpg ...
      annotations/
        training/ADE_train_00000001.png ...     (0 = other, 1..150 = classes)
        validation/ADE_val_00000001.png ...
(ADEChallengeData2016.zip from the MIT Scene Parsing benchmark unpacks to this.)"""


def convert_label(label: np.ndarray) -> np.ndarray:
    """Raw ADE20k label (H, W) with 0..150 -> uint8 (H, W): 0 -> 255, v -> v - 1."""
    if label.ndim != 2:
        raise ValueError(f"expected a single-channel label map, got shape {label.shape}")
    bad = np.unique(label[(label < 0) | (label > NUM_CLASSES)])
    if bad.size:
        raise ValueError(f"label values {bad.tolist()} outside 0..{NUM_CLASSES}")
    label = label.astype(np.int64)
    return np.where(label == 0, IGNORE_LABEL, label - 1).astype(np.uint8)


def check_layout(root: str) -> str:
    """Returns ``<root>/ADEChallengeData2016``; raises LayoutError with the expected tree."""
    base = os.path.join(root, DIRNAME)
    problems = []
    for sub, ext in (("images", ".jpg"), ("annotations", ".png")):
        for split in SPLITS:
            folder = os.path.join(base, sub, split)
            if not os.path.isdir(folder):
                problems.append(f"missing folder {folder}")
            elif not any(f.endswith(ext) for f in os.listdir(folder)):
                problems.append(f"no *{ext} file in {folder}")
    if problems:
        raise LayoutError(f"Not an ADE20k folder: {'; '.join(problems)}.\n{EXPECTED_TREE}")
    return base


def _split_jobs(base: str, split: str) -> Tuple[List[Tuple[str, str]], str]:
    """(source, destination) label maps of a split and its (created, cleaned) output folder."""
    src_dir = os.path.join(base, "annotations", split)
    dst_dir = os.path.join(base, OUT_DIRNAME, split)
    os.makedirs(dst_dir, exist_ok=True)
    clean_temporaries(dst_dir)
    names = sorted(f for f in os.listdir(src_dir) if f.endswith(".png") and not f.startswith("."))
    return [(os.path.join(src_dir, n), os.path.join(dst_dir, n)) for n in names], dst_dir


def prepare(root: str, workers: int = 1, overwrite: bool = False) -> Tuple[dict, List[Tuple[str, str]]]:
    """Converts every split. Returns ({split: (written, skipped, folder)}, [(file, error), ...])."""
    base = check_layout(root)
    return convert_splits(convert_label, SPLITS, lambda split: _split_jobs(base, split), workers, overwrite, "ADE20k")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser(__doc__, DIRNAME).parse_args(argv)
    return run_and_report(
        lambda: prepare(args.root, workers=args.workers, overwrite=args.overwrite),
        "ADE20k label maps (0 -> 255 ignore, v -> v-1):",
        split_width=10,
    )


if __name__ == "__main__":
    sys.exit(main())
