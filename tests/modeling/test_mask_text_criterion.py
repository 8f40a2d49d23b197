import math

import pytest
import torch
from detectron2.config import get_cfg

from mta_clip.config import add_mtaclip_config
from mta_clip.modeling.mask_text_criterion import MaskTextCriterion
from mta_clip.modeling.matcher import HungarianMatcher

NUM_CLASSES = 3


class RecordingMatcher(torch.nn.Module):
    """Returns the next preset index list on every call (one per supervised prediction)."""

    def __init__(self, index_lists):
        super().__init__()
        self.index_lists = index_lists
        self.calls = 0

    def forward(self, outputs, targets):
        out = self.index_lists[self.calls]
        self.calls += 1
        return [(torch.tensor(p, dtype=torch.int64), torch.tensor(t, dtype=torch.int64)) for p, t in out]


def _sim_reference(sim, pos_by_query, weight_by_query, negatives):
    """Weighted mean of per-query -log softmax terms by loops (Eq. 8 MixNeg / Eq. 9 SeparateNeg)."""
    num = den = 0.0
    for (b, i), j in pos_by_query.items():
        s = sim[b, i].double()  # (K, C')
        k_best = max(range(s.shape[0]), key=lambda k: s[k, j].item())
        pos = s[k_best, j].item()
        denom = math.exp(pos)
        for r in range(s.shape[1]):
            for k in range(s.shape[0]):
                if (r, k) == (j, k_best) or (negatives == "separateneg" and r == j):
                    continue
                denom += math.exp(s[k, r].item())
        w = weight_by_query[(b, i)]
        num += w * (math.log(denom) - pos)
        den += w
    return num / den


def _criterion(matcher, none_class=True, negatives="MixNeg", num_aux_outputs=0, losses=("labels", "masks", "sim")):
    return MaskTextCriterion(
        num_classes=NUM_CLASSES,
        matcher=matcher,
        weight_dict={"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0, "loss_sim": 1.0},
        eos_coef=0.1,
        losses=list(losses),
        num_points=8,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        num_aux_outputs=num_aux_outputs,
        sim_negatives=negatives,
        none_class=none_class,
        none_weight=0.1,
        sim_normalization="weighted_mean",
    )


def _batch(seed, none_class=True, n=4, k=2, aux=0):
    g = torch.Generator().manual_seed(seed)
    texts = NUM_CLASSES + 1 if none_class else NUM_CLASSES

    def prediction():
        return {
            "pred_logits": torch.randn(2, n, NUM_CLASSES + 1, generator=g),
            "pred_masks": torch.randn(2, n, 4, 4, generator=g),
            "pred_sim": torch.randn(2, n, k, texts, generator=g) * 2,
        }

    outputs = prediction()
    if aux:
        outputs["aux_outputs"] = [prediction() for _ in range(aux)]
    targets = [
        {"labels": torch.tensor([2, 0]), "masks": torch.rand(2, 16, 16, generator=g) > 0.5},
        {"labels": torch.tensor([1]), "masks": torch.rand(1, 16, 16, generator=g) > 0.5},
    ]
    return outputs, targets


def _queries(indices, targets, n, none_class):
    pos, weight = {}, {}
    for b in range(2):
        for i in range(n):
            if none_class:
                pos[(b, i)], weight[(b, i)] = NUM_CLASSES, 0.1
        for p, t in zip(*indices[b]):
            pos[(b, p)], weight[(b, p)] = int(targets[b]["labels"][t]), 1.0
    return pos, weight


@pytest.mark.parametrize("negatives", ["MixNeg", "SeparateNeg"])
@pytest.mark.parametrize("none_class", [True, False])
def test_loss_sim_uses_each_predictions_matcher_indices(negatives, none_class):
    index_lists = [
        [([0, 2], [1, 0]), ([3], [0])],  # final prediction
        [([1, 3], [0, 1]), ([0], [0])],  # aux_outputs[0]
        [([2, 3], [0, 1]), ([1], [0])],  # aux_outputs[1]
    ]
    outputs, targets = _batch(seed=0, none_class=none_class, aux=2)
    matcher = RecordingMatcher(index_lists)
    crit = _criterion(matcher, none_class=none_class, negatives=negatives, num_aux_outputs=2)
    losses = crit(outputs, targets)
    assert matcher.calls == 3  # one matching per prediction, shared by all its losses
    base = {"loss_ce", "loss_mask", "loss_dice", "loss_sim"}
    assert set(losses) == base | {f"{k}_{i}" for k in base for i in range(2)}
    assert set(crit.weight_dict) == set(losses)
    predictions = [outputs] + outputs["aux_outputs"]
    for key, pred, indices in zip(["loss_sim", "loss_sim_0", "loss_sim_1"], predictions, index_lists):
        pos, weight = _queries(indices, targets, 4, none_class)
        expected = _sim_reference(pred["pred_sim"], pos, weight, negatives.lower())
        assert losses[key].item() == pytest.approx(expected, rel=1e-5), key


def test_none_class_changes_the_loss_and_its_gradient():
    indices = [[([0, 2], [1, 0]), ([3], [0])]]
    outputs, targets = _batch(seed=1, none_class=True)
    sim = outputs["pred_sim"].requires_grad_()
    loss = _criterion(RecordingMatcher(indices), losses=("sim",))(outputs, targets)["loss_sim"]
    loss.backward()
    # the unmatched query (0, 1) is pushed towards the "none" text
    assert sim.grad[0, 1, :, NUM_CLASSES].min() < 0
    # without the none text the unmatched queries take no part
    outputs, targets = _batch(seed=1, none_class=False)
    sim = outputs["pred_sim"].requires_grad_()
    _criterion(RecordingMatcher(indices), none_class=False, losses=("sim",))(outputs, targets)["loss_sim"].backward()
    assert sim.grad[0, 1].abs().sum() == 0 and sim.grad[0, 0].abs().sum() > 0


def test_pred_sim_shape_must_match_none_setting():
    indices = [[([0], [0]), ([1], [0])]]
    outputs, targets = _batch(seed=2, none_class=False)
    with pytest.raises(ValueError, match="NONE_CLASS"):
        _criterion(RecordingMatcher(indices), none_class=True, losses=("sim",))(outputs, targets)
    del outputs["pred_sim"]
    with pytest.raises(KeyError, match="pred_sim"):
        _criterion(RecordingMatcher(indices), none_class=False, losses=("sim",))(outputs, targets)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="NEGATIVES"):
        _criterion(RecordingMatcher([]), negatives="HardNeg")


