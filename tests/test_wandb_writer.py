"""Weights & Biases writer: a clear error when enabled without the package; what it logs."""

import sys
import types

import numpy as np
import pytest
from detectron2.utils.events import EventStorage

from mta_clip.engine import setup
from mta_clip.wandb_writer import WandbWriter
from tests.conftest import TOY_BASELINE_CONFIG, toy_cfg


def test_enabled_without_wandb_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, installed or not
    args = types.SimpleNamespace(
        config_file=TOY_BASELINE_CONFIG,
        resume=False,
        eval_only=False,
        opts=["WANDB.ENABLED", "True", "OUTPUT_DIR", str(tmp_path)],
    )
    with pytest.raises(RuntimeError, match=r"WANDB.ENABLED is True but .*pip install wandb.*WANDB.ENABLED False"):
        setup(args)


def test_writer_logs_scalars_and_panels(monkeypatch, tmp_path):
    """A recording stand-in for the wandb module (the real one is not a dependency)."""
    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, data, step):
            calls["log"].append((step, dict(data)))

        def finish(self):
            calls["finish"] += 1

    fake = types.SimpleNamespace(
        init=lambda **kw: calls["init"].append(kw) or Run(),
        Image=lambda array: ("image", array.shape),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = toy_cfg("mask2former_toy.yaml", ["WANDB.ENABLED", "True", "OUTPUT_DIR", str(tmp_path / "run7")])
    writer = WandbWriter(cfg)
    assert calls["init"][0]["name"] == "run7" and calls["init"][0]["mode"] == "offline"
    assert calls["init"][0]["config"]["SOLVER"]["CHECKPOINT_MAX_KEEP"] == 0
    with EventStorage(3) as storage:
        storage.put_scalar("total_loss", 1.5)
        storage.put_image("val/panel_0", np.zeros((3, 8, 10), np.uint8))
        writer.write()
        storage.iter = 4
        storage.put_scalar("total_loss", 1.25)
        writer.write()
    writer.close()
    assert calls["log"][0] == (3, {"total_loss": 1.5, "val/panel_0": ("image", (8, 10, 3))})
    # scalars smoothed like Detectron2's writers (median of 1.5 and 1.25); the image logged once
    assert calls["log"][1:] == [(4, {"total_loss": 1.375})]
    assert calls["finish"] == 1
