"""SemanticMask2Former (the baseline): built from the published recipes it has exactly Mask2Former's
parameter names/shapes and reproduces outputs of a model-zoo style checkpoint; semantic inference."""

import math
import os

import pytest
import torch
from detectron2.modeling import build_model

from mta_clip.config import setup_cfg
from mta_clip.modeling.baseline import semantic_inference
from tests.conftest import ROOT

CASES = {
    "ade20k": "configs/ade20k/maskformer2_R50_bs16_160k.yaml",
    "cityscapes": "configs/cityscapes/maskformer2_R50_bs16_90k.yaml",
}


def _reference(dataset):
    path = os.path.join(ROOT, "tests", "reference", f"mask2former_semantic_{dataset}_R50_state_dict.tsv")
    ref = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            key, shape = line.rstrip("\n").split("\t")
            ref[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return ref


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_state_dict_names_and_shapes(dataset):
    cfg = setup_cfg(os.path.join(ROOT, CASES[dataset]), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = _reference(dataset)
    missing = sorted(set(ref) - set(ours))
    unexpected = sorted(set(ours) - set(ref))
    assert not missing, f"missing {len(missing)}: {missing[:10]}"
    assert not unexpected, f"unexpected {len(unexpected)}: {unexpected[:10]}"
    wrong = [(k, ours[k], ref[k]) for k in ref if ours[k] != ref[k]]
    assert not wrong, wrong[:10]


def test_model_zoo_pkl_checkpoint_loads_and_reproduces_outputs(tmp_path):
    """A checkpoint in the published Mask2Former file format (pickled numpy arrays under "model")
    loads through Detectron2's checkpointer with no missing or unexpected keys."""
    import pickle

    import torch
    from detectron2.checkpoint import DetectionCheckpointer

    from tests.conftest import toy_cfg

    cfg = toy_cfg("mask2former_toy.yaml")
    torch.manual_seed(1)
    source = build_model(cfg).eval()
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in source.state_dict().items()}, "__author__": "test"}, f)
    torch.manual_seed(2)
    target = build_model(cfg).eval()
    DetectionCheckpointer(target).load(str(path))
    inputs = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}]
    with torch.no_grad():
        torch.testing.assert_close(target(inputs)[0]["sem_seg"], source(inputs)[0]["sem_seg"], rtol=0, atol=0)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_semantic_inference_equals_a_loop_over_queries_classes_and_pixels():
    g = torch.Generator().manual_seed(0)
    mask_cls, mask_pred = torch.randn(4, 3 + 1, generator=g), torch.randn(4, 2, 3, generator=g)
    out = semantic_inference(mask_cls, mask_pred)
    assert out.shape == (3, 2, 3)
    for c in range(3):
        for y in range(2):
            for x in range(3):
                expected = 0.0
                for q in range(4):
                    exps = [math.exp(v) for v in mask_cls[q].tolist()]
                    expected += exps[c] / sum(exps) / (1.0 + math.exp(-mask_pred[q, y, x].item()))
                assert abs(out[c, y, x].item() - expected) < 1e-6
