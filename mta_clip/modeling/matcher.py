"""Hungarian matching of predicted masks to ground-truth masks (Mask2Former's matcher).

Per image the cost of assigning prediction ``n`` to target ``m`` is

    cost_mask * BCE(n, m) + cost_class * (-p_n[c_m]) + cost_dice * Dice(n, m)

where ``p_n`` is the softmax over the C+1 class logits of prediction ``n``, and BCE (sigmoid binary
cross-entropy averaged over points) and Dice (``1 - (2 sum s t + 1) / (sum s + sum t + 1)`` with
``s = sigmoid(logit)``) are evaluated on one set of uniform random points shared by all predictions
and targets of the image. The assignment minimizes the total cost (``scipy``'s
``linear_sum_assignment``).
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from scipy.optimize import linear_sum_assignment
from torch import nn

from .point_sampling import point_sample

__all__ = ["HungarianMatcher", "pairwise_sigmoid_bce", "pairwise_dice"]


def pairwise_sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid BCE of every prediction against every target, averaged over points.

    Args:
        logits: (N, P) predicted mask logits at P points.
        targets: (M, P) target values in [0, 1] at the same points.

    Returns:
        (N, M) costs.
    """
    num_points = logits.shape[1]
    loss_if_fg = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    loss_if_bg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    cost = torch.einsum("np,mp->nm", loss_if_fg, targets) + torch.einsum("np,mp->nm", loss_if_bg, 1 - targets)
    return cost / num_points


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss ``1 - (2 sum s t + 1) / (sum s + sum t + 1)`` of every prediction against every target.

    Args:
        logits: (N, P) predicted mask logits at P points (``s = sigmoid(logits)``).
        targets: (M, P) target values in [0, 1] at the same points.

    Returns:
        (N, M) costs.
    """
    probs = logits.sigmoid()
    numerator = 2 * torch.einsum("np,mp->nm", probs, targets)
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of the N predictions of each image to its M targets (M <= N).

    No gradient flows through matching. Costs are computed in fp32 with autocast disabled.
    """

    @configurable
    def __init__(self, *, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0, num_points: int = 0):
        """
        Args:
            cost_class: weight of ``-p(target class)``.
            cost_mask: weight of the point-averaged sigmoid BCE.
            cost_dice: weight of the dice loss.
            num_points: uniform random points per image at which masks are compared.
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0 (MODEL.MASK_FORMER.CLASS/MASK/DICE_WEIGHT)")
        if num_points <= 0:
            raise ValueError(
                f"HungarianMatcher: num_points (MODEL.MASK_FORMER.TRAIN_NUM_POINTS) must be > 0, got {num_points}"
            )
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @classmethod
    def from_config(cls, cfg) -> dict:
        mf = cfg.MODEL.MASK_FORMER
        return {
            "cost_class": mf.CLASS_WEIGHT,
            "cost_mask": mf.MASK_WEIGHT,
            "cost_dice": mf.DICE_WEIGHT,
            "num_points": mf.TRAIN_NUM_POINTS,
        }

    def cost_matrix(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        labels: torch.Tensor,
        target_masks: torch.Tensor,
        point_coords: torch.Tensor,
    ) -> torch.Tensor:
        """Matching cost of one image at given points.

        Args:
            pred_logits: (N, C+1) class logits.
            pred_masks: (N, h, w) mask logits.
            labels: (M,) int64 target classes in [0, C).
            target_masks: (M, H, W) target masks (any resolution; bool or float).
            point_coords: (P, 2) normalized ``(x, y)`` points in [0, 1].

        Returns:
            (N, M) fp32 cost matrix.
        """
        device_type = pred_logits.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            probs = pred_logits.float().softmax(-1)
            cost_class = -probs[:, labels]  # (N, M)
            coords = point_coords.float()[None]
            pred_points = point_sample(
                pred_masks.float()[:, None], coords.expand(pred_masks.shape[0], -1, -1), align_corners=False
            )[:, 0]  # (N, P)
            tgt_points = point_sample(
                target_masks.float()[:, None], coords.expand(target_masks.shape[0], -1, -1), align_corners=False
            )[:, 0]  # (M, P)
            cost_mask = pairwise_sigmoid_bce(pred_points, tgt_points)
            cost_dice = pairwise_dice(pred_points, tgt_points)
            return self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: ``pred_logits`` (B, N, C+1) and ``pred_masks`` (B, N, h, w) logits.
            targets: B dicts with ``labels`` (M_b,) int64 and ``masks`` (M_b, H, W).

        Returns:
            B pairs ``(pred_idx, tgt_idx)`` of int64 CPU tensors of length min(N, M_b): prediction
            ``pred_idx[k]`` is assigned target ``tgt_idx[k]``; ``pred_idx`` is sorted.
        """
        pred_logits = outputs["pred_logits"]
        pred_masks = outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(
                f"HungarianMatcher: {len(targets)} targets for a batch of {pred_logits.shape[0]} predictions"
            )
        indices = []
        for b, target in enumerate(targets):
            labels = target["labels"]
            # One point set per image, shared by its predictions and targets (drawn for every image,
            # so the random stream does not depend on which images are empty).
            point_coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)[0]
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], labels, target["masks"], point_coords).cpu()
            if not torch.isfinite(cost).all():
                raise FloatingPointError(
                    f"HungarianMatcher: non-finite matching cost in image {b} of the batch "
                    "(NaN/inf in pred_logits or pred_masks)"
                )
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}"
        )