def test_with_real_matcher_end_to_end():
    torch.manual_seed(3)
    outputs, targets = _batch(seed=3, aux=1)
    for pred in [outputs] + outputs["aux_outputs"]:
        for key in ("pred_logits", "pred_masks", "pred_sim"):
            pred[key].requires_grad_()
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=16)
    crit = _criterion(matcher, num_aux_outputs=1)
    losses = crit(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(crit.weight_dict[k] * v for k, v in losses.items()).backward()
    assert outputs["pred_sim"].grad.abs().sum() > 0 and outputs["aux_outputs"][0]["pred_sim"].grad.abs().sum() > 0


def test_from_config():
    cfg = add_mtaclip_config(get_cfg())
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    mc = cfg.MODEL.MTA_CLIP
    assert (mc.USE_SIM_LOSS, mc.SIM_WEIGHT, mc.NEGATIVES, mc.NONE_CLASS, mc.NONE_WEIGHT, mc.SIM_NORMALIZATION) == (
        True,
        1.0,
        "MixNeg",
        True,
        0.1,
        "weighted_mean",
    )
    crit = MaskTextCriterion(cfg, num_supervised_predictions=10)
    assert crit.losses == ["labels", "masks", "sim"]
    assert crit.num_aux_outputs == 9 and crit.weight_dict["loss_sim_8"] == 1.0 and len(crit.weight_dict) == 40
    assert (crit.sim_negatives, crit.none_class, crit.none_weight, crit.sim_normalization) == (
        "mixneg",
        True,
        0.1,
        "weighted_mean",
    )
    assert list(crit.state_dict()) == ["empty_weight"]

    cfg.MODEL.MTA_CLIP.NEGATIVES = "SeparateNeg"
    cfg.MODEL.MTA_CLIP.SIM_WEIGHT = 0.5
    crit = MaskTextCriterion(cfg, num_supervised_predictions=9)  # the authors' 9 layer outputs
    assert crit.num_aux_outputs == 8 and len(crit.weight_dict) == 36
    assert crit.weight_dict["loss_sim"] == 0.5 and "loss_sim_8" not in crit.weight_dict
    assert crit.sim_negatives == "separateneg"

    cfg.MODEL.MTA_CLIP.USE_SIM_LOSS = False  # "text-enhanced only" ablation
    crit = MaskTextCriterion(cfg, num_supervised_predictions=9)
    assert crit.losses == ["labels", "masks"] and not any(k.startswith("loss_sim") for k in crit.weight_dict)
