"""``PerClassSemSegEvaluator``: Detectron2's ``SemSegEvaluator`` plus per-class tables.

Metrics (mIoU, fwIoU, mACC, pACC, per-class IoU / ACC) are Detectron2's. After ``evaluate()`` the
main process also writes ``per_class_<dataset>.csv`` and ``per_class_<dataset>.json`` into
``output_dir`` (temporary file + rename) and logs a readable per-class table, writes the confusion
matrix (``confusion_<dataset>.csv`` counts, ``confusion_<dataset>.png`` heatmap normalized per
ground-truth row) and logs the most confused class pairs.

Panels image | ground truth | prediction | errors of the first ``num_panels`` images (main
process) go to ``output_dir/panels/``; during training (inside an ``EventStorage``) the first
``tensorboard_panels`` are also put into the storage as images, which the TensorBoard writer logs.

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

import cv2
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils import events as d2_events
from detectron2.utils.file_io import PathManager
from PIL import Image
from tabulate import tabulate

from .. import visualization as vis
from ..atomic_io import write_text_atomic
from . import confusion_matrix as cm

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
    """Detectron2's semantic-segmentation metrics, plus per-class CSV / JSON and a log table,
    confusion matrix and prediction panels."""

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        sem_seg_loading_fn=load_sem_seg_labels,
        num_panels: int = 0,
        tensorboard_panels: int = 0,
        confusion_matrix: bool = True,
        most_confused: int = 10,
        tensorboard_max_width: int = 1600,
        **kwargs,
    ):
        """
        Args:
            num_panels: panels written to ``output_dir/panels/`` per evaluation.
            tensorboard_panels: panels put into the event storage (training-time evaluation).
            confusion_matrix: write the confusion matrix CSV / PNG.
            most_confused: class pairs logged.
            tensorboard_max_width: TensorBoard panels wider than this are shrunk.
            sem_seg_loading_fn: label file reader (default: numpy 1.x and 2.x safe).
            Other arguments: Detectron2's ``SemSegEvaluator``.
        """
        super().__init__(
            dataset_name,
            distributed=distributed,
            output_dir=output_dir,
            sem_seg_loading_fn=sem_seg_loading_fn,
            **kwargs,
        )
        if num_panels < 0 or tensorboard_panels < 0:
            raise ValueError(f"num_panels / tensorboard_panels must be >= 0, got {num_panels} / {tensorboard_panels}")
        self._num_panels = int(num_panels)
        self._tb_panels = int(tensorboard_panels)
        self._confusion = bool(confusion_matrix)
        self._most_confused = int(most_confused)
        self._tb_max_width = int(tensorboard_max_width)
        meta = MetadataCatalog.get(dataset_name)
        self._display_names = vis.short_names(self._class_names)
        colors = getattr(meta, "stuff_colors", None)
        self._colors = (
            [tuple(int(v) for v in c) for c in colors]
            if colors and len(colors) == len(self._class_names)
            else vis.readable_palette(len(self._class_names))
        )
        self._panels_done = 0

    def reset(self):
        super().reset()
        self._panels_done = 0

    def process(self, inputs, outputs):
        super().process(inputs, outputs)
        wanted = max(self._num_panels if self._output_dir else 0, self._tb_panels)
        if not comm.is_main_process():
            return
        for inp, out in zip(inputs, outputs):
            if self._panels_done >= wanted:
                return
            self._panel(inp, out, self._panels_done)
            self._panels_done += 1

    def _panel(self, inp, out, index: int) -> None:
        pred = out["sem_seg"].argmax(dim=0).cpu().numpy()
        with Image.open(inp["file_name"]) as f:
            image = np.asarray(f.convert("RGB"))
        gt = self.sem_seg_loading_fn(self.input_file_to_gt_file[inp["file_name"]], dtype=int)
        if image.shape[:2] != pred.shape:
            image = cv2.resize(image, (pred.shape[1], pred.shape[0]), interpolation=cv2.INTER_LINEAR)
        picture = vis.render_panels(
            image, pred, gt if gt.shape == pred.shape else None, self._display_names, self._colors
        )
        stem = os.path.splitext(os.path.basename(inp["file_name"]))[0]
        if self._output_dir and index < self._num_panels:
            vis.save_png(os.path.join(self._output_dir, "panels", f"{index:03d}_{stem}.png"), picture)
        if index < self._tb_panels and d2_events._CURRENT_STORAGE_STACK:
            if picture.shape[1] > self._tb_max_width:
                scale = self._tb_max_width / picture.shape[1]
                picture = cv2.resize(
                    picture, (self._tb_max_width, max(1, round(picture.shape[0] * scale))), interpolation=cv2.INTER_AREA
                )
            d2_events.get_event_storage().put_image(
                f"{self._dataset_name}/panel_{index}", np.ascontiguousarray(picture.transpose(2, 0, 1))
            )

    def evaluate(self):
        results = super().evaluate()
        if not results:  # non-main processes of a distributed evaluation
            return results
        rows = per_class_metrics(self._conf_matrix, list(self._class_names))
        summary = OrderedDict((k, results["sem_seg"][k]) for k in ("mIoU", "fwIoU", "mACC", "pACC"))
        if self._output_dir:
            self._write_tables(rows, summary)
        if self._confusion:
            self._confusion_matrix()
        logger.info("Per-class results on %s:\n%s", self._dataset_name, format_per_class_table(rows))
        logger.info(
            "%s: %s",
            self._dataset_name,
            "  ".join(f"{k} {v:.2f}" for k, v in summary.items()),
        )
        return results

    def _confusion_matrix(self) -> None:
        names = list(self._class_names)
        matrix = cm.from_detectron2(self._conf_matrix, len(names))
        pairs = cm.most_confused_pairs(matrix, vis.short_names(names), self._most_confused)
        if pairs:
            logger.info(
                "Most confused classes on %s (ground truth -> prediction, %% of the ground-truth class):\n%s",
                self._dataset_name,
                "\n".join(f"  {g} -> {p}: {share:.1f}% ({n} px)" for g, p, n, share in pairs),
            )
        if not self._output_dir:
            return
        stem = os.path.join(self._output_dir, f"confusion_{self._dataset_name}")
        write_text_atomic(stem + ".csv", cm.confusion_csv(matrix, names))
        heatmap = cm.confusion_heatmap(
            matrix, vis.short_names(names), title=f"{self._dataset_name}: confusion matrix, rows normalized"
        )
        vis.save_png(stem + ".png", heatmap)
        logger.info("Confusion matrix written to %s.{csv,png}", stem)

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
            "classes": [dict(r, IoU=_json_number(r["IoU"]), Acc=_json_number(r["Acc"])) for r in rows],
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
        table,
        headers=headers,
        tablefmt="pipe",
        disable_numparse=True,
        colalign=("left", "right", "right") * columns,
    )
