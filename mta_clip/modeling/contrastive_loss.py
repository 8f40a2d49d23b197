"""Mask-to-text contrastive loss ``L_sim`` (MTA-CLIP, paper Eqs. 7-9).

For a participating query i of image b with class j (its matched ground-truth class, or the "none"
text for unmatched queries when enabled), with similarity logits ``S[k, r] = sim[b, i, k, r]``
(prompt k, class r, already divided by the temperature):

- positive prompt ``k~ = argmax_k S[k, j]`` (chosen without gradient; the loss is differentiated
  with ``k~`` held fixed),
- ``MixNeg`` (Eq. 8): ``l_i = -log( exp S[k~, j] / sum_{r, k} exp S[k, r] )``: the K*C' - 1 other
  entries are negatives,
- ``SeparateNeg`` (Eq. 9, index typos fixed: ``r != j``): ``l_i = -log( exp S[k~, j] /
  (exp S[k~, j] + sum_{r != j} sum_k exp S[k, r]) )``: the K*(C'-1) entries of the other classes are
  negatives; the other prompts of class j take no part.

Both are evaluated with log-sum-exp in fp32.
"""
from typing import Tuple

import torch

__all__ = ["mask_text_contrastive_loss", "per_query_contrastive_terms", "STRATEGIES", "NORMALIZATIONS"]

STRATEGIES = ("mixneg", "separateneg")
NORMALIZATIONS = ("weighted_mean", "mean_over_queries")


def _check_choice(value: str, choices: Tuple[str, ...], what: str) -> str:
    key = value.lower()
    if key not in choices:
        raise ValueError(f"mask_text_contrastive_loss: unknown {what} {value!r}; expected one of {choices}")
    return key


def per_query_contrastive_terms(sim: torch.Tensor, classes: torch.Tensor, strategy: str = "mixneg") -> torch.Tensor:
    """Per-query terms ``l_i`` of ``L_sim``.

    Args:
        sim: (P, K, C') similarity logits of P queries.
        classes: (P,) int64 positive class of each query in [0, C').
        strategy: ``"mixneg"`` or ``"separateneg"`` (case-insensitive, e.g. ``"MixNeg"``).

    Returns:
        (P,) fp32 losses ``-log(softmax)`` of the positive.
    """
    strategy = _check_choice(strategy, STRATEGIES, "strategy")
    sim = sim.float()
    num_queries = sim.shape[0]
    rows = torch.arange(num_queries, device=sim.device)
    class_sim = sim[rows, :, classes]  # (P, K): every prompt of the positive class
    best_prompt = class_sim.detach().argmax(dim=1)  # k~, no gradient through the choice
    positive = class_sim[rows, best_prompt]  # (P,)
    if strategy == "mixneg":
        log_denominator = torch.logsumexp(sim.flatten(1), dim=1)
    else:
        is_class = torch.zeros(sim.shape[0], sim.shape[2], dtype=torch.bool, device=sim.device)
        is_class[rows, classes] = True
        negatives = sim.masked_fill(is_class[:, None, :], float("-inf")).flatten(1)  # (P, K*C')
        log_denominator = torch.logsumexp(torch.cat([positive[:, None], negatives], dim=1), dim=1)
    return log_denominator - positive


def mask_text_contrastive_loss(
    sim: torch.Tensor,
    query_classes: torch.Tensor,
    query_weights: torch.Tensor,
    strategy: str = "mixneg",
    normalization: str = "weighted_mean",
) -> torch.Tensor:
    """``L_sim`` of a batch.

    Args:
        sim: (B, N, K, C') similarity logits (already divided by tau) of N mask queries to K prompts
            of C' class texts (C' = C, or C + 1 with the "none" text at index C).
        query_classes: (B, N) int64 positive class of each query in [0, C'), or -1 for a query that
            takes no part.
        query_weights: (B, N) weight ``w_i`` of each query's term (ignored where the class is -1).
        strategy: ``"mixneg"`` (Eq. 8) or ``"separateneg"`` (Eq. 9); case-insensitive.
        normalization:
            ``"weighted_mean"`` (authors' implementation): ``sum_i w_i l_i / sum_i w_i`` over all
            participating queries of the batch (0 when that weight sum is 0).
            ``"mean_over_queries"`` (paper, Eqs. 7-9): ``1/(B N) sum_{b, i} w_i l_i`` over the
            participating queries, i.e. each image's sum divided by its number of queries N (whether
            or not they take part), averaged over the B images. With weight 1 for matched queries
            and no "none" text this is the paper's ``-1/N sum_i sum_j y_ij log(...)``; ``w_i``
            generalizes ``y_ij`` (so a "none" weight still applies).

    Returns:
        Scalar fp32 loss. With no participating query it is a zero that still depends on ``sim``
        (so every parameter behind ``sim`` gets a gradient, as DDP expects).
    """
    strategy = _check_choice(strategy, STRATEGIES, "strategy")
    normalization = _check_choice(normalization, NORMALIZATIONS, "normalization")
    if sim.dim() != 4:
        raise ValueError(f"mask_text_contrastive_loss: sim must be (B, N, K, C'), got {tuple(sim.shape)}")
    batch, num_queries, _, num_texts = sim.shape
    if query_classes.shape != (batch, num_queries) or query_weights.shape != (batch, num_queries):
        raise ValueError(
            f"mask_text_contrastive_loss: query_classes {tuple(query_classes.shape)} and query_weights "
            f"{tuple(query_weights.shape)} must both be (B, N) = {(batch, num_queries)}"
        )
    if query_classes.numel() and (query_classes.min() < -1 or query_classes.max() >= num_texts):
        raise ValueError(
            f"mask_text_contrastive_loss: query_classes must be in [-1, {num_texts}), got values in "
            f"[{int(query_classes.min())}, {int(query_classes.max())}]"
        )
    zero = sim.float().sum() * 0.0
    participating = query_classes >= 0
    if not bool(participating.any()):
        return zero
    terms = per_query_contrastive_terms(sim[participating], query_classes[participating], strategy)
    weights = query_weights[participating].to(terms)
    weighted_sum = (weights * terms).sum()
    if normalization == "weighted_mean":
        weight_total = weights.sum()
        if not bool(weight_total > 0):
            return zero
        return weighted_sum / weight_total
    return weighted_sum / (batch * num_queries)
