"""tools/analyze_model.py prints parameter counts that add up and a FLOP table."""
import re

from detectron2.modeling import build_model

from tests.conftest import load_tool, toy_cfg


def test_parameters_and_flops_of_mtaclip_toy(capsys, tiny_clip_file):
    tool = load_tool("analyze_model")
    cfg_file = "configs/toy/mtaclip_toy.yaml"
    tool.main(["--config-file", cfg_file, "--tasks", "parameter", "flop", "--size", "64",
               "--opts", "MODEL.CLIP.WEIGHTS", tiny_clip_file])
    out = capsys.readouterr().out
    model = build_model(toy_cfg("mtaclip_toy.yaml", ["MODEL.CLIP.WEIGHTS", tiny_clip_file]))
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert f"{total:,}" in out and f"{frozen:,}" in out
    assert "text_encoder" in out and "sem_seg_head" in out
    assert re.search(r"flop", out, re.IGNORECASE)
