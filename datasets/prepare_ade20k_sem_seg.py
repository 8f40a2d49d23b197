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
import argparse
import os
import sys
from multiprocessing import Pool
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

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


class LayoutError(Exception):
    """The dataset folder does not have the expected layout."""


def convert_label(label: np.ndarray) -> np.ndarray:
    """Raw ADE20k label (H, W) with 0..150 -> uint8 (H, W): 0 -> 255, v -> v - 1."""
    if label.ndim != 2:
        raise ValueError(f"expected a single-channel label map, got shape {label.shape}")
    bad = np.unique(label[(label < 0) | (label > NUM_CLASSES)])
    if bad.size:
        raise ValueError(f"label values {bad.tolist()} outside 0..{NUM_CLASSES}")
    label = label.astype(np.int64)
    return np.where(label == 0, IGNORE_LABEL, label - 1).astype(np.uint8)


def _write_png_atomic(array: np.ndarray, path: str) -> None:
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}.png")
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _convert_one(job: Tuple[str, str]) -> Tuple[str, Optional[str]]:
    src, dst = job
    try:
        with Image.open(src) as im:
            label = np.asarray(im)
        _write_png_atomic(convert_label(label), dst)
    except (OSError, ValueError) as e:
        return src, str(e)
    return src, None


def _clean_temporaries(folder: str) -> None:
    for name in os.listdir(folder):
        if name.startswith(".") and ".tmp-" in name:
            os.remove(os.path.join(folder, name))


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
        raise LayoutError(
            f"Not an ADE20k folder: {'; '.join(problems)}.\n{EXPECTED_TREE}"
        )
    return base


def prepare(root: str, workers: int = 1, overwrite: bool = False) -> Tuple[dict, List[Tuple[str, str]]]:
    """Converts every split. Returns ({split: (written, skipped)}, [(file, error), ...])."""
    base = check_layout(root)
    summary, failures = {}, []
    for split in SPLITS:
        src_dir = os.path.join(base, "annotations", split)
        dst_dir = os.path.join(base, OUT_DIRNAME, split)
        os.makedirs(dst_dir, exist_ok=True)
        _clean_temporaries(dst_dir)
        names = sorted(f for f in os.listdir(src_dir) if f.endswith(".png") and not f.startswith("."))
        jobs = [(os.path.join(src_dir, n), os.path.join(dst_dir, n)) for n in names]
        todo = [j for j in jobs if overwrite or not os.path.exists(j[1])]
        written = 0
        bar = tqdm(total=len(todo), desc=f"ADE20k {split}", unit="file", disable=not todo)
        results = _run(_convert_one, todo, workers)
        for src, err in results:
            if err is None:
                written += 1
            else:
                failures.append((src, err))
            bar.update(1)
        bar.close()
        summary[split] = (written, len(jobs) - len(todo), dst_dir)
    return summary, failures


def _run(fn, jobs: Sequence, workers: int):
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            yield fn(job)
        return
    with Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(fn, jobs, chunksize=16)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help="folder holding ADEChallengeData2016/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes")
    parser.add_argument("--overwrite", action="store_true", help="rewrite label maps already present")
    args = parser.parse_args(argv)
    try:
        summary, failures = prepare(args.root, workers=args.workers, overwrite=args.overwrite)
    except LayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("ADE20k label maps (0 -> 255 ignore, v -> v-1):")
    for split, (written, skipped, folder) in summary.items():
        print(f"  {split:<10} written {written:>6}, already present {skipped:>6}  -> {folder}")
    if failures:
        print(f"{len(failures)} file(s) failed and were not written:", file=sys.stderr)
        for src, err in sorted(failures):
            print(f"  {src}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
