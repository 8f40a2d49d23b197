import math

import pytest
import torch
from detectron2.config import get_cfg

import mta_clip.modeling.criterion as criterion_mod
from mta_clip.config import add_mtaclip_config
from mta_clip.modeling.criterion import SetCriterion
from mta_clip.modeling.point_sampling import get_uncertain_point_coords_with_randomness
from tests.modeling.conftest import bilinear_reference as _bilinear


# ---------------------------------------------------------------- independent references
def _pixel_centers(h, w):
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def _bce(x, t):
    s = 1 / (1 + math.exp(-x))
    return -(t * math.log(s) + (1 - t) * math.log(1 - s))


def _mask_losses(logit_lists, label_lists, num_masks):
    """Direct BCE (mean over points) and dice per mask, summed, divided by num_masks."""
    bce = dice = 0.0
    for xs, ts in zip(logit_lists, label_lists):
        bce += sum(_bce(x, t) for x, t in zip(xs, ts)) / len(xs)
        s = [1 / (1 + math.exp(-x)) for x in xs]
        dice += 1 - (2 * sum(a * b for a, b in zip(s, ts)) + 1) / (sum(s) + sum(ts) + 1)
    return bce / num_masks, dice / num_masks


def _ce(logits, indices, targets, num_classes, eos):
    """Weighted-mean CE by a loop over images and queries."""
    num = den = 0.0
    for b in range(logits.shape[0]):
        matched = {int(p): int(targets[b]["labels"][t]) for p, t in zip(*indices[b])}
        for n in range(logits.shape[1]):
            cls = matched.get(n, num_classes)
            weight = eos if cls == num_classes else 1.0
            row = logits[b, n].double().tolist()
            log_z = math.log(sum(math.exp(v) for v in row))
            num += weight * (log_z - row[cls])
            den += weight
    return num / den


class FixedMatcher(torch.nn.Module):
    """Returns preset indices, one list per call in order (cycling), and counts calls."""

    def __init__(self, *index_lists):
        super().__init__()
        self.index_lists = index_lists
        self.calls = 0

    def forward(self, outputs, targets):
        out = self.index_lists[self.calls % len(self.index_lists)]
        self.calls += 1
        return [(torch.tensor(p, dtype=torch.int64), torch.tensor(t, dtype=torch.int64)) for p, t in out]


def _criterion(
    matcher,
    num_classes=3,
    eos=0.1,
    num_points=12,
    num_aux_outputs=0,
    losses=("labels", "masks"),
    normalizer="num_masks",
):
    return SetCriterion(
        num_classes=num_classes,
        matcher=matcher,
        weight_dict={"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        eos_coef=eos,
        losses=list(losses),
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        num_aux_outputs=num_aux_outputs,
        mask_loss_normalizer=normalizer,
    )


def _batch(seed=0, h=3, w=4, up=4, num_classes=3, n=5):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(2, n, num_classes + 1, generator=g),
        "pred_masks": torch.randn(2, n, h, w, generator=g) * 2,
    }
    small = [(torch.rand(2, h, w, generator=g) > 0.5).float(), (torch.rand(1, h, w, generator=g) > 0.5).float()]
    targets = [
        {"labels": torch.tensor([2, 0]), "masks": torch.kron(small[0], torch.ones(up, up)).bool()},
        {"labels": torch.tensor([1]), "masks": torch.kron(small[1], torch.ones(up, up)).bool()},
    ]
    indices = [([1, 3], [1, 0]), ([4], [0])]
    return outputs, targets, small, indices


