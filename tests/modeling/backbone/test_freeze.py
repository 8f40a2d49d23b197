"""Detectron2's MODEL.BACKBONE.FREEZE_AT on backbones that do not use it (mta_clip.modeling.backbone.freeze)."""

import logging

import pytest
from detectron2.modeling import build_backbone

from tests.modeling.backbone.conftest import make_cfg


@pytest.mark.parametrize("name,hint", [("CLIPResNet", "MODEL.CLIP.RESNET.FREEZE_AT"), ("CLIPViT", "set it to 0")])
def test_detectron2_freeze_at_is_reported_not_silently_ignored(ckpts, caplog, name, hint):
    ckpt = ckpts["RN50" if name == "CLIPResNet" else "ViT-B-16"]
    cfg = make_cfg(name, ckpt)
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    with caplog.at_level(logging.WARNING):
        bb = build_backbone(cfg)
    assert "MODEL.BACKBONE.FREEZE_AT = 5 is not used" in caplog.text and hint in caplog.text
    assert all(p.requires_grad for p in bb.parameters())  # indeed nothing frozen by it
    caplog.clear()
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    with caplog.at_level(logging.WARNING):
        build_backbone(cfg)
    assert "FREEZE_AT" not in caplog.text
