"""Set criterion of Mask2Former: Hungarian matching, then classification and mask losses.

For each supervised prediction (the final one and, with deep supervision, every ``aux_outputs[i]``)
the matcher assigns predictions to targets once, and every loss reads those indices:

- ``loss_ce``: cross-entropy over all N queries; matched queries target their ground-truth class,
  unmatched ones the no-object class C, whose class weight is ``eos_coef``. The mean is weighted
  (divided by the sum of the target classes' weights), as ``F.cross_entropy(weight=...)`` does.
- ``loss_mask``: sigmoid BCE of each matched mask at ``num_points`` importance-sampled points,
  averaged over points, summed over masks, divided by ``num_masks``.
- ``loss_dice``: ``1 - (2 sum s t + 1) / (sum s + sum t + 1)`` at the same points, summed over masks,
  divided by ``num_masks``.

``num_masks`` (``mask_loss_normalizer="num_masks"``, Mask2Former) is the number of target masks in
the batch, averaged over processes, at least 1. With ``"class_weight_sum"`` (the MTA-CLIP authors'
code) it is the sum of the class weights of all B·N query targets instead: 1 per matched query,
``eos_coef`` per unmatched one (the normalizer of their ``loss_ce``), averaged over processes, at
least 1; at ADE20k shapes about twice the number of masks, so the mask losses weigh about half.
The criterion returns unweighted losses (``<key>`` and ``<key>_<i>`` for ``aux_outputs[i]``); its
``weight_dict`` holds their weights and the meta-architecture applies them.

Subclasses add a loss by defining a method ``loss_<x>(outputs, targets, indices, num_masks) -> dict``
and extending the class attribute ``LOSS_METHODS`` (loss name -> method name).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils import comm
from torch import nn

from ..config import choice
from .matcher import HungarianMatcher
from .point_sampling import calculate_uncertainty, get_uncertain_point_coords_with_randomness, point_sample

__all__ = ["SetCriterion", "sigmoid_bce_loss", "dice_loss", "MASK_LOSS_NORMALIZERS"]

#: values of ``MODEL.MASK_FORMER.MASK_LOSS_NORMALIZER``
MASK_LOSS_NORMALIZERS = ("num_masks", "class_weight_sum")

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sigmoid BCE averaged over points, summed over masks, divided by ``num_masks``.

    Args:
        logits: (M, P) mask logits at P points.
        targets: (M, P) target values in [0, 1].
        num_masks: normalizer.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss ``1 - (2 sum s t + 1) / (sum s + sum t + 1)`` per mask (``s = sigmoid(logits)``),
    summed over masks, divided by ``num_masks``.

    Args:
        logits: (M, P) mask logits at P points.
        targets: (M, P) target values in [0, 1].
        num_masks: normalizer.
    """
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


