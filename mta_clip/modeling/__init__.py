"""Models: registration of meta-architectures, heads, decoders and backbones happens on import."""

from . import backbone  # noqa: F401  (registers CLIPResNet / CLIPViT)
from .baseline import MaskedSemSegHead, SemanticMask2Former, semantic_inference
from .clip import PromptTextEncoder
from .criterion import SetCriterion
from .mask_text_criterion import MaskTextCriterion
from .mask_text_decoder import MaskTextDecoder
from .masked_decoder import TRANSFORMER_DECODER_REGISTRY, MaskedDecoder
from .matcher import HungarianMatcher
from .mtaclip import MTACLIP
from .pixel_decoder import PIXEL_DECODER_REGISTRY, MSDeformAttnPixelDecoder

__all__ = [
    "MaskedSemSegHead",
    "SemanticMask2Former",
    "semantic_inference",
    "PromptTextEncoder",
    "SetCriterion",
    "MaskTextCriterion",
    "MaskTextDecoder",
    "TRANSFORMER_DECODER_REGISTRY",
    "MaskedDecoder",
    "HungarianMatcher",
    "MTACLIP",
    "PIXEL_DECODER_REGISTRY",
    "MSDeformAttnPixelDecoder",
]
