"""``ProgressBarHook``: a tqdm bar (iterations, ETA, loss) when training runs on a terminal.

On an interactive terminal (stderr is a TTY) the main process shows one bar; log records printed
to the console during training go through ``tqdm.write`` so they do not break the bar. When the
output is a file or a pipe nothing changes: Detectron2's plain metric lines every 20 iterations.
"""

import logging
import sys
from contextlib import ExitStack
from typing import Optional

import tqdm
from detectron2.engine import HookBase
from detectron2.utils import comm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["ProgressBarHook", "use_progress_bar"]

_LOGGERS = ("", "detectron2", "mta_clip", "fvcore")


def use_progress_bar(stream=None) -> bool:
    """True on the main process when ``stream`` (stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return comm.is_main_process() and bool(isatty and isatty())


class ProgressBarHook(HookBase):
    """Advances a tqdm bar every iteration with the smoothed total loss as postfix."""

    def __init__(self, stream=None, loss_key: str = "total_loss", window: int = 20):
        self.stream = stream
        self.loss_key = loss_key
        self.window = window
        self.bar: Optional[tqdm.tqdm] = None
        self._stack: Optional[ExitStack] = None

    def before_train(self):
        self._stack = ExitStack()
        self._stack.enter_context(logging_redirect_tqdm([logging.getLogger(n) for n in _LOGGERS]))
        self.bar = tqdm.tqdm(
            total=self.trainer.max_iter,
            initial=self.trainer.start_iter,
            unit="it",
            desc="train",
            file=self.stream,
            dynamic_ncols=True,
            smoothing=0.05,
        )

    def after_step(self):
        if self.bar is None:
            return
        self.bar.update(1)
        try:
            loss = self.trainer.storage.history(self.loss_key).median(self.window)
        except KeyError:
            return
        self.bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)

    def after_train(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._stack is not None:
            self._stack.close()
            self._stack = None