class SetCriterion(nn.Module):
    """Mask2Former losses on Hungarian-matched predictions, with deep supervision."""

    #: loss name (entry of ``losses``) -> name of the method computing it
    LOSS_METHODS: Dict[str, str] = {"labels": "loss_labels", "masks": "loss_masks"}

    @configurable
    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str],
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        num_aux_outputs: int = 0,
        mask_loss_normalizer: str = "num_masks",
    ):
        """
        Args:
            num_classes: C, classes without no-object.
            matcher: module ``(outputs, targets) -> [(pred_idx, tgt_idx)] * B``.
            weight_dict: weight of each loss key of the final prediction (``loss_ce``, ...); a copy
                ``<key>_<i>`` is added for every ``i < num_aux_outputs``.
            eos_coef: class weight of no-object in ``loss_ce``.
            losses: loss names to compute, keys of ``LOSS_METHODS`` (e.g. ``["labels", "masks"]``).
            num_points: P, points per mask for the mask losses.
            oversample_ratio: k of the importance sampling.
            importance_sample_ratio: beta of the importance sampling.
            num_aux_outputs: number of ``aux_outputs`` supervised (0 = no deep supervision: any
                ``aux_outputs`` are ignored).
            mask_loss_normalizer: divisor of ``loss_mask`` / ``loss_dice``: ``"num_masks"``
                (Mask2Former) or ``"class_weight_sum"`` (MTA-CLIP authors), see the module docstring.
        """
        super().__init__()
        unknown = [name for name in losses if name not in self.LOSS_METHODS]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown losses {unknown}; expected names in {sorted(self.LOSS_METHODS)}"
            )
        if num_aux_outputs < 0:
            raise ValueError(f"{type(self).__name__}: num_aux_outputs must be >= 0, got {num_aux_outputs}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.losses = list(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.num_aux_outputs = num_aux_outputs
        self.mask_loss_normalizer = choice(
            MASK_LOSS_NORMALIZERS, mask_loss_normalizer, "MODEL.MASK_FORMER.MASK_LOSS_NORMALIZER"
        )
        full_weights = dict(weight_dict)
        for i in range(num_aux_outputs):
            full_weights.update({f"{key}_{i}": value for key, value in weight_dict.items()})
        self.weight_dict = full_weights
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        # Name fixed by published Mask2Former checkpoints ("criterion.empty_weight").
        self.register_buffer("empty_weight", empty_weight)

    @classmethod
    def from_config(cls, cfg, num_supervised_predictions: int) -> dict:
        """``num_supervised_predictions`` comes from the decoder (its ``num_supervised_predictions``):
        with ``MODEL.MASK_FORMER.DEEP_SUPERVISION`` all but the final one are ``aux_outputs``."""
        mf = cfg.MODEL.MASK_FORMER
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": HungarianMatcher(cfg),
            "weight_dict": {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT},
            "eos_coef": mf.NO_OBJECT_WEIGHT,
            "losses": ["labels", "masks"],
            "num_points": mf.TRAIN_NUM_POINTS,
            "oversample_ratio": mf.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mf.IMPORTANCE_SAMPLE_RATIO,
            "num_aux_outputs": num_supervised_predictions - 1 if mf.DEEP_SUPERVISION else 0,
            "mask_loss_normalizer": mf.MASK_LOSS_NORMALIZER,
        }

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _pred_permutation_idx(indices: Indices) -> Tuple[torch.Tensor, torch.Tensor]:
        """(image index, query index) of all matched predictions, images in batch order."""
        batch_idx = torch.cat([torch.full_like(pred, b) for b, (pred, _) in enumerate(indices)])
        pred_idx = torch.cat([pred for pred, _ in indices])
        return batch_idx, pred_idx

    @staticmethod
    def _matched_target_masks(targets: List[Dict[str, torch.Tensor]], indices: Indices) -> torch.Tensor:
        """(M, H, W) target masks in the order of ``_pred_permutation_idx``; masks of images with
        different sizes are zero-padded at the bottom / right to the largest size."""
        masks = [t["masks"] for t in targets]
        height = max(m.shape[-2] for m in masks)
        width = max(m.shape[-1] for m in masks)
        matched = []
        for m, (_, tgt) in zip(masks, indices):
            m = m[tgt.to(m.device)]
            if m.shape[-2:] != (height, width):
                m = F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2]))
            matched.append(m)
        return torch.cat(matched)

    def get_num_masks(self, targets: List[Dict[str, torch.Tensor]], device: torch.device, num_queries: int) -> float:
        """Normalizer of the mask losses, averaged over processes, at least 1: the number of target
        masks (``"num_masks"``), or the class-weight sum of the B·N query targets
        (``"class_weight_sum"``: ``min(M_b, N)`` matched queries weigh 1, the others ``eos_coef``)."""
        if self.mask_loss_normalizer == "num_masks":
            count = float(sum(len(t["labels"]) for t in targets))
        else:
            matched = [min(len(t["labels"]), num_queries) for t in targets]
            count = float(sum(m + self.eos_coef * (num_queries - m) for m in matched))
        num_masks = torch.as_tensor([count], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
        return torch.clamp(num_masks / comm.get_world_size(), min=1).item()

    # ------------------------------------------------------------------ losses
    def loss_labels(self, outputs, targets, indices: Indices, num_masks: float) -> Dict[str, torch.Tensor]:
        """``loss_ce`` from ``pred_logits`` (B, N, C+1)."""
        logits = outputs["pred_logits"].float()
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"{type(self).__name__}: pred_logits has {logits.shape[-1]} classes, expected "
                f"num_classes + 1 = {self.num_classes + 1}"
            )
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        batch_idx, pred_idx = self._pred_permutation_idx(indices)
        matched_classes = [t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, indices)]
        target_classes[batch_idx.to(logits.device), pred_idx.to(logits.device)] = torch.cat(matched_classes).to(
            logits.device
        )
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss_ce}

    def loss_masks(self, outputs, targets, indices: Indices, num_masks: float) -> Dict[str, torch.Tensor]:
        """``loss_mask`` and ``loss_dice`` from ``pred_masks`` (B, N, h, w) against target masks
        (M_b, H, W), at points importance-sampled from the predictions."""
        pred_masks = outputs["pred_masks"]
        batch_idx, pred_idx = self._pred_permutation_idx(indices)
        src = pred_masks[batch_idx.to(pred_masks.device), pred_idx.to(pred_masks.device)][:, None]  # (M,1,h,w)
        tgt = self._matched_target_masks(targets, indices).to(src)[:, None]  # (M,1,H,W)
        with torch.no_grad():
            point_coords = get_uncertain_point_coords_with_randomness(
                src, calculate_uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            point_labels = point_sample(tgt, point_coords, align_corners=False)[:, 0]  # (M, P)
        point_logits = point_sample(src, point_coords, align_corners=False)[:, 0]  # (M, P)
        return {
            "loss_mask": sigmoid_bce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def get_loss(self, name: str, outputs, targets, indices: Indices, num_masks: float) -> Dict[str, torch.Tensor]:
        """Dispatches loss ``name`` (a key of ``LOSS_METHODS``) to its method."""
        if name not in self.LOSS_METHODS:
            raise ValueError(
                f"{type(self).__name__}: unknown loss {name!r}; expected one of {sorted(self.LOSS_METHODS)}"
            )
        return getattr(self, self.LOSS_METHODS[name])(outputs, targets, indices, num_masks)

    def losses_of_prediction(
        self, outputs, targets, num_masks: float, indices: Optional[Indices] = None
    ) -> Dict[str, torch.Tensor]:
        """Matches one prediction (unless ``indices`` are given) and computes all ``losses`` on it."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        losses = {}
        for name in self.losses:
            losses.update(self.get_loss(name, outputs, targets, indices, num_masks))
        return losses

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``pred_logits`` (B, N, C+1), ``pred_masks`` (B, N, h, w) and optionally
                ``aux_outputs``, a list of dicts with the same keys.
            targets: B dicts with ``labels`` (M_b,) int64 and ``masks`` (M_b, H, W).

        Returns:
            Unweighted losses: ``<key>`` for the final prediction, ``<key>_<i>`` for ``aux_outputs[i]``.
        """
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        num_masks = self.get_num_masks(targets, outputs["pred_logits"].device, outputs["pred_logits"].shape[1])
        losses = self.losses_of_prediction(final, targets, num_masks)
        if self.num_aux_outputs > 0:
            aux_outputs = outputs.get("aux_outputs", [])
            if len(aux_outputs) != self.num_aux_outputs:
                raise ValueError(
                    f"{type(self).__name__}: got {len(aux_outputs)} aux_outputs, expected num_aux_outputs="
                    f"{self.num_aux_outputs} (check MODEL.MASK_FORMER.DEC_LAYERS / DEEP_SUPERVISION / "
                    "SUPERVISE_INITIAL_PREDICTION against the decoder)"
                )
            for i, aux in enumerate(aux_outputs):
                aux_losses = self.losses_of_prediction(aux, targets, num_masks)
                losses.update({f"{key}_{i}": value for key, value in aux_losses.items()})
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}, num_aux_outputs={self.num_aux_outputs}, "
            f"mask_loss_normalizer={self.mask_loss_normalizer}"
        )