# ---------------------------------------------------------------- losses
def test_labels_and_masks_against_direct_formulas(monkeypatch):
    outputs, targets, small, indices = _batch()
    h, w = outputs["pred_masks"].shape[-2:]

    def fixed_points(src, uncertainty_func, num_points, oversample_ratio, importance_sample_ratio):
        assert src.shape[1:] == (1, h, w) and not torch.is_grad_enabled()
        return _pixel_centers(h, w)[None].expand(src.shape[0], -1, -1)

    monkeypatch.setattr(criterion_mod, "get_uncertain_point_coords_with_randomness", fixed_points)
    crit = _criterion(FixedMatcher(indices), num_points=h * w)
    losses = crit(outputs, targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    ce = _ce(outputs["pred_logits"], indices, targets, 3, 0.1)
    logit_lists, label_lists = [], []
    for b, (preds, tgts) in enumerate(indices):
        for p, t in zip(preds, tgts):
            logit_lists.append(outputs["pred_masks"][b, p].flatten().tolist())
            label_lists.append(small[b][t].flatten().tolist())
    bce, dice = _mask_losses(logit_lists, label_lists, num_masks=3)  # 3 masks in the batch, not per image
    assert losses["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert losses["loss_mask"].item() == pytest.approx(bce, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice, rel=1e-5)


def test_masks_with_real_importance_sampling(monkeypatch):
    outputs, targets, _, indices = _batch(seed=1)
    seen = []

    def spy(*args, **kwargs):
        coords = get_uncertain_point_coords_with_randomness(*args, **kwargs)
        seen.append(coords)
        return coords

    monkeypatch.setattr(criterion_mod, "get_uncertain_point_coords_with_randomness", spy)
    crit = _criterion(FixedMatcher(indices), num_points=10, losses=("masks",))
    losses = crit(outputs, targets)
    (coords,) = seen
    assert coords.shape == (3, 10, 2)
    logit_lists, label_lists, r = [], [], 0
    for b, (preds, tgts) in enumerate(indices):
        for p, t in zip(preds, tgts):
            pts = coords[r].tolist()
            logit_lists.append([_bilinear(outputs["pred_masks"][b, p], x, y) for x, y in pts])
            label_lists.append([_bilinear(targets[b]["masks"][t].float(), x, y) for x, y in pts])
            r += 1
    bce, dice = _mask_losses(logit_lists, label_lists, num_masks=3)
    assert losses["loss_mask"].item() == pytest.approx(bce, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice, rel=1e-5)


def test_gradients_reach_logits_and_masks():
    outputs, targets, _, indices = _batch(seed=2)
    outputs = {k: v.requires_grad_() for k, v in outputs.items()}
    losses = _criterion(FixedMatcher(indices))(outputs, targets)
    sum(losses.values()).backward()
    assert outputs["pred_logits"].grad.abs().sum() > 0
    grad = outputs["pred_masks"].grad
    assert grad[0, 3].abs().sum() > 0 and grad[1, 4].abs().sum() > 0
    assert grad[0, 0].abs().sum() == 0 and grad[1, 1].abs().sum() == 0  # unmatched masks get no gradient


def test_empty_target_image_and_empty_batch():
    outputs, targets, _, _ = _batch(seed=3)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 12, 16, dtype=torch.bool)}
    indices = [([], []), ([4], [0])]
    crit = _criterion(FixedMatcher(indices))
    losses = crit(outputs, [empty, targets[1]])
    ce = _ce(outputs["pred_logits"], indices, [empty, targets[1]], 3, 0.1)
    assert losses["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert all(torch.isfinite(v) for v in losses.values())

    outputs = {k: v.requires_grad_() for k, v in outputs.items()}
    crit = _criterion(FixedMatcher([([], []), ([], [])]))
    losses = crit(outputs, [empty, empty])
    assert crit.get_num_masks([empty, empty], torch.device("cpu"), 5) == 1.0
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    assert losses["loss_mask"].requires_grad and losses["loss_dice"].requires_grad
    sum(losses.values()).backward()
    assert outputs["pred_masks"].grad is not None


def test_with_real_matcher_and_padded_targets_of_different_sizes():
    outputs, targets, _, _ = _batch(seed=4)
    from mta_clip.modeling.matcher import HungarianMatcher

    targets[1]["masks"] = targets[1]["masks"][:, :8, :12]  # smaller image: padded bottom/right
    crit = _criterion(HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=16))
    losses = crit(outputs, targets)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    masks = SetCriterion._matched_target_masks(
        targets, [(torch.tensor([0, 1]), torch.tensor([0, 1])), (torch.tensor([0]), torch.tensor([0]))]
    )
    assert masks.shape == (3, 12, 16) and not masks[2, 8:].any() and not masks[2, :, 12:].any()


def test_deep_supervision_keys_and_weight_dict():
    outputs, targets, _, indices = _batch(seed=5)
    outputs["aux_outputs"] = [{k: v * (i + 2) for k, v in outputs.items()} for i in range(2)]
    matcher = FixedMatcher(indices)
    crit = _criterion(matcher, num_aux_outputs=2)
    losses = crit(outputs, targets)
    keys = {"loss_ce", "loss_mask", "loss_dice"}
    expected = keys | {f"{k}_{i}" for k in keys for i in range(2)}
    assert set(losses) == expected and set(crit.weight_dict) == expected
    assert crit.weight_dict["loss_ce_1"] == 2.0 and crit.weight_dict["loss_dice_0"] == 5.0
    assert matcher.calls == 3  # matched once per supervised prediction
    assert losses["loss_ce_0"].item() != pytest.approx(losses["loss_ce"].item())

    with pytest.raises(ValueError, match="aux_outputs"):
        _criterion(FixedMatcher(indices), num_aux_outputs=3)(outputs, targets)
    # without deep supervision aux_outputs are ignored
    no_aux = _criterion(FixedMatcher(indices), num_aux_outputs=0)
    assert set(no_aux(outputs, targets)) == keys and set(no_aux.weight_dict) == keys


