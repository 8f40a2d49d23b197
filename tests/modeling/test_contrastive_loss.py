import math

import pytest
import torch

from mta_clip.config import choice
from mta_clip.modeling.contrastive_loss import NEGATIVES, NORMALIZATIONS, mask_text_contrastive_loss


def _loss(sim, classes, weights, strategy="mixneg", normalization="weighted_mean"):
    return mask_text_contrastive_loss(sim, classes, weights, NEGATIVES[strategy], NORMALIZATIONS[normalization])


def _reference(sim, classes, weights, strategy, normalization):
    """L_sim by loops over queries, classes and prompts, from Eqs. 8 (MixNeg) and 9 (SeparateNeg,
    r != j), with differentiable torch scalars in float64. The positive prompt is found by a loop."""
    sim = sim.double()
    batch, num_queries, num_prompts, num_texts = sim.shape
    total = torch.zeros((), dtype=torch.float64)
    weight_total = 0.0
    for b in range(batch):
        for i in range(num_queries):
            j = int(classes[b, i])
            if j < 0:
                continue
            best = 0
            for k in range(num_prompts):
                if sim[b, i, k, j].item() > sim[b, i, best, j].item():
                    best = k
            positive = sim[b, i, best, j]
            denominator = torch.exp(positive)
            for r in range(num_texts):
                for k in range(num_prompts):
                    if r == j and k == best:
                        continue  # the positive itself, already counted
                    if strategy == "separateneg" and r == j:
                        continue  # the other prompts of the positive class take no part
                    denominator = denominator + torch.exp(sim[b, i, k, r])
            term = -torch.log(torch.exp(positive) / denominator)
            w = float(weights[b, i])
            total = total + w * term
            weight_total += w
    if normalization == "weighted_mean":
        return total / weight_total
    return total / (batch * num_queries)


