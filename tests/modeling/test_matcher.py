import itertools
import math

import pytest
import torch
from detectron2.config import get_cfg

from mta_clip.config import add_mtaclip_config
from mta_clip.modeling.matcher import HungarianMatcher


def _pixel_centers(h, w):
    """(h*w, 2) normalized (x, y) centers of an h x w grid, row-major."""
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def _direct_cost(logits, pred_masks, labels, tgt_small, w_class, w_mask, w_dice):
    """Cost by loops over (prediction, target) from the formulas, in float64 Python math."""
    n_pred, n_tgt = logits.shape[0], labels.shape[0]
    cost = torch.zeros(n_pred, n_tgt, dtype=torch.float64)
    for n in range(n_pred):
        row = logits[n].double().tolist()
        z = sum(math.exp(v) for v in row)
        x = pred_masks[n].double().flatten().tolist()
        s = [1 / (1 + math.exp(-v)) for v in x]
        for m in range(n_tgt):
            t = tgt_small[m].double().flatten().tolist()
            bce = -sum(ti * math.log(si) + (1 - ti) * math.log(1 - si) for si, ti in zip(s, t)) / len(t)
            dice = 1 - (2 * sum(si * ti for si, ti in zip(s, t)) + 1) / (sum(s) + sum(t) + 1)
            p = math.exp(row[int(labels[m])]) / z
            cost[n, m] = w_class * (-p) + w_mask * bce + w_dice * dice
    return cost


def test_cost_matrix_matches_direct_formulas_across_resolutions():
    torch.manual_seed(0)
    n_pred, n_cls, h, w, up = 3, 4, 3, 4, 4
    logits = torch.randn(n_pred, n_cls + 1)
    pred_masks = torch.randn(n_pred, h, w) * 2
    labels = torch.tensor([2, 0])
    small = (torch.rand(2, h, w) > 0.5).float()
    # targets at 4x the prediction resolution, constant over 4x4 blocks: sampling at the prediction's
    # pixel centers reads exactly the block value
    big = torch.kron(small, torch.ones(up, up)).bool()
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=h * w)
    cost = matcher.cost_matrix(logits, pred_masks, labels, big, _pixel_centers(h, w))
    expected = _direct_cost(logits, pred_masks, labels, small, 2.0, 5.0, 5.0)
    assert cost.dtype == torch.float32 and cost.shape == (n_pred, 2)
    torch.testing.assert_close(cost.double(), expected, atol=1e-5, rtol=1e-5)


def _obvious_case():
    h = w = 8
    left = torch.zeros(h, w)
    left[:, :4] = 1
    top_right = torch.zeros(h, w)
    top_right[:4, 4:] = 1
    # targets: 0 = left half (class 1), 1 = top-right quadrant (class 2)
    target = {"labels": torch.tensor([1, 2]), "masks": torch.stack([left, top_right]).bool()}
    n_cls = 3
    logits = torch.full((3, n_cls + 1), -5.0)
    logits[0, 2] = 5.0  # pred 0: class 2, top-right mask
    logits[1, n_cls] = 5.0  # pred 1: no-object, empty mask
    logits[2, 1] = 5.0  # pred 2: class 1, left mask
    masks = torch.stack([top_right, torch.zeros(h, w), left]) * 20 - 10
    # predictions at half resolution (stride 2)
    masks = masks[:, ::2, ::2]
    return {"pred_logits": logits[None], "pred_masks": masks[None]}, target


def test_obvious_assignment_in_permuted_order():
    torch.manual_seed(1)
    outputs, target = _obvious_case()
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=256)
    ((pred_idx, tgt_idx),) = matcher(outputs, [target])
    assert pred_idx.dtype == torch.int64 and tgt_idx.dtype == torch.int64
    assert pred_idx.tolist() == [0, 2]
    assert tgt_idx.tolist() == [1, 0]


def test_class_cost_alone_decides_when_masks_are_equal():
    torch.manual_seed(2)
    outputs, target = _obvious_case()
    outputs["pred_masks"] = torch.zeros_like(outputs["pred_masks"])
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0, num_points=16)
    ((pred_idx, tgt_idx),) = matcher(outputs, [target])
    assert pred_idx.tolist() == [0, 2] and tgt_idx.tolist() == [1, 0]


def test_assignment_is_optimal_for_the_cost():
    torch.manual_seed(3)
    b, n_pred, n_cls = 2, 4, 5
    outputs = {"pred_logits": torch.randn(b, n_pred, n_cls + 1), "pred_masks": torch.randn(b, n_pred, 4, 4)}
    targets = [
        {"labels": torch.tensor([3, 1]), "masks": torch.rand(2, 16, 16) > 0.5},
        {"labels": torch.tensor([0, 4, 2]), "masks": torch.rand(3, 16, 16) > 0.5},
    ]
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=32)
    torch.manual_seed(10)
    indices = matcher(outputs, targets)
    # the matcher draws one point set per image, in batch order
    torch.manual_seed(10)
    for bi, (target, (pred_idx, tgt_idx)) in enumerate(zip(targets, indices)):
        coords = torch.rand(1, 32, 2)[0]
        cost = matcher.cost_matrix(
            outputs["pred_logits"][bi], outputs["pred_masks"][bi], target["labels"], target["masks"], coords
        )
        m = len(target["labels"])
        assert len(pred_idx) == m and sorted(tgt_idx.tolist()) == list(range(m))
        assert pred_idx.tolist() == sorted(pred_idx.tolist())
        got = cost[pred_idx, tgt_idx].sum().item()
        best = min(
            sum(cost[p, t].item() for t, p in enumerate(perm)) for perm in itertools.permutations(range(n_pred), m)
        )
        assert got == pytest.approx(best, abs=1e-5)


def test_empty_targets():
    torch.manual_seed(4)
    outputs, target = _obvious_case()
    outputs = {k: torch.cat([v, v]) for k, v in outputs.items()}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=64)
    indices = matcher(outputs, [empty, target])
    assert indices[0][0].shape == (0,) and indices[0][1].shape == (0,)
    assert indices[0][0].dtype == torch.int64 and indices[0][1].dtype == torch.int64
    assert indices[1][0].tolist() == [0, 2] and indices[1][1].tolist() == [1, 0]


def test_no_grad_and_fp32_under_autocast():
    torch.manual_seed(5)
    outputs, target = _obvious_case()
    outputs = {k: v.bfloat16().requires_grad_() for k, v in outputs.items()}
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = matcher.cost_matrix(
            outputs["pred_logits"][0], outputs["pred_masks"][0], target["labels"], target["masks"], torch.rand(64, 2)
        )
        ((pred_idx, tgt_idx),) = matcher(outputs, [target])
    assert cost.dtype == torch.float32
    assert pred_idx.tolist() == [0, 2] and tgt_idx.tolist() == [1, 0]


def test_from_config():
    cfg = add_mtaclip_config(get_cfg())
    matcher = HungarianMatcher(cfg)
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice) == (2.0, 5.0, 5.0)
    assert matcher.num_points == 12544
    assert list(matcher.state_dict()) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="TRAIN_NUM_POINTS"):
        HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=0)
    with pytest.raises(ValueError, match="all costs are 0"):
        HungarianMatcher(cost_class=0.0, cost_mask=0.0, cost_dice=0.0, num_points=4)
