"""Tiny random CLIP files of the three official layouts and a config builder for the backbone tests."""

import pytest
from detectron2.config import get_cfg

from mta_clip.config import add_mtaclip_config
from tests.conftest import load_tool


@pytest.fixture(scope="package")
def ckpts(tmp_path_factory, tiny_clip_file):
    tool = load_tool("make_tiny_clip")
    d = tmp_path_factory.mktemp("clip_backbones")
    return {
        "RN50": tiny_clip_file,  # RN50 layout, TorchScript, seed 0
        "RN101": tool.make_tiny_clip(str(d / "RN101.pt"), "RN101", "state_dict", seed=1),
        "ViT-B-16": tool.make_tiny_clip(str(d / "ViT-B-16.pt"), "ViT-B-16", "torchscript", seed=2),
    }


def make_cfg(name, weights, image_size=(224, 224), **clip_overrides):
    cfg = get_cfg()
    add_mtaclip_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.CLIP.WEIGHTS = weights
    cfg.MODEL.CLIP.IMAGE_SIZE = list(image_size)
    for key, value in clip_overrides.items():
        node, leaf = cfg.MODEL.CLIP, key.split(".")
        for part in leaf[:-1]:
            node = node[part]
        node[leaf[-1]] = value
    return cfg