def test_from_config_and_checkpoint_buffer():
    cfg = add_mtaclip_config(get_cfg())
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 150
    crit = SetCriterion(cfg, num_supervised_predictions=10)  # as the default decoder makes
    assert crit.num_aux_outputs == 9 and len(crit.weight_dict) == 30
    assert crit.weight_dict["loss_ce_8"] == 2.0 and crit.weight_dict["loss_mask"] == 5.0
    assert crit.losses == ["labels", "masks"]
    assert (crit.num_points, crit.oversample_ratio, crit.importance_sample_ratio) == (12544, 3.0, 0.75)
    state = crit.state_dict()
    assert list(state) == ["empty_weight"] and state["empty_weight"].shape == (151,)
    assert state["empty_weight"][-1].item() == pytest.approx(0.1) and bool((state["empty_weight"][:-1] == 1).all())
    assert SetCriterion(cfg, num_supervised_predictions=9).num_aux_outputs == 8
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = False
    assert set(SetCriterion(cfg, num_supervised_predictions=9).weight_dict) == {"loss_ce", "loss_mask", "loss_dice"}


def test_get_loss_dispatch_and_subclass_extension():
    outputs, targets, _, indices = _batch(seed=6)

    class WithCount(SetCriterion):
        LOSS_METHODS = {**SetCriterion.LOSS_METHODS, "count": "loss_count"}

        def loss_count(self, outputs, targets, indices, num_masks):
            return {"loss_count": torch.tensor(float(sum(len(p) for p, _ in indices)) / num_masks)}

    crit = WithCount(
        num_classes=3,
        matcher=FixedMatcher(indices),
        weight_dict={"loss_count": 1.0},
        eos_coef=0.1,
        losses=["count"],
        num_points=4,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )
    assert crit(outputs, targets) == {"loss_count": torch.tensor(1.0)}
    with pytest.raises(ValueError, match="unknown losses"):
        _criterion(FixedMatcher(indices), losses=("labels", "boxes"))
    with pytest.raises(ValueError, match="unknown loss"):
        _criterion(FixedMatcher(indices)).get_loss("boxes", outputs, targets, indices, 1.0)


def test_wrong_number_of_classes_is_reported():
    outputs, targets, _, indices = _batch(seed=7, num_classes=4)
    with pytest.raises(ValueError, match="num_classes"):
        _criterion(FixedMatcher(indices), num_classes=3)(outputs, targets)


