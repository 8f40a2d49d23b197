"""BestCheckpointHook inside a real Detectron2 training loop with a scripted EvalHook."""

import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import SimpleTrainer, hooks
from torch import nn

from mta_clip.evaluation import BestCheckpointHook


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))

    def forward(self, data):
        return {"loss": ((self.w - data) ** 2).sum()}


def _loader():
    while True:
        yield torch.tensor([1.0, 2.0, 3.0])


def _train(out_dir, values, max_iter=8, period=2, mode="max", start_iter=0):
    """Trains from ``start_iter`` to ``max_iter``; evaluation k returns values[k]. Returns (hook,
    weights per eval)."""
    model = TinyModel()
    trainer = SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.05))
    checkpointer = DetectionCheckpointer(model, str(out_dir))
    snapshots = []

    def evaluate():
        value = values[len(snapshots)]
        snapshots.append((trainer.iter, model.w.detach().clone()))
        return {"sem_seg": {"mIoU": value, "fwIoU": value / 2}}

    best = BestCheckpointHook(checkpointer, metric="sem_seg/mIoU", mode=mode)
    trainer.register_hooks([hooks.EvalHook(period, evaluate), best])
    trainer.train(start_iter, max_iter)
    return best, snapshots


def _saved(out_dir):
    with open(os.path.join(out_dir, "model_best_metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    state = torch.load(os.path.join(out_dir, "model_best.pth"), map_location="cpu")
    return metrics, state


def test_keeps_the_best_evaluation(tmp_path):
    best, snapshots = _train(tmp_path, [10.0, 30.0, 20.0, 25.0])
    assert len(snapshots) == 4  # iterations 1, 3, 5 and the final evaluation
    metrics, state = _saved(tmp_path)
    best_iter, best_w = snapshots[1]
    assert metrics["value"] == 30.0 and metrics["iteration"] == best_iter == state["iteration"]
    assert metrics["metrics"] == {"sem_seg/mIoU": 30.0, "sem_seg/fwIoU": 15.0}
    torch.testing.assert_close(state["model"]["w"], best_w)
    assert not torch.equal(best_w, snapshots[-1][1])  # the weights kept are not the last ones
    assert not os.path.exists(tmp_path / "last_checkpoint")  # resume is not redirected to it
    assert sorted(os.listdir(tmp_path)) == ["model_best.pth", "model_best_metrics.json"]
    # The checkpoint loads into a fresh model with Detectron2's checkpointer.
    fresh = TinyModel()
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_best.pth"))
    torch.testing.assert_close(fresh.w.detach(), best_w)


def test_best_value_survives_resume(tmp_path):
    _train(tmp_path, [10.0, 30.0, 20.0, 25.0])
    before = os.stat(tmp_path / "model_best.pth").st_mtime_ns
    best, _ = _train(tmp_path, [12.0, 29.0, 1.0, 2.0], max_iter=16, start_iter=8)
    assert best.best_value == 30.0
    assert os.stat(tmp_path / "model_best.pth").st_mtime_ns == before
    best, snapshots = _train(tmp_path, [12.0, 31.0, 1.0, 2.0], max_iter=24, start_iter=16)
    metrics, state = _saved(tmp_path)
    assert metrics["value"] == 31.0 and metrics["iteration"] == snapshots[1][0]


def test_a_new_run_in_the_same_folder_has_a_best_of_its_own(tmp_path):
    """Training again from iteration 0 (no --resume) must not keep the earlier run's weights as
    this run's best, even when the earlier run scored higher."""
    _train(tmp_path, [10.0, 30.0, 20.0, 25.0])
    best, snapshots = _train(tmp_path, [5.0, 7.0, 6.0, 1.0])
    metrics, state = _saved(tmp_path)
    assert best.best_value == 7.0 and metrics["value"] == 7.0
    assert metrics["iteration"] == snapshots[1][0] == state["iteration"]
    torch.testing.assert_close(state["model"]["w"], snapshots[1][1])


def test_min_mode_and_nan(tmp_path):
    best, snapshots = _train(tmp_path, [float("nan"), 5.0, 3.0, 4.0], mode="min")
    metrics, state = _saved(tmp_path)
    assert metrics["value"] == 3.0 and metrics["mode"] == "min" and state["iteration"] == snapshots[2][0]
    with pytest.raises(ValueError, match="mode"):
        BestCheckpointHook(None, mode="best")


def test_build_hook_from_config(tmp_path):
    from detectron2.config import get_cfg

    from mta_clip.config import add_mtaclip_config
    from mta_clip.evaluation import build_best_checkpoint_hook

    cfg = add_mtaclip_config(get_cfg())
    checkpointer = DetectionCheckpointer(TinyModel(), str(tmp_path))
    cfg.DATASETS.TEST = ("toy_sem_seg_val",)
    hook = build_best_checkpoint_hook(cfg, checkpointer)
    assert hook.metric == "sem_seg/mIoU" and hook.mode == "max"
    assert hook.save
    cfg.TEST.BEST_CHECKPOINT.ENABLED = False
    assert not build_best_checkpoint_hook(cfg, checkpointer).save  # summarizes, writes nothing
    cfg.DATASETS.TEST = ()
    assert build_best_checkpoint_hook(cfg, checkpointer) is None


def _mmengine_val_iters(max_iters, val_begin, val_interval):
    """mmengine's IterBasedTrainLoop (the authors' runner): after each iteration ``_iter`` (completed
    iterations) validates when ``_iter >= val_begin`` and (``_iter % val_interval == 0`` or
    ``_iter == max_iters``)."""
    return [i for i in range(1, max_iters + 1) if i >= val_begin and (i % val_interval == 0 or i == max_iters)]


@pytest.mark.parametrize("max_iter,start,period", [(30, 12, 3), (30, 0, 4), (31, 25, 5), (160, 100, 1)])
def test_periodic_eval_from_start_is_the_authors_val_loop(tmp_path, max_iter, start, period, caplog):
    from mta_clip.evaluation import PeriodicEvalHook

    model = TinyModel()
    trainer = SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.05))
    evaluated = []
    values = [3.0, 9.0, 1.0] * 100

    def evaluate():
        # completed iterations: trainer.iter + 1 in after_step; after_train sees iter == max_iter
        evaluated.append(min(trainer.iter + 1, max_iter))
        return {"sem_seg": {"mIoU": values[len(evaluated) - 1]}}

    best = BestCheckpointHook(DetectionCheckpointer(model, str(tmp_path)), save=False)
    trainer.register_hooks([PeriodicEvalHook(period, evaluate, eval_start=start), best])
    with caplog.at_level("INFO", logger="mta_clip.evaluation.best_checkpoint"):
        trainer.train(0, max_iter)
    assert evaluated == _mmengine_val_iters(max_iter, start, period)
    assert os.listdir(tmp_path) == []
    # the summary names the last and the best evaluation with Detectron2's storage iterations:
    # completed - 1 for a periodic evaluation (model_<that>.pth holds those weights), max_iter
    # for the final one
    storage_iter = [n - 1 for n in evaluated[:-1]] + [max_iter]
    best_k = max(range(len(evaluated)), key=lambda k: (values[k], -k))
    line = best.summary()
    assert f"last = {values[len(evaluated) - 1]:.4f} at iteration {storage_iter[-1]}" in line
    assert f"best = {values[best_k]:.4f} at iteration {storage_iter[best_k]}" in line
    assert line in caplog.text
    with pytest.raises(ValueError, match="EVAL_START"):
        PeriodicEvalHook(period, evaluate, eval_start=-1)


def test_best_file_carries_the_model_description(tmp_path):
    """model_best.pth is self-describing like the trainer's other files (the checkpointer's model_info)."""
    from mta_clip.checkpointer import AtomicCheckpointer
    from mta_clip.model_file import INFO_KEY

    model = TinyModel()
    trainer = SimpleTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.05))
    info = {"classes": ["a", "b", "c"], "config": "MODEL: {}"}
    checkpointer = AtomicCheckpointer(model, str(tmp_path), model_info=info)
    values = iter([1.0, 2.0])
    best = BestCheckpointHook(checkpointer, metric="sem_seg/mIoU")
    trainer.register_hooks([hooks.EvalHook(2, lambda: {"sem_seg": {"mIoU": next(values)}}), best])
    trainer.train(0, 4)
    state = torch.load(tmp_path / "model_best.pth", map_location="cpu", weights_only=False)
    assert state[INFO_KEY] == info
