"""The baseline built from the published recipes has exactly Mask2Former's parameter names/shapes."""
import os

import pytest
from detectron2.modeling import build_model

from mta_clip.engine import setup_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
