"""``BestCheckpointHook``: keeps ``model_best.pth`` of the best evaluation and its metrics.

Register it after Detectron2's ``EvalHook`` (which puts ``sem_seg/mIoU`` etc. into the event
storage). After every step and at the end of training the hook looks at the newest value of the
tracked metric; when it comes from an evaluation not seen yet and beats the best so far, the main
process writes ``<save_dir>/model_best.pth`` (``{"model": state_dict, "iteration": it}``) and
``<save_dir>/model_best_metrics.json`` (metric, value, iteration and every metric of that
evaluation), both through a temporary file and a rename.

At the end of training it logs the summary of the run's evaluations: the last value of the metric
and the best one, each with its iteration (also with ``save=False``, where it writes nothing), so
a run reporting the best of many evaluations can be compared with one reporting the last.

Differences from Detectron2's ``BestCheckpointer``: it does not need the evaluation period, it does
not tag ``model_best`` as the last checkpoint (``--resume`` keeps continuing from the newest
periodic checkpoint), it stores only the model weights, and the best value survives a resume
(read back from ``model_best_metrics.json``); a new run in the same folder starts a best of its own.
"""

import json
import logging
import math
import os
from typing import Dict, Optional

from detectron2.engine import HookBase

from ..atomic_io import save_torch_atomic, write_text_atomic

__all__ = ["BestCheckpointHook", "build_best_checkpoint_hook"]

logger = logging.getLogger(__name__)


class BestCheckpointHook(HookBase):
    """Saves the weights with the best value of one evaluation metric."""

    def __init__(
        self,
        checkpointer,
        metric: str = "sem_seg/mIoU",
        mode: str = "max",
        file_prefix: str = "model_best",
        save: bool = True,
    ):
        """
        Args:
            checkpointer: the trainer's ``DetectionCheckpointer`` (its ``model``, ``save_dir`` and
                ``save_to_disk`` are used).
            metric: event-storage key of the tracked metric.
            mode: "max" (higher is better) or "min".
            file_prefix: files are ``<prefix>.pth`` and ``<prefix>_metrics.json``.
            save: write the files (False: only track and summarize the last and best values).
        """
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.checkpointer = checkpointer
        self.metric = metric
        self.mode = mode
        self.file_prefix = file_prefix
        self.save = save
        self.last_value: Optional[float] = None
        self.last_iter: Optional[int] = None
        self.best_value: Optional[float] = None
        self.best_iter: Optional[int] = None
        self._last_seen_iter: Optional[int] = None

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.checkpointer.save_dir, f"{self.file_prefix}.pth")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.checkpointer.save_dir, f"{self.file_prefix}_metrics.json")

    def _better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def before_train(self):
        """Restores the best value of the run this one continues (``--resume``: it starts after
        iteration 0). A run that starts at iteration 0 is a new one: the best of an earlier run in
        the same folder is replaced at this run's first evaluation, whatever its value."""
        if not self.save:
            return
        try:
            with open(self.metrics_path, "r", encoding="utf-8") as f:
                previous = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            logger.warning("Ignoring unreadable %s: %s", self.metrics_path, e)
            return
        if getattr(self.trainer, "start_iter", 0) == 0:
            logger.info(
                "A new run in %s: %s of an earlier run is replaced at this run's first evaluation",
                self.checkpointer.save_dir,
                self.checkpoint_path,
            )
            return
        if previous.get("metric") == self.metric and previous.get("mode") == self.mode:
            self.best_value = float(previous["value"])
            self.best_iter = int(previous["iteration"])
            logger.info(
                "Best %s so far: %.4f at iteration %d (%s)",
                self.metric,
                self.best_value,
                self.best_iter,
                self.metrics_path,
            )

    def after_step(self):
        self.check()

    def after_train(self):
        self.check()
        logger.info("%s", self.summary())

    def summary(self) -> str:
        """One line: the last and the best value of the metric in this run, with their iterations."""
        if self.last_iter is None:
            return f"Evaluation summary: no {self.metric} was evaluated in this run"
        where = f" ({self.checkpoint_path})" if self.save else ""
        return (
            f"Evaluation summary: {self.metric} last = {self.last_value:.4f} at iteration {self.last_iter}, "
            f"best = {self.best_value:.4f} at iteration {self.best_iter}{where}"
        )

    def check(self) -> bool:
        """Saves (with ``save``) when the newest evaluation improved the metric; returns whether it did."""
        latest = self.trainer.storage.latest()
        if self.metric not in latest:
            return False
        value, iteration = latest[self.metric]
        if iteration == self._last_seen_iter:
            return False
        self._last_seen_iter = iteration
        value = float(value)
        self.last_value, self.last_iter = value, int(iteration)
        if math.isnan(value) or math.isinf(value):
            logger.warning("%s is %s at iteration %d: not a best checkpoint", self.metric, value, iteration)
            return False
        if not self._better(value):
            logger.info(
                "%s = %.4f at iteration %d, best stays %.4f (iteration %d)",
                self.metric,
                value,
                iteration,
                self.best_value,
                self.best_iter,
            )
            return False
        prefix = self.metric.split("/")[0] + "/" if "/" in self.metric else ""
        metrics = {k: float(v) for k, (v, it) in latest.items() if it == iteration and k.startswith(prefix)}
        self.best_value, self.best_iter = value, int(iteration)
        self._save(metrics)
        return True

    def _save(self, metrics: Dict[str, float]) -> None:
        if not self.save or not getattr(self.checkpointer, "save_to_disk", True):
            return  # non-main processes only track the value
        os.makedirs(self.checkpointer.save_dir, exist_ok=True)
        path = self.checkpoint_path
        data = {"model": self.checkpointer.model.state_dict(), "iteration": self.best_iter}
        model_info = getattr(self.checkpointer, "model_info", None)
        if model_info is not None:  # self-describing like the trainer's other files (class names, config)
            from ..model_file import INFO_KEY

            data[INFO_KEY] = model_info
        save_torch_atomic(data, path)
        payload = {
            "metric": self.metric,
            "mode": self.mode,
            "value": self.best_value,
            "iteration": self.best_iter,
            "checkpoint": os.path.basename(path),
            "metrics": {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items())},
        }
        write_text_atomic(self.metrics_path, json.dumps(payload, indent=1, allow_nan=False))
        logger.info("New best %s = %.4f at iteration %d: saved %s", self.metric, self.best_value, self.best_iter, path)


def build_best_checkpoint_hook(cfg, checkpointer) -> Optional[BestCheckpointHook]:
    """The hook configured by TEST.BEST_CHECKPOINT (writing nothing when it is disabled, only
    summarizing), or None when DATASETS.TEST is empty.

    Append it to the trainer's hooks after the ``EvalHook``.
    """
    bc = cfg.TEST.BEST_CHECKPOINT
    if not len(cfg.DATASETS.TEST):
        return None
    return BestCheckpointHook(checkpointer, metric=bc.METRIC, mode=bc.MODE, save=bc.ENABLED)
