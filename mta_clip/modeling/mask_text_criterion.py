"""``MaskTextCriterion``: Mask2Former's set criterion plus MTA-CLIP's mask-to-text loss ``loss_sim``.

``loss_sim`` reads ``pred_sim`` (B, N, K, C') and the same Hungarian indices as the mask losses of
that prediction. Matched queries take their target class with weight 1; unmatched queries take the
"none" text (index C of C' = C + 1) with weight ``none_weight`` when it is enabled, else no part.
"""

from typing import Dict, List

import torch
from detectron2.config import configurable

from ..config import choice
from .contrastive_loss import NEGATIVES, NORMALIZATIONS, mask_text_contrastive_loss
from .criterion import Indices, SetCriterion

__all__ = ["MaskTextCriterion"]


class MaskTextCriterion(SetCriterion):
    """Adds loss name ``"sim"`` (key ``loss_sim``, ``loss_sim_<i>`` for ``aux_outputs[i]``)."""

    LOSS_METHODS: Dict[str, str] = {**SetCriterion.LOSS_METHODS, "sim": "loss_sim"}

    @configurable
    def __init__(
        self,
        *,
        sim_negatives: str = "mixneg",
        none_class: bool = True,
        none_weight: float = 0.1,
        sim_normalization: str = "weighted_mean",
        **kwargs,
    ):
        """
        Args (``kwargs`` are ``SetCriterion``'s):
            sim_negatives: ``"MixNeg"`` (Eq. 8) or ``"SeparateNeg"`` (Eq. 9), case-insensitive
                (``MODEL.MTA_CLIP.NEGATIVES``).
            none_class: ``pred_sim`` has a "none" text at class index C (C' = C + 1) that unmatched
                queries take as positive.
            none_weight: weight of the unmatched queries' terms.
            sim_normalization: ``"weighted_mean"`` or ``"mean_over_queries"``
                (``MODEL.MTA_CLIP.SIM_NORMALIZATION``, see ``contrastive_loss.py``).
        """
        super().__init__(**kwargs)
        self.sim_negatives = choice(tuple(NEGATIVES), sim_negatives, "MODEL.MTA_CLIP.NEGATIVES")
        self.sim_normalization = choice(tuple(NORMALIZATIONS), sim_normalization, "MODEL.MTA_CLIP.SIM_NORMALIZATION")
        self.per_query_terms = NEGATIVES[self.sim_negatives]  # Eq. 8 or Eq. 9
        self.normalization = NORMALIZATIONS[self.sim_normalization]
        self.none_class = none_class
        self.none_weight = none_weight

    @classmethod
    def from_config(cls, cfg, num_supervised_predictions: int) -> dict:
        ret = super().from_config(cfg, num_supervised_predictions)
        mc = cfg.MODEL.MTA_CLIP
        if mc.USE_SIM_LOSS:
            ret["losses"] = ret["losses"] + ["sim"]
            ret["weight_dict"] = {**ret["weight_dict"], "loss_sim": mc.SIM_WEIGHT}
        ret.update(
            sim_negatives=mc.NEGATIVES,
            none_class=mc.NONE_CLASS,
            none_weight=mc.NONE_WEIGHT,
            sim_normalization=mc.SIM_NORMALIZATION,
        )
        return ret

    def query_classes_and_weights(
        self,
        indices: Indices,
        targets: List[Dict[str, torch.Tensor]],
        batch: int,
        num_queries: int,
        device: torch.device,
    ):
        """(B, N) positive class and weight of every query: the matched target's class and 1; for
        unmatched queries the "none" class C and ``none_weight``, or -1 and 0 without "none" text."""
        fill_class = self.num_classes if self.none_class else -1
        fill_weight = self.none_weight if self.none_class else 0.0
        classes = torch.full((batch, num_queries), fill_class, dtype=torch.int64, device=device)
        weights = torch.full((batch, num_queries), fill_weight, dtype=torch.float32, device=device)
        batch_idx, pred_idx = self._pred_permutation_idx(indices)
        batch_idx, pred_idx = batch_idx.to(device), pred_idx.to(device)
        matched = [t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, indices)]
        classes[batch_idx, pred_idx] = torch.cat(matched).to(device)
        weights[batch_idx, pred_idx] = 1.0
        return classes, weights

    def loss_sim(self, outputs, targets, indices: Indices, num_masks: float) -> Dict[str, torch.Tensor]:
        """``loss_sim`` from ``pred_sim`` (B, N, K, C') (``num_masks`` unused)."""
        if "pred_sim" not in outputs:
            raise KeyError(f"{type(self).__name__}: loss 'sim' needs 'pred_sim' in every supervised prediction")
        sim = outputs["pred_sim"]
        expected = self.num_classes + 1 if self.none_class else self.num_classes
        if sim.dim() != 4 or sim.shape[-1] != expected:
            raise ValueError(
                f"{type(self).__name__}: pred_sim must be (B, N, K, {expected}) with "
                f"MODEL.MTA_CLIP.NONE_CLASS={self.none_class} and {self.num_classes} classes, got {tuple(sim.shape)}"
            )
        classes, weights = self.query_classes_and_weights(indices, targets, sim.shape[0], sim.shape[1], sim.device)
        loss = mask_text_contrastive_loss(sim, classes, weights, self.per_query_terms, self.normalization)
        return {"loss_sim": loss}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, sim_negatives={self.sim_negatives}, none_class={self.none_class}, "
            f"none_weight={self.none_weight}, sim_normalization={self.sim_normalization}"
        )
