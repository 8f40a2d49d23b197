"""Model files: strict loading with an opt-out, the fine-tuning warning's counts, custom CLIP shapes."""

import logging

import pytest
import torch
from torch import nn

from mta_clip.checkpointer import AtomicCheckpointer
from mta_clip.model_file import config_from_model_file
from mta_clip.modeling.clip.weights import CLIPArch
from mta_clip.predictor import Predictor
from tests.conftest import TOY_BASELINE_CONFIG, save_random_toy_weights


class _Net(nn.Module):
    def __init__(self, out=3):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, out)


def _file(tmp_path, state):
    path = str(tmp_path / "w.pth")
    torch.save({"model": state}, path)
    return path


def test_strict_loading_lists_what_does_not_fit(tmp_path):
    state = _Net(out=5).state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["a.bias"]
    path = _file(tmp_path, state)
    with pytest.raises(ValueError) as info:
        AtomicCheckpointer(_Net(), strict=True).load(path)
    text = str(info.value)
    assert "b.weight: (5, 4) in the file, (3, 4) in the model" in text and "b.bias: (5,) in the file" in text
    assert "missing from the file: a.bias" in text and "not in the model: extra.weight" in text
    assert "TEST.STRICT_WEIGHTS" in text


def test_fine_tuning_warning_counts_skipped_tensors(tmp_path, caplog):
    source = _Net(out=5)
    state = source.state_dict()
    state["extra.weight"] = torch.zeros(2)
    path = _file(tmp_path, state)
    model = _Net()
    with caplog.at_level(logging.WARNING):
        AtomicCheckpointer(model).load(path)
    assert (
        "Loaded 2 of the 5 tensors of the weights file: 3 skipped (2 with another shape, 1 not in the model); "
        "2 tensors of the model keep their initialization" in caplog.text
    )
    assert torch.equal(model.a.weight, source.a.weight)


def test_predictor_is_strict_unless_opted_out(tmp_path):
    weights = save_random_toy_weights(tmp_path, seed=3)
    state = torch.load(weights, weights_only=True)
    state["model"]["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(8, 64)  # 7 classes + no-object
    torch.save(state, weights)
    with pytest.raises(ValueError, match=r"class_embed.weight: \(8, 64\) in the file, \(7, 64\) in the model"):
        Predictor(TOY_BASELINE_CONFIG, weights)
    Predictor(TOY_BASELINE_CONFIG, weights, opts=["TEST.STRICT_WEIGHTS", "False"])


def test_a_file_without_description_needs_a_config(tmp_path):
    weights = save_random_toy_weights(tmp_path, seed=3)
    with pytest.raises(ValueError, match="does not describe its model .* pass the config"):
        config_from_model_file(weights)
    with pytest.raises(FileNotFoundError, match="model file .*nope.pth"):
        Predictor(str(tmp_path / "nope.pth"))


def test_custom_clip_shapes_round_trip_through_the_model_name():
    arch = CLIPArch(
        embed_dim=32,
        vision_layers=(1, 1, 1, 1),
        vision_width=16,
        vision_patch_size=None,
        vision_image_size=64,
        context_length=77,
        vocab_size=49408,
        text_width=64,
        text_heads=1,
        text_layers=2,
    )
    name = arch.model_name()
    assert name.startswith("custom:") and CLIPArch.from_official(name) == arch
    assert CLIPArch.from_official("RN50").model_name() == "RN50"
    with pytest.raises(ValueError, match="not a valid custom CLIP"):
        CLIPArch.from_official('custom:{"embed_dim": 1}')
