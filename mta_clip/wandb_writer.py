"""``WandbWriter``: Detectron2 event writer for Weights & Biases (optional, ``WANDB.ENABLED``).

Logs the scalars of the event storage (losses, learning rate, evaluation metrics) and the images
put into it (evaluation panels). ``wandb`` is not a dependency of this project: enabling the
writer without it installed is a clear error at trainer construction.
"""

import os

from detectron2.utils.events import EventWriter, get_event_storage

__all__ = ["WandbWriter", "import_wandb"]


def import_wandb():
    """The ``wandb`` module, or a RuntimeError saying how to install it or switch it off."""
    try:
        import wandb
    except ImportError as e:
        raise RuntimeError(
            "WANDB.ENABLED is True but the Weights & Biases package is not installed "
            f"({e}). Install it with `.venv/bin/pip install wandb`, or set WANDB.ENABLED False."
        ) from e
    return wandb


class WandbWriter(EventWriter):
    """Writes new scalars and images of the current ``EventStorage`` to a W&B run."""

    def __init__(self, cfg, window_size: int = 20):
        from .config import choice

        w = cfg.WANDB
        mode = choice(("offline", "online", "disabled"), w.MODE, "WANDB.MODE")
        self._wandb = import_wandb()
        name = w.RUN_NAME or os.path.basename(os.path.normpath(cfg.OUTPUT_DIR))
        self._run = self._wandb.init(project=w.PROJECT, name=name, dir=cfg.OUTPUT_DIR, mode=mode, config=_plain(cfg))
        self._window = window_size
        self._last_write = -1
        self._images_done = set()

    def write(self):
        storage = get_event_storage()
        by_iter = {}
        for key, (value, it) in storage.latest_with_smoothing_hint(self._window).items():
            if it > self._last_write:
                by_iter.setdefault(it, {})[key] = value
        for name, image, it in storage._vis_data:  # (C, H, W) uint8 / float images
            if (name, it) not in self._images_done:
                self._images_done.add((name, it))
                by_iter.setdefault(it, {})[name] = self._wandb.Image(image.transpose(1, 2, 0))
        for it in sorted(by_iter):
            self._run.log(by_iter[it], step=it)
        if by_iter:
            self._last_write = max(self._last_write, max(by_iter))

    def close(self):
        self._run.finish()


def _plain(cfg):
    """CfgNode -> nested dicts (W&B's config table)."""
    if hasattr(cfg, "items"):
        return {k: _plain(v) for k, v in cfg.items()}
    return cfg
