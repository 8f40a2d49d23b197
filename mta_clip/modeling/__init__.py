"""Models: registration happens on import."""
from .baseline import MaskedSemSegHead, SemanticMask2Former, semantic_inference
from .masked_decoder import TRANSFORMER_DECODER_REGISTRY, MaskedDecoder
from .pixel_decoder import PIXEL_DECODER_REGISTRY, MSDeformAttnPixelDecoder

__all__ = [
    "MaskedSemSegHead", "SemanticMask2Former", "semantic_inference", "TRANSFORMER_DECODER_REGISTRY",
    "MaskedDecoder", "PIXEL_DECODER_REGISTRY", "MSDeformAttnPixelDecoder",
]
