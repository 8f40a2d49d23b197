"""tools/analyze_model.py: parameter counts that add up and FLOPs, without any weight file."""

import re

import pytest
import torch
from detectron2.modeling import build_model

from tests.conftest import load_tool, toy_cfg


def test_parameters_and_flops_of_mtaclip_toy_without_weight_files(capsys):
    tool = load_tool("analyze_model")
    cfg_file = "configs/toy/mtaclip_toy.yaml"
    # the config names pretrained/tiny_clip_RN50.pt and a missing MODEL.WEIGHTS: neither is read
    tool.main(
        [
            "--config-file",
            cfg_file,
            "--tasks",
            "parameter",
            "flop",
            "--size",
            "64",
            "--opts",
            "MODEL.WEIGHTS",
            "/nonexistent/model.pth",
            "MODEL.CLIP.WEIGHTS",
            "/nonexistent/clip.pt",
        ]
    )
    out = capsys.readouterr().out
    model = build_model(toy_cfg("mtaclip_toy.yaml", ["MODEL.CLIP.WEIGHTS", ""])).eval()
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert f"{total:,}" in out and f"{frozen:,}" in out
    assert "text_encoder" in out and "sem_seg_head" in out
    text = float(re.search(r"Text encoder, once per model .*: ([\d.]+) GFLOPs", out).group(1))
    per_image = float(re.search(r"Total per image: ([\d.]+) GFLOPs", out).group(1))
    assert text > 0 and per_image > 0
    # Independent check: one pass with an empty text cache costs text + per-image.
    with torch.no_grad():
        model.text_encoder.invalidate_cache()
        both = tool.flop_analysis(model, 64, "cpu").total() / 1e9
    assert abs(both - (text + per_image)) < 0.002 + 0.005 * both, (both, text, per_image)


@pytest.mark.parametrize("config", ["maskformer2_ViTS16_bs16_160k.yaml", "maskformer2_MiTB4_bs16_160k.yaml"])
def test_imagenet_backbones_need_no_weight_file(config, capsys):
    """The ImageNet ViT / MiT weight keys point at files this machine lacks: none is read."""
    tool = load_tool("analyze_model")
    tool.main(
        [
            "--config-file",
            f"configs/ade20k/{config}",
            "--tasks",
            "parameter",
            "--size",
            "64",
            "--opts",
            "MODEL.VIT.WEIGHTS",
            "/nonexistent/vit.pth",
            "MODEL.MIT.WEIGHTS",
            "/nonexistent/mit.pth",
        ]
    )
    assert "backbone" in capsys.readouterr().out
