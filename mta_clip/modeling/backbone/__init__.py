"""Detectron2 backbones of this project (importing registers them in BACKBONE_REGISTRY)."""

from .clip_resnet import CLIPResNet
from .clip_vit import CLIPViT
from .imagenet_vit import ImageNetViT
from .mix_transformer import MixTransformer

__all__ = ["CLIPResNet", "CLIPViT", "ImageNetViT", "MixTransformer"]
