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

Both are evaluated with log-sum-exp in fp32. The strategies and the normalizations are functions,
chosen by name through ``NEGATIVES`` / ``NORMALIZATIONS`` where the config is read.
"""

from typing import Callable, Dict, Tuple

import torch

__all__ = [
    "NEGATIVES",
    "NORMALIZATIONS",
    "mask_text_contrastive_loss",
    "mean_over_queries",
    "mixneg_terms",
    "separateneg_terms",
    "weighted_mean",
]


def _positive(sim: torch.Tensor, classes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``sim`` (P, K, C') and the logit of every query's positive ``S[k~, j]`` (P,)."""
    sim = sim.float()
    rows = torch.arange(sim.shape[0], device=sim.device)
    class_sim = sim[rows, :, classes]  # (P, K): every prompt of the positive class
    best_prompt = class_sim.detach().argmax(dim=1)  # k~, no gradient through the choice
    return sim, class_sim[rows, best_prompt]


def mixneg_terms(sim: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Eq. 8 per query: sim (P, K, C') logits, classes (P,) positives in [0, C') -> (P,) fp32
    ``-log(exp S[k~, j] / sum_{r, k} exp S[k, r])``."""
    sim, positive = _positive(sim, classes)
    return torch.logsumexp(sim.flatten(1), dim=1) - positive


def separateneg_terms(sim: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Eq. 9 per query: as :func:`mixneg_terms`, but the negatives are the K*(C'-1) entries of the
    other classes only."""
    sim, positive = _positive(sim, classes)
    is_class = torch.zeros(sim.shape[0], sim.shape[2], dtype=torch.bool, device=sim.device)
    is_class[torch.arange(sim.shape[0], device=sim.device), classes] = True
    negatives = sim.masked_fill(is_class[:, None, :], float("-inf")).flatten(1)  # (P, K*C')
    return torch.logsumexp(torch.cat([positive[:, None], negatives], dim=1), dim=1) - positive


def weighted_mean(
    weighted_sum: torch.Tensor, weights: torch.Tensor, zero: torch.Tensor, batch: int, num_queries: int
) -> torch.Tensor:
    """Authors' implementation: ``sum_i w_i l_i / sum_i w_i`` over all participating queries of the
    batch (``zero`` when that weight sum is 0)."""
    weight_total = weights.sum()
    if not bool(weight_total > 0):
        return zero
    return weighted_sum / weight_total


def mean_over_queries(
    weighted_sum: torch.Tensor, weights: torch.Tensor, zero: torch.Tensor, batch: int, num_queries: int
) -> torch.Tensor:
    """Paper, Eqs. 7-9: ``1/(B N) sum_{b, i} w_i l_i``: each image's sum divided by its number of
    queries N (whether or not they take part), averaged over the B images."""
    return weighted_sum / (batch * num_queries)


# MODEL.MTA_CLIP.NEGATIVES / SIM_NORMALIZATION (lowercase) -> function
NEGATIVES: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mixneg": mixneg_terms,
    "separateneg": separateneg_terms,
}
NORMALIZATIONS: Dict[str, Callable[..., torch.Tensor]] = {
    "weighted_mean": weighted_mean,
    "mean_over_queries": mean_over_queries,
}


def mask_text_contrastive_loss(
    sim: torch.Tensor,
    query_classes: torch.Tensor,
    query_weights: torch.Tensor,
    per_query_terms: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mixneg_terms,
    normalization: Callable[..., torch.Tensor] = weighted_mean,
) -> torch.Tensor:
    """``L_sim`` of a batch.

    Args:
        sim: (B, N, K, C') similarity logits (already divided by tau) of N mask queries to K prompts
            of C' class texts (C' = C, or C + 1 with the "none" text at index C).
        query_classes: (B, N) int64 positive class of each query in [0, C'), or -1 for a query that
            takes no part.
        query_weights: (B, N) weight ``w_i`` of each query's term (ignored where the class is -1).
        per_query_terms: :func:`mixneg_terms` (Eq. 8) or :func:`separateneg_terms` (Eq. 9).
        normalization: :func:`weighted_mean` (authors) or :func:`mean_over_queries` (paper). With
            weight 1 for matched queries and no "none" text the latter is the paper's
            ``-1/N sum_i sum_j y_ij log(...)``; ``w_i`` generalizes ``y_ij`` (so a "none" weight
            still applies).

    Returns:
        Scalar fp32 loss. With no participating query it is a zero that still depends on ``sim``
        (so every parameter behind ``sim`` gets a gradient, as DDP expects).
    """
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
    terms = per_query_terms(sim[participating], query_classes[participating])
    weights = query_weights[participating].to(terms)
    return normalization((weights * terms).sum(), weights, zero, batch, num_queries)
