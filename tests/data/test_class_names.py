"""Prompt class names read from dataset metadata (mta_clip.data.class_names.class_names_from_metadata)."""

import pytest
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

from mta_clip.config import add_mtaclip_config
from mta_clip.data.class_names import class_names_from_metadata


def test_prompt_classes_then_stuff_classes_then_a_clear_error():
    cfg = get_cfg()
    add_mtaclip_config(cfg)
    MetadataCatalog.get("_names_test_prompt").set(
        stuff_classes=["potted plants", "cats"], prompt_classes=["plant", "cat"]
    )
    MetadataCatalog.get("_names_test_stuff").set(stuff_classes=["cat", "sky"])
    MetadataCatalog.get("_names_test_none").set(thing_classes=["x"])
    cfg.DATASETS.TRAIN = ("_names_test_prompt",)
    assert class_names_from_metadata(cfg) == ["plant", "cat"]
    cfg.MODEL.CLIP.TEXT.CLASS_NAMES_KEY = "stuff_classes"
    assert class_names_from_metadata(cfg) == ["potted plants", "cats"]
    cfg.MODEL.CLIP.TEXT.CLASS_NAMES_KEY = "prompt_classes"
    cfg.DATASETS.TRAIN = ("_names_test_stuff",)
    assert class_names_from_metadata(cfg) == ["cat", "sky"]
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ("_names_test_stuff",)
    assert class_names_from_metadata(cfg) == ["cat", "sky"]  # no training set: the test sets
    cfg.DATASETS.TRAIN = ("_names_test_none",)
    with pytest.raises(ValueError, match="_names_test_none.*prompt_classes"):
        class_names_from_metadata(cfg)
    cfg.DATASETS.TRAIN = ("_names_test_prompt", "_names_test_stuff")
    with pytest.raises(ValueError, match="different prompt class names"):
        class_names_from_metadata(cfg)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ()
    with pytest.raises(ValueError, match="no dataset"):
        class_names_from_metadata(cfg)
