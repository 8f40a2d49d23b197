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
