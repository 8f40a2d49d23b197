"""``PerClassSemSegEvaluator``: Detectron2's ``SemSegEvaluator`` plus per-class tables.

Metrics (mIoU, fwIoU, mACC, pACC, per-class IoU / ACC) are Detectron2's. After ``evaluate()`` the
main process also writes ``per_class_<dataset>.csv`` and ``per_class_<dataset>.json`` into
``output_dir`` (temporary file + rename) and logs a readable per-class table.

Label files are read by ``load_sem_seg_labels``: Detectron2's default loader asks numpy for an
array without a copy (``np.array(image, copy=False)``), which numpy 2 refuses ("Unable to avoid
copy"); this one works on numpy 1.x and 2.x.
"""
import csv
import io
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.file_io import PathManager
from PIL import Image
from tabulate import tabulate

from ..atomic_io import write_text_atomic

__all__ = ["PerClassSemSegEvaluator", "format_per_class_table", "load_sem_seg_labels", "per_class_metrics"]

logger = logging.getLogger(__name__)


def per_class_metrics(conf_matrix: np.ndarray, class_names: List[str]) -> List[Dict]:
    """Per-class rows from Detectron2's confusion matrix.

    Args:
        conf_matrix: (C+1, C+1) int counts, ``conf[pred, gt]``; index C collects ignored pixels.
        class_names: C names.
    Returns:
        C dicts: ``id``, ``name``, ``IoU`` and ``Acc`` in percent (NaN where the class has no
        ground-truth pixel, as in Detectron2), ``gt_pixels``, ``pred_pixels``.
    """
    num = len(class_names)
    conf = np.asarray(conf_matrix, dtype=np.float64)[:num, :num]
    tp = np.diag(conf)
    gt = conf.sum(axis=0)
    pred = conf.sum(axis=1)
    union = gt + pred - tp
    rows = []
    for i, name in enumerate(class_names):
        has_gt = gt[i] > 0
        acc = 100.0 * tp[i] / gt[i] if has_gt else float("nan")
        iou = 100.0 * tp[i] / union[i] if has_gt and union[i] > 0 else float("nan")
        rows.append(
            {
                "id": i,
                "name": name,
                "IoU": iou,
                "Acc": acc,
                "gt_pixels": int(gt[i]),
                "pred_pixels": int(pred[i]),
            }
        )
    return rows


def _json_number(x: float) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def load_sem_seg_labels(filename: str, dtype=None) -> np.ndarray:
    """(H, W) label array of a label image, a new writable array (numpy 1.x and 2.x)."""
    with PathManager.open(filename, "rb") as f:
        return np.array(Image.open(f), dtype=dtype)


class PerClassSemSegEvaluator(SemSegEvaluator):
    """Detectron2's semantic-segmentation metrics, plus per-class CSV / JSON and a log table."""

    def __init__(self, dataset_name, distributed=True, output_dir=None, *, sem_seg_loading_fn=load_sem_seg_labels,
                 **kwargs):
        super().__init__(dataset_name, distributed, output_dir, sem_seg_loading_fn=sem_seg_loading_fn, **kwargs)

    def evaluate(self):
        results = super().evaluate()
        if not results:  # non-main processes of a distributed evaluation
            return results
        rows = per_class_metrics(self._conf_matrix, list(self._class_names))
        summary = OrderedDict((k, results["sem_seg"][k]) for k in ("mIoU", "fwIoU", "mACC", "pACC"))
        if self._output_dir:
            self._write_tables(rows, summary)
        logger.info(
            "Per-class results on %s:\n%s", self._dataset_name, format_per_class_table(rows)
        )
        logger.info(
            "%s: %s",
            self._dataset_name,
            "  ".join(f"{k} {v:.2f}" for k, v in summary.items()),
        )
        return results

    def _write_tables(self, rows: List[Dict], summary: Dict) -> None:
        stem = os.path.join(self._output_dir, f"per_class_{self._dataset_name}")
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["id", "name", "IoU", "Acc", "gt_pixels", "pred_pixels"])
        for r in rows:
            writer.writerow(
                [
                    r["id"],
                    r["name"],
                    "" if math.isnan(r["IoU"]) else f"{r['IoU']:.4f}",
                    "" if math.isnan(r["Acc"]) else f"{r['Acc']:.4f}",
                    r["gt_pixels"],
                    r["pred_pixels"],
                ]
            )
        write_text_atomic(stem + ".csv", buf.getvalue())
        payload = {
            "dataset": self._dataset_name,
            "summary": {k: _json_number(v) for k, v in summary.items()},
            "classes": [
                dict(r, IoU=_json_number(r["IoU"]), Acc=_json_number(r["Acc"])) for r in rows
            ],
        }
        write_text_atomic(stem + ".json", json.dumps(payload, indent=1, allow_nan=False))
        logger.info("Per-class metrics written to %s.{csv,json}", stem)


def format_per_class_table(rows: List[Dict], columns: int = 3) -> str:
    """Readable table with ``columns`` (class, IoU, Acc) groups side by side."""

    def fmt(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.2f}"

    cells = [(r["name"], fmt(r["IoU"]), fmt(r["Acc"])) for r in rows]
    columns = max(1, min(columns, len(cells)))
    n_rows = (len(cells) + columns - 1) // columns
    table = []
    for i in range(n_rows):
        line = []
        for j in range(columns):
            k = j * n_rows + i
            line.extend(cells[k] if k < len(cells) else ("", "", ""))
        table.append(line)
    headers = ["class", "IoU", "Acc"] * columns
    return tabulate(
        table, headers=headers, tablefmt="pipe", disable_numparse=True,
        colalign=("left", "right", "right") * columns,
    )
