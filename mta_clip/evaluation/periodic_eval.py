"""``PeriodicEvalHook``: Detectron2's ``EvalHook`` with a first iteration for periodic evaluations.

``TEST.EVAL_START`` = S, ``TEST.EVAL_PERIOD`` = P: evaluates after every completed iteration
``n >= S`` with ``n % P == 0``, and after the last iteration (as ``EvalHook`` does). S = 0 is
Detectron2's behaviour. The MTA-CLIP authors' ADE20k run (mmengine ``val_begin=100000``,
``val_interval=1000``, 160k iterations) evaluates at 100k, 101k, ..., 160k: 61 evaluations.
"""

from detectron2.engine.hooks import EvalHook

__all__ = ["PeriodicEvalHook"]


class PeriodicEvalHook(EvalHook):
    """``EvalHook`` that skips the periodic evaluations before ``eval_start`` completed iterations."""

    def __init__(self, eval_period: int, eval_function, eval_start: int = 0, eval_after_train: bool = True):
        if eval_start < 0:
            raise ValueError(f"TEST.EVAL_START must be >= 0, got {eval_start}")
        if eval_period < 0:
            raise ValueError(f"TEST.EVAL_PERIOD must be >= 0, got {eval_period}")
        super().__init__(eval_period, eval_function, eval_after_train=eval_after_train)
        self._start = eval_start

    def after_step(self):
        if self.trainer.iter + 1 >= self._start:
            super().after_step()
