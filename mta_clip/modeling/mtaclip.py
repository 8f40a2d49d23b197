"""MTA-CLIP meta-architecture (paper §3): the baseline plus the CLIP text branch.

The prompt text encoder turns the dataset's class names (read once, at build time) into text
features ``t`` (K, C', D); the Mask-Text Decoder consumes them; ``MaskTextCriterion`` adds
``L_sim``. Inference uses only the mask queries of the last layer, so the output format is the
baseline's. In eval mode the text features are cached by the encoder.
"""
import logging
from typing import List, Optional, Sequence

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, build_backbone

from ..data.class_names import class_names_from_metadata
from .baseline import SemanticMask2Former
from .clip import PromptTextEncoder
from .criterion import SetCriterion
from .mask_text_criterion import MaskTextCriterion

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class MTACLIP(SemanticMask2Former):
    """Mask2Former with text queries from a frozen CLIP text encoder and K learned prompts."""

    @configurable
    def __init__(self, *, text_encoder: Optional[PromptTextEncoder], **kwargs):
        """``text_encoder=None`` switches the text branch off (the baseline)."""
        super().__init__(**kwargs)
        self.text_encoder = text_encoder

    @classmethod
    def from_config(cls, cfg, class_names: Optional[Sequence[str]] = None):
        """``class_names`` defaults to the prompt class names of ``DATASETS.TRAIN`` metadata."""
        mc = cfg.MODEL.MTA_CLIP
        if not mc.ENABLED:
            ret = super().from_config(cfg)
            ret["text_encoder"] = None
            return ret
        _check_text_branch_is_used(mc)
        names: List[str] = list(class_names) if class_names is not None else class_names_from_metadata(cfg)
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        if len(names) != num_classes:
            raise ValueError(
                f"{len(names)} prompt class names but MODEL.SEM_SEG_HEAD.NUM_CLASSES = {num_classes}"
            )
        text_names = names + [mc.NONE_CLASS_NAME] if mc.NONE_CLASS else names
        text_encoder = PromptTextEncoder(cfg, text_names)
        if mc.TEXT_DIM and mc.TEXT_DIM != text_encoder.embed_dim:
            raise ValueError(
                f"MODEL.MTA_CLIP.TEXT_DIM = {mc.TEXT_DIM} but the CLIP text encoder gives {text_encoder.embed_dim}"
            )
        backbone = build_backbone(cfg)
        head = SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(
            cfg, backbone.output_shape(), text_dim=text_encoder.embed_dim, num_text_classes=len(text_names)
        )
        logger.info("MTA-CLIP: %d prompts x %d class texts -> %d text queries",
                    text_encoder.num_prompts, len(text_names), text_encoder.num_prompts * len(text_names))
        ret = super().from_config(cfg, backbone=backbone, sem_seg_head=head,
                                  criterion=MaskTextCriterion(cfg) if mc.USE_SIM_LOSS else SetCriterion(cfg))
        ret["text_encoder"] = text_encoder
        return ret

    def transformer_decoder_inputs(self):
        if self.text_encoder is None:
            return {}
        return {"text_embeddings": self.text_encoder()}


def _check_text_branch_is_used(mc) -> None:
    """Rejects MODEL.MTA_CLIP switch combinations where the text branch cannot work or changes nothing
    (the prompts would get no gradient, which also breaks DDP without unused-parameter search)."""
    if not mc.USE_TEXT_QUERIES and mc.USE_SIM_LOSS:
        raise ValueError(
            "MODEL.MTA_CLIP.USE_SIM_LOSS True needs USE_TEXT_QUERIES True: L_sim (Eqs. 7-9) compares mask "
            "queries with the text queries that come out of the decoder (Eq. 5)"
        )
    if not mc.USE_SIM_LOSS and not (mc.USE_TEXT_QUERIES and mc.JOINT_SELF_ATTENTION):
        raise ValueError(
            f"MODEL.MTA_CLIP.USE_SIM_LOSS False with USE_TEXT_QUERIES {mc.USE_TEXT_QUERIES} and "
            f"JOINT_SELF_ATTENTION {mc.JOINT_SELF_ATTENTION}: no loss and no mask query reads the text, "
            "so the model is the baseline; set MODEL.MTA_CLIP.ENABLED False for it"
        )
