#!/usr/bin/env python
"""Writes Cityscapes trainId label maps (19 classes, 255 = ignore).

Reads   $DETECTRON2_DATASETS/cityscapes/gtFine/{train,val}/<city>/*_gtFine_labelIds.png
Writes  next to them: *_gtFine_labelTrainIds.png (the usual Cityscapes file name)
Checks  that $DETECTRON2_DATASETS/cityscapes/leftImg8bit/{train,val}/<city>/ exists.

The labelId -> trainId table is the one of the Cityscapes benchmark (19 evaluated classes; every
other id, including the void classes, becomes 255). Resumable: files already written are skipped
(they are written to a temporary name and renamed). ``--overwrite`` rewrites everything.
Exit status: 0 done, 1 some files failed (listed), 2 wrong folder layout.
"""

import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # _prepare_common, also when loaded by file path
from _prepare_common import LayoutError, clean_temporaries, convert_splits, make_parser, run_and_report  # noqa: E402

DIRNAME = "cityscapes"
SPLITS = ("train", "val")
SRC_SUFFIX = "_gtFine_labelIds.png"
DST_SUFFIX = "_gtFine_labelTrainIds.png"
IMAGE_SUFFIX = "_leftImg8bit.png"
IGNORE_LABEL = 255

# Cityscapes labelId -> trainId of the 19 evaluated classes (all other ids are ignored).
LABEL_ID_TO_TRAIN_ID: Dict[int, int] = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}

EXPECTED_TREE = f"""Expected layout:
  $DETECTRON2_DATASETS/            (or --root)
    {DIRNAME}/
      leftImg8bit/
        train/<city>/<city>_<seq>_<frame>{IMAGE_SUFFIX} ...
        val/<city>/...
      gtFine/
        train/<city>/<city>_<seq>_<frame>{SRC_SUFFIX} ...
        val/<city>/...
(leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com unpack to this.)"""


def _lookup_table() -> np.ndarray:
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


_LUT = _lookup_table()


def convert_label(label: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds (H, W) -> uint8 trainIds (H, W), 255 for every non-evaluated id."""
    if label.ndim != 2:
        raise ValueError(f"expected a single-channel label map, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label ids outside 0..255 (min {label.min()}, max {label.max()})")
    return _LUT[label.astype(np.int64)]


def _walk(root: str, suffix: str) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(suffix) and not f.startswith(".")
        )
    return found


def check_layout(root: str, splits: Sequence[str] = SPLITS) -> str:
    """Returns ``<root>/cityscapes``; raises LayoutError with the expected tree."""
    base = os.path.join(root, DIRNAME)
    problems = []
    for split in splits:
        img_dir = os.path.join(base, "leftImg8bit", split)
        gt_dir = os.path.join(base, "gtFine", split)
        if not os.path.isdir(img_dir):
            problems.append(f"missing folder {img_dir}")
        elif not _walk(img_dir, IMAGE_SUFFIX):
            problems.append(f"no <city>/*{IMAGE_SUFFIX} under {img_dir}")
        if not os.path.isdir(gt_dir):
            problems.append(f"missing folder {gt_dir}")
        elif not _walk(gt_dir, SRC_SUFFIX):
            problems.append(f"no <city>/*{SRC_SUFFIX} under {gt_dir}")
    if problems:
        raise LayoutError(f"Not a Cityscapes folder: {'; '.join(problems)}.\n{EXPECTED_TREE}")
    return base


def _split_jobs(base: str, split: str) -> Tuple[List[Tuple[str, str]], str]:
    """(labelIds, labelTrainIds) files of a split (written next to each other) and its gtFine folder."""
    gt_dir = os.path.join(base, "gtFine", split)
    clean_temporaries(gt_dir)
    return [(src, src[: -len(SRC_SUFFIX)] + DST_SUFFIX) for src in _walk(gt_dir, SRC_SUFFIX)], gt_dir


def prepare(
    root: str, workers: int = 1, overwrite: bool = False, splits: Sequence[str] = SPLITS
) -> Tuple[dict, List[Tuple[str, str]]]:
    """Converts every split. Returns ({split: (written, skipped, folder)}, [(file, error), ...])."""
    base = check_layout(root, splits)
    return convert_splits(
        convert_label, splits, lambda split: _split_jobs(base, split), workers, overwrite, "Cityscapes"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser(__doc__, DIRNAME)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to convert")
    args = parser.parse_args(argv)
    return run_and_report(
        lambda: prepare(args.root, workers=args.workers, overwrite=args.overwrite, splits=args.splits),
        f"Cityscapes trainId label maps (*{DST_SUFFIX}, 19 classes, 255 ignore):",
        split_width=6,
    )


if __name__ == "__main__":
    sys.exit(main())
