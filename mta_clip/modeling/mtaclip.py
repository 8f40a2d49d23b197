"""MTA-CLIP meta-architecture (paper §3): the baseline plus the CLIP text branch.

The prompt text encoder turns the dataset's class names (read once, at build time) into text
features ``t`` (K, C', D); the Mask-Text Decoder consumes them (it gets their shape from the
encoder); ``MaskTextCriterion`` adds ``L_sim``. Inference uses only the mask queries of the last
layer, so the output format is the baseline's. In eval mode the text features are cached by the
encoder.
"""

import logging
from typing import List, Optional, Sequence

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, build_backbone

from ..data.class_names import class_names_from_metadata
from .baseline import SemanticMask2Former
from .clip import PromptTextEncoder
from .clip.weights import clip_weights_read_once
from .criterion import SetCriterion
from .mask_text_criterion import MaskTextCriterion
from .mask_text_decoder import MaskTextDecoder
from .masked_decoder import TRANSFORMER_DECODER_REGISTRY

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class MTACLIP(SemanticMask2Former):
    """Mask2Former with text queries from a frozen CLIP text encoder and K learned prompts."""

    @configurable
    def __init__(self, *, text_encoder: PromptTextEncoder, **kwargs):
        super().__init__(**kwargs)
        self.text_encoder = text_encoder

    @classmethod
    def from_config(cls, cfg, class_names: Optional[Sequence[str]] = None):
        """``class_names`` defaults to the prompt class names of ``DATASETS.TRAIN`` metadata."""
        mc = cfg.MODEL.MTA_CLIP
        _check_text_branch_is_used(cfg)
        names: List[str] = list(class_names) if class_names is not None else class_names_from_metadata(cfg)
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} prompt class names but MODEL.SEM_SEG_HEAD.NUM_CLASSES = {num_classes}")
        text_names = names + [mc.NONE_CLASS_NAME] if mc.NONE_CLASS else names
        with clip_weights_read_once():  # the text encoder and a CLIP backbone share one read of the file
            text_encoder = PromptTextEncoder(cfg, text_names)
            backbone = build_backbone(cfg)
        text_shape = (text_encoder.num_prompts, text_encoder.num_classes, text_encoder.embed_dim)
        head = SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(
            cfg, backbone.output_shape(), text_shape=text_shape
        )
        logger.info(
            "MTA-CLIP: %d prompts x %d class texts -> %d text queries",
            text_shape[0],
            text_shape[1],
            text_shape[0] * text_shape[1],
        )
        ret = super().from_config(
            cfg,
            backbone=backbone,
            sem_seg_head=head,
            criterion_class=MaskTextCriterion if mc.USE_SIM_LOSS else SetCriterion,
        )
        ret["text_encoder"] = text_encoder
        return ret

    def transformer_decoder_inputs(self):
        return {"text_embeddings": self.text_encoder()}


def _check_text_branch_is_used(cfg) -> None:
    """Cross-key checks at build time: the decoder must take text queries, and the text must have an
    effect (else the prompts get no gradient, which also breaks DDP without unused-parameter search)."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    decoder = TRANSFORMER_DECODER_REGISTRY.get(name)
    if not (isinstance(decoder, type) and issubclass(decoder, MaskTextDecoder)):
        raise ValueError(
            f"MODEL.META_ARCHITECTURE 'MTACLIP' needs a decoder with text queries: MODEL.MASK_FORMER."
            f"TRANSFORMER_DECODER_NAME 'MaskTextDecoder' (or a subclass), got {name!r}"
        )
    mc = cfg.MODEL.MTA_CLIP
    if not mc.USE_SIM_LOSS and not mc.JOINT_SELF_ATTENTION:
        raise ValueError(
            "MODEL.MTA_CLIP.USE_SIM_LOSS False with JOINT_SELF_ATTENTION False: no loss and no mask query "
            "reads the text, so the model is the baseline; use MODEL.META_ARCHITECTURE 'SemanticMask2Former' "
            "with MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME 'MaskedDecoder' for it"
        )
