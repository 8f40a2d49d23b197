"""AtomicCheckpointer (resume always finds a whole file) and check_weights_file."""

import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from mta_clip.checkpointer import AtomicCheckpointer, check_weights_file
from tests.conftest import toy_cfg


def _checkpointer(folder, value: float):
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return AtomicCheckpointer(model, str(folder), optimizer=opt), model


def test_same_file_contents_as_detectron2(tmp_path):
    ours, model = _checkpointer(tmp_path / "a", 1.0)
    ours.save("model_0000009", iteration=9)
    (tmp_path / "b").mkdir()
    plain = DetectionCheckpointer(model, str(tmp_path / "b"), optimizer=ours.checkpointables["optimizer"])
    plain.save("model_0000009", iteration=9)
    a = torch.load(tmp_path / "a" / "model_0000009.pth", weights_only=False)
    b = torch.load(tmp_path / "b" / "model_0000009.pth", weights_only=False)
    assert a.keys() == b.keys() == {"model", "optimizer", "iteration"}
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert (tmp_path / "a" / "last_checkpoint").read_text() == "model_0000009.pth"


def test_interrupted_save_keeps_the_last_checkpoint_resumable(tmp_path, monkeypatch):
    """A resumed run rewrites model_final.pth, which last_checkpoint already names: in place, a kill
    during that write would leave the only resumable file truncated."""
    ckpt, _ = _checkpointer(tmp_path, 1.0)
    ckpt.save("model_final", iteration=4)

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the job is killed while writing

    later, _ = _checkpointer(tmp_path, 2.0)
    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        later.save("model_final", iteration=9)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    resumed, model = _checkpointer(tmp_path, 0.0)
    extra = resumed.resume_or_load("", resume=True)
    assert extra["iteration"] == 4 and torch.all(model.weight == 1.0)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    cfg = toy_cfg("mask2former_toy.yaml", ["MODEL.WEIGHTS", str(tmp_path / "R-50.pkl")])
    with pytest.raises(FileNotFoundError, match="R-50.pkl"):
        check_weights_file(cfg)
    cfg = toy_cfg("mask2former_toy.yaml", ["MODEL.WEIGHTS", "detectron2://ImageNetPretrained/torchvision/R-50.pkl"])
    with pytest.raises(ValueError, match="never downloads"):
        check_weights_file(cfg)
