"""CLIP for MTA-CLIP: weight-file reading, prompt learner, prompt text encoder (with its
shared-prefix speed-up)."""

from .prompt_learner import PromptLearner, clip_tokenizer, tokenize_class_slot, tokenize_template
from .text_encoder import PromptTextEncoder
from .weights import (
    OFFICIAL_CLIP_FILES,
    CLIPArch,
    clip_weights_and_arch,
    image_size_pair,
    load_clip_weights,
    read_clip_weights,
    resize_grid_pos_embed,
    sub_state_dict,
)

__all__ = [
    "OFFICIAL_CLIP_FILES",
    "CLIPArch",
    "clip_weights_and_arch",
    "image_size_pair",
    "load_clip_weights",
    "read_clip_weights",
    "resize_grid_pos_embed",
    "sub_state_dict",
    "PromptLearner",
    "clip_tokenizer",
    "tokenize_class_slot",
    "tokenize_template",
    "PromptTextEncoder",
]
