"""Table 3 (left) configs: the four ADE20k configs build and predict; a toy-sized MTA-CLIP with each
ImageNet backbone trains a step and evaluates."""

import os

import pytest
import torch
from detectron2.modeling import build_model

from mta_clip.engine import Trainer, setup_cfg
from tests.conftest import ROOT, load_tool, toy_cfg

TABLE3_LEFT = [
    "mtaclip_ViTS16_bs16_160k",
    "maskformer2_ViTS16_bs16_160k",
    "mtaclip_MiTB4_bs16_160k",
    "maskformer2_MiTB4_bs16_160k",
]
TOY_BACKBONES = {
    "ImageNetViT": [
        "MODEL.VIT.EMBED_DIM",
        "64",
        "MODEL.VIT.DEPTH",
        "4",
        "MODEL.VIT.NUM_HEADS",
        "2",
        "MODEL.VIT.OUT_INDICES",
        "[0, 1, 2, 3]",
        "MODEL.VIT.PYRAMID_NORM",
        "BN",
        "MODEL.VIT.IMAGE_SIZE",
        "[96, 96]",
    ],
    "MixTransformer": [
        "MODEL.MIT.EMBED_DIMS",
        "[16, 32, 48, 64]",
        "MODEL.MIT.NUM_HEADS",
        "[1, 2, 2, 4]",
        "MODEL.MIT.DEPTHS",
        "[1, 1, 1, 1]",
    ],
}


@pytest.fixture(scope="module")
def tiny_vit_clip(tmp_path_factory):
    """A tiny random CLIP with ViT-B/16's layout: the configs' text tower (ViT-B-16.pt) at toy size."""
    path = tmp_path_factory.mktemp("clip") / "tiny_ViT-B-16.pt"
    return load_tool("make_tiny_clip").make_tiny_clip(str(path), "ViT-B-16", "state_dict")


@pytest.mark.parametrize("name", TABLE3_LEFT)
def test_table3_left_config_builds_and_predicts(name, tiny_vit_clip):
    cfg = setup_cfg(
        os.path.join(ROOT, "configs", "ade20k", f"{name}.yaml"),
        ["MODEL.DEVICE", "cpu", "MODEL.VIT.WEIGHTS", "", "MODEL.MIT.WEIGHTS", "", "MODEL.CLIP.WEIGHTS", tiny_vit_clip],
    )
    model = build_model(cfg).eval()
    assert type(model.backbone).__name__ == ("ImageNetViT" if "ViTS16" in name else "MixTransformer")
    assert type(model).__name__ == ("MTACLIP" if name.startswith("mtaclip") else "SemanticMask2Former")
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8), "height": 64, "width": 96}])
    assert out[0]["sem_seg"].shape == (150, 64, 96)


@pytest.mark.parametrize("backbone", sorted(TOY_BACKBONES))
def test_toy_training_step_and_evaluation(tmp_path, tiny_clip_file, backbone):
    cfg = toy_cfg(
        "mtaclip_toy.yaml",
        [
            "MODEL.BACKBONE.NAME",
            backbone,
            *TOY_BACKBONES[backbone],
            "MODEL.CLIP.WEIGHTS",
            tiny_clip_file,
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.MAX_ITER",
            "1",
            "SOLVER.WARMUP_ITERS",
            "0",
            "DATALOADER.NUM_WORKERS",
            "0",
            "OUTPUT_DIR",
            str(tmp_path),
        ],
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    trainer.train()
    after = trainer.model.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    results = trainer._last_eval_results
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0
