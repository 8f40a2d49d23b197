"""Machinery shared by the ``prepare_*_sem_seg.py`` scripts.

A script supplies its dataset-specific parts (``convert_label``, the folder layout check, the
list of (source, destination) label files of a split); this module does the rest: atomic PNG
writes, the resumable conversion split by split (progress bar, optional worker pool, failures
collected instead of aborting), the common command-line options and the printed summary with
the exit status (0 done, 1 some files failed, 2 wrong folder layout).
"""

import argparse
import functools
import os
import sys
from multiprocessing import Pool
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

Job = Tuple[str, str]  # (source label map, destination label map)
Failure = Tuple[str, str]  # (source label map, error message)
Summary = Dict[str, Tuple[int, int, str]]  # split -> (written, already present, output folder)


class LayoutError(Exception):
    """The dataset folder does not have the expected layout."""


def write_png_atomic(array: np.ndarray, path: str) -> None:
    """Writes ``array`` as a PNG at ``path`` through a temporary file, so ``path`` is never partial."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}.png")
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def clean_temporaries(root: str) -> None:
    """Removes the temporary files an interrupted run left anywhere under ``root``."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.startswith(".") and ".tmp-" in name:
                os.remove(os.path.join(dirpath, name))


def convert_file(convert_label: Callable[[np.ndarray], np.ndarray], job: Job) -> Tuple[str, Optional[str]]:
    """Converts one label map; returns (source, None) or (source, error message)."""
    src, dst = job
    try:
        with Image.open(src) as im:
            label = np.asarray(im)
        write_png_atomic(convert_label(label), dst)
    except (OSError, ValueError) as e:
        return src, str(e)
    return src, None


def _imap(fn: Callable, jobs: Sequence, workers: int) -> Iterator:
    """``fn`` over ``jobs`` in this process, or unordered in a pool of ``workers`` processes."""
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            yield fn(job)
        return
    with Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(fn, jobs, chunksize=16)


def convert_splits(
    convert_label: Callable[[np.ndarray], np.ndarray],
    splits: Sequence[str],
    split_jobs: Callable[[str], Tuple[List[Job], str]],
    workers: int,
    overwrite: bool,
    dataset: str,
) -> Tuple[Summary, List[Failure]]:
    """Converts, split by split, the jobs whose destination is missing (all with ``overwrite``).

    ``split_jobs(split)`` returns (jobs, output folder) of a split, ready to be written to.
    ``convert_label`` must be a module-level function (worker processes receive it pickled).
    Returns ({split: (written, already present, output folder)}, [(file, error), ...]).
    """
    summary, failures = {}, []
    for split in splits:
        jobs, folder = split_jobs(split)
        todo = [job for job in jobs if overwrite or not os.path.exists(job[1])]
        written = 0
        bar = tqdm(total=len(todo), desc=f"{dataset} {split}", unit="file", disable=not todo)
        for src, err in _imap(functools.partial(convert_file, convert_label), todo, workers):
            if err is None:
                written += 1
            else:
                failures.append((src, err))
            bar.update(1)
        bar.close()
        summary[split] = (written, len(jobs) - len(todo), folder)
    return summary, failures


def make_parser(description: str, dirname: str) -> argparse.ArgumentParser:
    """The options of every script: ``--root``, ``--workers``, ``--overwrite``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help=f"folder holding {dirname}/ (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes")
    parser.add_argument("--overwrite", action="store_true", help="rewrite label maps already present")
    return parser


def run_and_report(prepare: Callable[[], Tuple[Summary, List[Failure]]], title: str, split_width: int) -> int:
    """Runs ``prepare``, prints its summary (failures and layout errors to stderr); returns the exit status."""
    try:
        summary, failures = prepare()
    except LayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(title)
    for split, (written, skipped, folder) in summary.items():
        print(f"  {split:<{split_width}} written {written:>6}, already present {skipped:>6}  -> {folder}")
    if failures:
        print(f"{len(failures)} file(s) failed and were not written:", file=sys.stderr)
        for src, err in sorted(failures):
            print(f"  {src}: {err}", file=sys.stderr)
        return 1
    return 0