def _inputs(seed, none_class, batch=2, num_queries=5, num_prompts=3, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    num_texts = num_classes + 1 if none_class else num_classes
    sim = torch.randn(batch, num_queries, num_prompts, num_texts, generator=g) * 2
    matched = torch.rand(batch, num_queries, generator=g) < 0.5
    matched[0, 0] = True
    gt = torch.randint(0, num_classes, (batch, num_queries), generator=g)
    if none_class:
        classes = torch.where(matched, gt, torch.full_like(gt, num_classes))
        weights = torch.where(matched, torch.ones(()), torch.full((), 0.1))
    else:
        classes = torch.where(matched, gt, torch.full_like(gt, -1))
        weights = torch.where(matched, torch.ones(()), torch.zeros(()))
    return sim, classes, weights


@pytest.mark.parametrize("strategy", ["mixneg", "separateneg"])
@pytest.mark.parametrize("none_class", [True, False])
@pytest.mark.parametrize("normalization", ["weighted_mean", "mean_over_queries"])
def test_matches_direct_loop_value_and_gradient(strategy, none_class, normalization):
    seed = len(strategy) * 100 + len(normalization) * 2 + int(none_class)
    sim, classes, weights = _inputs(seed=seed, none_class=none_class)
    sim_a = sim.clone().requires_grad_()
    loss = _loss(sim_a, classes, weights, strategy=strategy, normalization=normalization)
    loss.backward()
    sim_b = sim.clone().double().requires_grad_()
    expected = _reference(sim_b, classes, weights, strategy, normalization)
    expected.backward()
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(sim_a.grad.double(), sim_b.grad, atol=1e-6, rtol=1e-4)


def test_config_names_map_to_the_functions_and_strategies_differ():
    sim, classes, weights = _inputs(seed=11, none_class=True)
    mix_terms = choice(NEGATIVES, "MixNeg", "MODEL.MTA_CLIP.NEGATIVES")
    sep_terms = choice(NEGATIVES, "SeparateNeg", "MODEL.MTA_CLIP.NEGATIVES")
    mix = mask_text_contrastive_loss(sim, classes, weights, mix_terms)
    sep = mask_text_contrastive_loss(sim, classes, weights, sep_terms)
    assert mix.item() == pytest.approx(_loss(sim, classes, weights, "mixneg").item())
    assert sep.item() < mix.item()  # fewer negatives in the denominator
    assert mask_text_contrastive_loss(sim, classes, weights).item() == mix.item()  # defaults: MixNeg, weighted


def test_positive_is_argmax_prompt_without_gradient_through_the_choice():
    # one query of class 1, K = 3 prompts, C' = 3 classes
    sim = torch.tensor([[[[0.0, 0.5, 0.2], [0.1, 2.0, -0.3], [0.3, 1.0, 0.4]]]], requires_grad=True)
    classes = torch.tensor([[1]])
    weights = torch.ones(1, 1)
    loss = _loss(sim, classes, weights, "separateneg")
    loss.backward()
    grad = sim.grad[0, 0]
    # the argmax prompt (k = 1) of class 1 is the positive: pushed up; the other prompts of class 1 are
    # no negatives under SeparateNeg and get no gradient (the choice itself is not differentiated)
    assert grad[1, 1] < 0
    assert grad[0, 1] == 0 and grad[2, 1] == 0
    assert bool((grad[:, [0, 2]] > 0).all())
    neg = torch.cat([sim[0, 0, :, 0], sim[0, 0, :, 2]]).detach()
    expected = -(2.0 - torch.logsumexp(torch.cat([torch.tensor([2.0]), neg]), 0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # MixNeg: the other prompts of class 1 are negatives
    sim.grad = None
    _loss(sim, classes, weights, "mixneg").backward()
    assert sim.grad[0, 0, 1, 1] < 0 and sim.grad[0, 0, 0, 1] > 0 and sim.grad[0, 0, 2, 1] > 0


def test_normalizations():
    sim, classes, weights = _inputs(seed=12, none_class=True, batch=2, num_queries=4)
    weighted = _loss(sim, classes, weights, normalization="weighted_mean")
    over_queries = _loss(sim, classes, weights, normalization="mean_over_queries")
    # same weighted sum, different denominators
    assert (weighted * weights.sum()).item() == pytest.approx((over_queries * 8).item(), rel=1e-5)


def test_no_participating_query_gives_connected_zero():
    sim = torch.randn(2, 3, 2, 4, requires_grad=True)
    classes = torch.full((2, 3), -1)
    for normalization in ("weighted_mean", "mean_over_queries"):
        loss = _loss(sim, classes, torch.zeros(2, 3), normalization=normalization)
        assert loss.item() == 0 and loss.grad_fn is not None
        loss.backward()
        assert sim.grad is not None and sim.grad.abs().sum() == 0
        sim.grad = None
    # participating queries of weight 0 under weighted_mean
    loss = mask_text_contrastive_loss(sim, torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3))
    assert loss.item() == 0 and loss.grad_fn is not None


def test_large_logits_are_stable():
    sim, classes, weights = _inputs(seed=13, none_class=False)
    for strategy in ("mixneg", "separateneg"):
        loss = _loss(sim * 1000, classes, weights, strategy)
        assert math.isfinite(loss.item())


def test_bad_inputs_raise():
    sim, classes, weights = _inputs(seed=14, none_class=False)
    with pytest.raises(ValueError, match="NEGATIVES: got 'hardneg'"):
        choice(NEGATIVES, "hardneg", "MODEL.MTA_CLIP.NEGATIVES")
    with pytest.raises(ValueError, match="query_classes must be in"):
        mask_text_contrastive_loss(sim, torch.full_like(classes, sim.shape[-1]), weights)
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        mask_text_contrastive_loss(sim, classes[:, :2], weights)
    with pytest.raises(ValueError, match="sim must be"):
        mask_text_contrastive_loss(sim[0], classes, weights)
