"""Training keeps exactly the configured checkpoints; model_final shares the last one's file;
training-time evaluation puts prediction panels into the TensorBoard event file."""

import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mta_clip.checkpoint_retention import PeriodicCheckpointHook
from mta_clip.engine import Trainer
from tests.conftest import toy_cfg

OPTS = [
    "SOLVER.IMS_PER_BATCH",
    "2",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.WARMUP_ITERS",
    "0",
    "SOLVER.CHECKPOINT_PERIOD",
    "1",
    "SOLVER.CHECKPOINT_MAX_KEEP",
    "2",
    "TEST.EVAL_PERIOD",
    "100",
    "TEST.VISUALIZE.NUM_TENSORBOARD",
    "2",
    "TEST.VISUALIZE.NUM_PANELS",
    "1",
]


def _train(out, max_iter, resume, *extra):
    cfg = toy_cfg("mask2former_toy.yaml", [*OPTS, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", str(max_iter), *extra])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    start = trainer.start_iter
    trainer.train()
    return start


def _pth(out):
    return sorted(f for f in os.listdir(out) if f.endswith(".pth"))


def test_retention_final_link_resume_and_tensorboard_images(tmp_path):
    out = tmp_path / "run"
    _train(out, 5, resume=False)
    assert _pth(out) == ["model_0000003.pth", "model_0000004.pth", "model_best.pth", "model_final.pth"]
    assert os.path.samefile(out / "model_final.pth", out / "model_0000004.pth")  # no second copy
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["iteration"] == 4
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary files left

    events = [f for f in os.listdir(out) if f.startswith("events.out.tfevents")]
    assert events
    acc = EventAccumulator(str(out), size_guidance={"images": 0}).Reload()
    tags = acc.Tags()["images"]
    assert sorted(tags) == ["toy_sem_seg_val/panel_0", "toy_sem_seg_val/panel_1"]
    image = acc.Images(tags[0])[0]  # final evaluation (after_train): storage step = MAX_ITER
    assert image.width > 4 * 96 and image.step == 5 and image.encoded_image_string[:4] == b"\x89PNG"
    assert os.listdir(out / "inference" / "toy_sem_seg_val" / "panels") == ["000_val_00000.png"]

    # --resume with a longer schedule: continues after model_final, keeps the limit across runs
    assert _train(out, 7, True, "TEST.EVAL_PERIOD", "0") == 5  # (no evaluation this time: faster)
    assert _pth(out) == ["model_0000005.pth", "model_0000006.pth", "model_best.pth", "model_final.pth"]
    assert os.path.samefile(out / "model_final.pth", out / "model_0000006.pth")


def test_final_saved_once_when_not_on_a_period(tmp_path):
    saved = []

    class Ckpt:
        save_dir = str(tmp_path)

        def save(self, name, **kwargs):
            saved.append((name, kwargs["iteration"]))
            (tmp_path / f"{name}.pth").write_bytes(b"x")

        def tag_last_checkpoint(self, name):
            raise AssertionError("save() tags the file itself")

    class FakeTrainer:
        max_iter = 5

    hook = PeriodicCheckpointHook(Ckpt(), period=3, max_keep=1)
    hook.trainer = FakeTrainer()
    for it in range(5):
        hook.trainer.iter = it
        hook.after_step()
    assert saved == [("model_0000002", 2), ("model_final", 4)]
    assert _pth(tmp_path) == ["model_0000002.pth", "model_final.pth"]
    with pytest.raises(ValueError, match="CHECKPOINT_MAX_KEEP"):
        PeriodicCheckpointHook(Ckpt(), period=1, max_keep=-1)