def test_num_masks_is_averaged_over_processes(monkeypatch):
    """Two processes holding 5 and 1 masks both normalize by 3 (all-reduce sum / world size)."""
    reduced = []

    def fake_all_reduce(tensor):
        reduced.append(tensor.clone())
        tensor += 1.0  # the other process holds 1 mask

    monkeypatch.setattr(criterion_mod.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(criterion_mod.dist, "all_reduce", fake_all_reduce)
    monkeypatch.setattr(criterion_mod.comm, "get_world_size", lambda: 2)
    crit = _criterion(FixedMatcher([]))
    targets = [{"labels": torch.zeros(3, dtype=torch.int64)}, {"labels": torch.zeros(2, dtype=torch.int64)}]
    assert crit.get_num_masks(targets, torch.device("cpu"), 5) == 3.0
    assert [t.tolist() for t in reduced] == [[5.0]]
    # clamped to 1 when the processes hold fewer masks than processes
    empty = [{"labels": torch.zeros(0, dtype=torch.int64)}]
    assert crit.get_num_masks(empty, torch.device("cpu"), 5) == 1.0


# ---------------------------------------------------------------- MASK_LOSS_NORMALIZER
def _authors_mask_losses(outputs, targets, indices, num_classes, no_object_weight, points):
    """The MTA-CLIP authors' head (mask2former_head_det.py, written from their arithmetic): query
    labels of all B*N queries (no-object = num_classes for the unmatched), avg_factor =
    class_weight[labels].sum(); mmdet's sigmoid CE summed over all sampled points of the matched
    masks / (avg_factor * P) and naive dice (eps 1) summed over them / avg_factor."""
    b, n = outputs["pred_logits"].shape[:2]
    class_weight = torch.tensor([1.0] * num_classes + [no_object_weight], dtype=torch.float64)
    labels = torch.full((b, n), num_classes, dtype=torch.int64)
    preds, gts = [], []
    for i, (pred_idx, gt_idx) in enumerate(indices):
        for p, t in zip(pred_idx, gt_idx):
            labels[i, p] = targets[i]["labels"][t]
            preds.append(outputs["pred_masks"][i, p].double().flatten()[points])
            gts.append(targets[i]["masks"][t].double().flatten()[points])
    avg_factor = max(float(class_weight[labels.flatten()].sum()), 1.0)
    pred, gt = torch.stack(preds), torch.stack(gts)
    bce = -(gt * torch.log(torch.sigmoid(pred)) + (1 - gt) * torch.log(1 - torch.sigmoid(pred)))
    loss_mask = bce.sum() / (avg_factor * pred.shape[1])
    s = torch.sigmoid(pred)
    dice = 1 - (2 * (s * gt).sum(1) + 1.0) / (s.sum(1) + gt.sum(1) + 1.0)
    return loss_mask.item(), (dice.sum() / avg_factor).item()


def test_class_weight_sum_normalizer_is_the_authors(monkeypatch):
    """Targets of full resolution, points at the pixel centres: the masks are read exactly."""
    outputs, targets, _, indices = _batch(seed=4, h=4, w=4, up=1)
    h, w = 4, 4

    def fixed_points(src, uncertainty_func, num_points, oversample_ratio, importance_sample_ratio):
        return _pixel_centers(h, w)[None].expand(src.shape[0], -1, -1)

    monkeypatch.setattr(criterion_mod, "get_uncertain_point_coords_with_randomness", fixed_points)
    ours = _criterion(FixedMatcher(indices), num_points=h * w, normalizer="class_weight_sum")(outputs, targets)
    bce, dice = _authors_mask_losses(outputs, targets, indices, 3, 0.1, torch.arange(h * w))
    # 3 matched queries of 2 x 5: 3 * 1 + 7 * 0.1 = 3.7, not 3 masks
    assert ours["loss_mask"].item() == pytest.approx(bce, rel=1e-5)
    assert ours["loss_dice"].item() == pytest.approx(dice, rel=1e-5)
    plain = _criterion(FixedMatcher(indices), num_points=h * w)(outputs, targets)
    assert plain["loss_mask"].item() == pytest.approx(bce * 3.7 / 3, rel=1e-5)
    torch.testing.assert_close(ours["loss_ce"], plain["loss_ce"])  # the class loss is not affected


def test_class_weight_sum_counts_at_most_n_matches_and_is_reduced(monkeypatch):
    crit = _criterion(FixedMatcher([]), eos=0.1, normalizer="class_weight_sum")
    targets = [{"labels": torch.zeros(7, dtype=torch.int64)}, {"labels": torch.zeros(1, dtype=torch.int64)}]
    # image 0: 7 targets but only 5 queries -> 5 matched; image 1: 1 matched + 4 * 0.1
    assert crit.get_num_masks(targets, torch.device("cpu"), 5) == pytest.approx(5 + 1 + 0.4)
    monkeypatch.setattr(criterion_mod.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(criterion_mod.dist, "all_reduce", lambda t: t.add_(2.0))  # the other process: 2.0
    monkeypatch.setattr(criterion_mod.comm, "get_world_size", lambda: 2)
    assert crit.get_num_masks(targets, torch.device("cpu"), 5) == pytest.approx((6.4 + 2.0) / 2)


def test_mask_loss_normalizer_from_config_and_bad_value():
    import os

    from mta_clip.config import setup_cfg

    ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def crit_of(path, *opts):
        cfg = setup_cfg(path, list(opts))
        return SetCriterion(cfg, num_supervised_predictions=9, matcher=FixedMatcher([]))

    assert crit_of(ROOT + "/configs/ade20k/maskformer2_R50_bs16_160k.yaml").mask_loss_normalizer == "num_masks"
    assert crit_of(ROOT + "/configs/ade20k/mtaclip_R50_bs16_160k.yaml").mask_loss_normalizer == "class_weight_sum"
    assert crit_of(ROOT + "/configs/ade20k/maskformer2_clip_R50_bs16_160k.yaml").mask_loss_normalizer == "num_masks"
    with pytest.raises(ValueError, match="MASK_LOSS_NORMALIZER.*'matched'"):
        _criterion(FixedMatcher([]), normalizer="matched")
