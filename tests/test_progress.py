"""Progress bar on a terminal, plain log lines otherwise."""

import io

from detectron2.utils.events import EventStorage

from mta_clip.progress import ProgressBarHook, use_progress_bar


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bar_only_on_a_terminal():
    assert use_progress_bar(_Tty())
    assert not use_progress_bar(io.StringIO())


def test_bar_counts_iterations_and_shows_loss():
    stream = _Tty()

    class FakeTrainer:
        start_iter, max_iter = 2, 6

    hook = ProgressBarHook(stream=stream)
    hook.trainer = FakeTrainer()
    with EventStorage(2) as storage:
        hook.trainer.storage = storage
        hook.before_train()
        for it in range(2, 6):
            storage.iter = it
            storage.put_scalar("total_loss", float(10 - it))
            hook.after_step()
        assert hook.bar.n == 6
        hook.after_train()
    text = stream.getvalue()
    assert "6/6" in text and "loss 6.500" in text  # median of the losses 8, 7, 6, 5
