"""``PeriodicCheckpointHook``: periodic checkpoints, only the newest N kept, ``model_final`` without a copy.

Replaces Detectron2's ``PeriodicCheckpointer`` hook. Every ``period`` iterations it saves
``model_XXXXXXX.pth`` (with ``iteration``, as Detectron2 does) and then deletes the older periodic
files beyond the newest ``max_keep`` (0 keeps all; files of earlier runs in the same folder count
too, so ``--resume`` keeps the limit). At the last iteration ``model_final.pth`` is written; when
a periodic checkpoint of that same iteration was just saved, ``model_final.pth`` is a hard link
to it (same bytes, no second copy on disk; a plain save where the file system has no hard links).
``last_checkpoint`` names ``model_final.pth``, so ``--resume`` after the end finds the finished
run, and a later run that raises ``SOLVER.MAX_ITER`` resumes from it. Every checkpoint write goes
through a temporary file and ``os.replace``, which makes a new directory entry: a file that is
linked elsewhere is never changed in place. ``model_best.pth`` is written by
``BestCheckpointHook`` and never deleted here.
"""

import logging
import os
import re
from typing import List, Tuple

from detectron2.engine import HookBase

__all__ = ["PeriodicCheckpointHook", "periodic_checkpoints"]

logger = logging.getLogger(__name__)


def periodic_checkpoints(folder: str, prefix: str = "model") -> List[Tuple[int, str]]:
    """[(iteration, path)] of ``<prefix>_XXXXXXX.pth`` files in ``folder``, oldest first."""
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d{{7}})\.pth$")
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        match = pattern.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(found)


def _link_atomic(src: str, dst: str) -> None:
    """``dst`` becomes a hard link to ``src``, replacing any old ``dst`` in one rename."""
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.link-{os.getpid()}")
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.link(src, tmp)
    try:
        os.replace(tmp, dst)
    except OSError:
        os.remove(tmp)
        raise


class PeriodicCheckpointHook(HookBase):
    """Periodic checkpoints with a retention limit; ``model_final`` shares the last one's file."""

    def __init__(self, checkpointer, period: int, max_keep: int = 0, file_prefix: str = "model"):
        """
        Args:
            checkpointer: the trainer's checkpointer (``save``, ``save_dir``, ``tag_last_checkpoint``).
            period: save every ``period`` iterations.
            max_keep: periodic files kept (newest); 0 keeps all.
        """
        if period <= 0:
            raise ValueError(f"SOLVER.CHECKPOINT_PERIOD must be > 0, got {period}")
        if max_keep < 0:
            raise ValueError(f"SOLVER.CHECKPOINT_MAX_KEEP must be >= 0 (0 = keep all), got {max_keep}")
        self.checkpointer = checkpointer
        self.period = int(period)
        self.max_keep = int(max_keep)
        self.file_prefix = file_prefix

    def after_step(self):
        iteration = self.trainer.iter
        periodic = (iteration + 1) % self.period == 0
        if periodic:
            self.checkpointer.save(f"{self.file_prefix}_{iteration:07d}", iteration=iteration)
            self.prune()
        if iteration >= self.trainer.max_iter - 1:
            self.save_final(iteration, periodic)

    def prune(self) -> List[str]:
        """Deletes periodic checkpoints beyond the newest ``max_keep``; returns the deleted paths."""
        if not self.max_keep:
            return []
        deleted = []
        for _, path in periodic_checkpoints(self.checkpointer.save_dir, self.file_prefix)[: -self.max_keep]:
            os.remove(path)
            deleted.append(path)
        if deleted:
            logger.info(
                "Deleted %d old checkpoint(s) (SOLVER.CHECKPOINT_MAX_KEEP=%d): %s",
                len(deleted),
                self.max_keep,
                ", ".join(os.path.basename(p) for p in deleted),
            )
        return deleted

    def save_final(self, iteration: int, periodic_just_saved: bool) -> None:
        save_dir = self.checkpointer.save_dir
        name = f"{self.file_prefix}_final"
        if periodic_just_saved:
            src = os.path.join(save_dir, f"{self.file_prefix}_{iteration:07d}.pth")
            dst = os.path.join(save_dir, f"{name}.pth")
            try:
                _link_atomic(src, dst)
            except OSError as e:
                logger.info("No hard link %s -> %s (%s): saving a copy", dst, src, e)
            else:
                logger.info("%s is %s (hard link, no second copy)", dst, os.path.basename(src))
                self.checkpointer.tag_last_checkpoint(f"{name}.pth")
                return
        self.checkpointer.save(name, iteration=iteration)
