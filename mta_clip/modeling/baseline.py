"""Mask2Former semantic segmentation: head and meta-architecture (the paper's baseline).

``SemanticMask2Former`` = backbone -> ``MaskedSemSegHead`` (pixel decoder + transformer decoder)
-> ``SetCriterion`` in training, semantic inference (softmax over classes without no-object times
sigmoid masks) in evaluation. Module names match published Mask2Former checkpoints.
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from .criterion import SetCriterion
from .masked_decoder import build_transformer_decoder
from .pixel_decoder import build_pixel_decoder

logger = logging.getLogger(__name__)


@SEM_SEG_HEADS_REGISTRY.register()
class MaskedSemSegHead(nn.Module):
    """Pixel decoder followed by the transformer decoder (``predictor``)."""

    @configurable
    def __init__(self, *, pixel_decoder: nn.Module, predictor: nn.Module, transformer_in_feature: str):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        if transformer_in_feature != "multi_scale_pixel_decoder":
            raise ValueError(
                "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE must be 'multi_scale_pixel_decoder', "
                f"got {transformer_in_feature!r}"
            )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], **transformer_decoder_kwargs):
        """``transformer_decoder_kwargs`` go to the transformer decoder's ``from_config`` (e.g. the text shape)."""
        return {
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "predictor": build_transformer_decoder(cfg, cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, **transformer_decoder_kwargs),
            "transformer_in_feature": cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE,
        }

    def forward(self, features: Dict[str, torch.Tensor], **transformer_decoder_inputs) -> Dict:
        mask_features, _, multi_scale = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale, mask_features, **transformer_decoder_inputs)


@META_ARCH_REGISTRY.register()
class SemanticMask2Former(nn.Module):
    """Mask2Former for semantic segmentation (our implementation, checkpoint-compatible)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: SetCriterion,
        size_divisibility: int,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        sem_seg_postprocess_before_inference: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.size_divisibility = size_divisibility if size_divisibility > 0 else self.backbone.size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(
        cls,
        cfg,
        backbone: Optional[Backbone] = None,
        sem_seg_head: Optional[nn.Module] = None,
        criterion_class: type = SetCriterion,
    ):
        """Subclasses may pass a pre-built backbone / head and the criterion class; the criterion
        supervises as many predictions as the head's transformer decoder makes."""
        backbone = backbone if backbone is not None else build_backbone(cfg)
        if sem_seg_head is None:
            sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        if not hasattr(getattr(sem_seg_head, "predictor", None), "num_supervised_predictions"):
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NAME {cfg.MODEL.SEM_SEG_HEAD.NAME!r} has no transformer decoder "
                "('predictor'); the mask-classification models need 'MaskedSemSegHead'"
            )
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion_class(cfg, sem_seg_head.predictor.num_supervised_predictions),
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "sem_seg_postprocess_before_inference": cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ----------------------------------------------------------------- hooks for subclasses
    def transformer_decoder_inputs(self) -> Dict:
        """Extra keyword inputs of the transformer decoder (none for the baseline)."""
        return {}

    # ----------------------------------------------------------------- forward
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        """Training: dict of weighted losses. Eval: ``[{"sem_seg": (C, height, width)}]``."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        outputs = self.sem_seg_head(features, **self.transformer_decoder_inputs())
        if self.training:
            if any("instances" not in x for x in batched_inputs):
                raise ValueError("training inputs need 'instances' (use the semantic dataset mapper)")
            targets = self.prepare_targets([x["instances"].to(self.device) for x in batched_inputs], images)
            losses = self.criterion(outputs, targets)
            weights = self.criterion.weight_dict
            for k in list(losses):
                if k not in weights:
                    raise KeyError(f"criterion returned {k!r}, which has no weight in weight_dict")
                losses[k] = losses[k] * weights[k]
            return losses
        return self.semantic_results(outputs["pred_logits"], outputs["pred_masks"], batched_inputs, images)

    def prepare_targets(self, instances, images: ImageList) -> List[Dict]:
        """Per image ``labels`` (M,) and ``masks`` (M, H_pad, W_pad) zero-padded to the batch."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for inst in instances:
            gt = inst.gt_masks
            gt = gt.tensor if hasattr(gt, "tensor") else gt
            padded = torch.zeros((gt.shape[0], h_pad, w_pad), dtype=gt.dtype, device=gt.device)
            padded[:, : gt.shape[1], : gt.shape[2]] = gt
            targets.append({"labels": inst.gt_classes, "masks": padded})
        return targets

    def semantic_results(self, mask_cls, mask_pred, batched_inputs, images: ImageList) -> List[Dict]:
        mask_pred = F.interpolate(mask_pred, size=images.tensor.shape[-2:], mode="bilinear", align_corners=False)
        results = []
        for cls_i, mask_i, inp, size in zip(mask_cls, mask_pred, batched_inputs, images.image_sizes):
            height, width = inp.get("height", size[0]), inp.get("width", size[1])
            if self.sem_seg_postprocess_before_inference:
                mask_i = sem_seg_postprocess(mask_i, size, height, width)
                results.append({"sem_seg": semantic_inference(cls_i, mask_i)})
            else:
                r = semantic_inference(cls_i, mask_i)
                results.append({"sem_seg": sem_seg_postprocess(r, size, height, width)})
        return results


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """(N, C+1) class logits, (N, H, W) mask logits -> (C, H, W) scores.

    score_c(x) = sum_q softmax(cls_q)[c] * sigmoid(mask_q(x)), no-object column dropped.
    """
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())
