"""A tiny random CLIP (text tower of 3 blocks) and a prompt text encoder builder for the CLIP tests."""

import pytest

from mta_clip.modeling.clip.text_encoder import PromptTextEncoder
from mta_clip.modeling.clip.weights import read_clip_weights
from tests.conftest import load_tool, open_clip_reference

CLASSES = ["cat", "traffic light", "sky", "potted plant", "person"]
# 1, 2 and 3 BPE tokens mixed (4 with a period for "chest of drawers" / "fire hydrant")
MIXED = ["cat", "traffic light", "chest of drawers", "sky", "potted plant", "fire hydrant", "person", "wall"]


@pytest.fixture(scope="package")
def ckpt(tmp_path_factory):
    # 2 text heads, 3 blocks: RN50 depth kept at tiny width (only the text tower is used here)
    d = tmp_path_factory.mktemp("clip_text")
    return load_tool("make_tiny_clip").make_tiny_clip(
        str(d / "RN50.pt"), "RN50", "torchscript", text_width=128, text_layers=3, vision_layers=(1, 1, 1, 1)
    )


@pytest.fixture(scope="package")
def reference(ckpt):
    return open_clip_reference(ckpt)


@pytest.fixture(scope="package")
def clip(ckpt):
    return read_clip_weights(ckpt)


def make_encoder(clip, class_names=CLASSES, **kwargs):
    weights, arch = clip
    return PromptTextEncoder(class_names=class_names, arch=arch, weights=weights, **kwargs)


def tokens_per_block(enc):
    """Hooks counting the token positions fed to every block's ln_1 and mlp: returns the list."""
    counts = []
    width = enc.positional_embedding.shape[1]
    for block in enc.transformer.resblocks:
        for module in (block.ln_1, block.mlp):
            module.register_forward_hook(lambda m, args, out: counts.append(args[0].numel() // width))
    return counts
