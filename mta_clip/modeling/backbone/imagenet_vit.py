"""ImageNet-pretrained plain ViT (the paper's ViT-S/16, Table 3 left) as a Detectron2 backbone.

Parameter names are timm's ``VisionTransformer`` names, so timm / DeiT / AugReg state dicts load
unchanged: ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.norm1.*``,
``blocks.N.attn.qkv.*``, ``blocks.N.attn.proj.*``, ``blocks.N.norm2.*``, ``blocks.N.mlp.fc1.*``,
``blocks.N.mlp.fc2.*``. The classifier parts (``norm``, ``fc_norm``, ``head``) and the blocks after
the last one used are not built. Four blocks' patch tokens feed the shared ViT pyramid
(``vit_pyramid.py``) that gives ``res2..res5``.
"""

import logging
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from torch import nn

from ...layers.drop_path import DropPath
from ..clip.weights import resize_grid_pos_embed
from .freeze import warn_unused_freeze_at
from .vit_pyramid import LEVELS, PlainViTBackbone, ViTPyramid
from .weight_files import load_backbone_weights, read_backbone_weights

logger = logging.getLogger(__name__)

__all__ = ["ImageNetViT", "ViTBlock"]

# Classifier tensors of ImageNet ViT checkpoints (final norm, pooling norm, head): not used here.
_CLASSIFIER_PREFIXES = ("norm.", "fc_norm.", "head.", "pre_logits.")
_NORM_EPS = 1e-6  # LayerNorm eps of timm's / DeiT's / AugReg's ViTs


class _Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm names ``qkv``, ``proj``)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C / heads), scale head_dim ** -0.5
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_NORM_EPS)
        self.attn = _Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=_NORM_EPS)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path, "sample")  # identity in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@BACKBONE_REGISTRY.register()
class ImageNetViT(PlainViTBackbone):
    """Plain ViT with ImageNet weights (timm layout): patch tokens after blocks ``out_indices``
    (default 3, 5, 7, 11) as (B, embed_dim, H/16, W/16) maps, turned into ``res2..res5`` at strides
    4/8/16/32 (``embed_dim`` channels each) by the shared ViT pyramid. Takes any input whose sides
    are multiples of the patch size; the positional embedding is resized as timm does (bicubic,
    anti-aliased) at load time to ``image_size`` and at run time to the input's grid.
    """

    _CONFIG_NODE = "MODEL.VIT"
    _IMAGE_SIZE_KEY = "MODEL.VIT.IMAGE_SIZE"

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        patch_size: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        image_size: Sequence[int] = (512, 512),
        out_indices: Sequence[int] = (3, 5, 7, 11),
        out_features: Sequence[str] = LEVELS,
        pyramid_norm: str = "SyncBN",
        pyramid_pre_norm: bool = True,
        drop_path_rate: float = 0.1,
        weights: Optional[Dict[str, torch.Tensor]] = None,
        weights_source: str = "",
    ):
        """
        Args:
            embed_dim, depth, num_heads, patch_size, mlp_ratio, qkv_bias: ViT shapes
                (ViT-S/16: 384, 12, 6, 16, 4, True).
            image_size: (H, W) training resolution; the positional embedding is kept at its grid.
            out_indices: the 4 blocks (0-based) feeding res2, res3, res4, res5.
            out_features: subset of res2..res5.
            pyramid_norm: Detectron2 norm inside the pyramid's x4 upsampling branch.
            pyramid_pre_norm: ``GroupNorm(1, embed_dim)`` before each pyramid branch (as the CLIP ViT).
            drop_path_rate: stochastic depth of the last block; block i gets rate * i / (depth - 1).
            weights: timm-layout state dict (classifier entries allowed); None = random init.
            weights_source: file name for messages.
        """
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"ImageNetViT embed_dim {embed_dim} is not divisible by num_heads {num_heads} (MODEL.VIT)")
        self._init_vit(
            embed_dim, depth, patch_size, image_size, out_indices, out_features, pyramid_norm, drop_path_rate
        )
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # over the full depth

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        self.blocks = nn.ModuleList(
            [ViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i]) for i in range(self._used_blocks)]
        )
        self.pyramid = ViTPyramid(self._out_features, embed_dim, pyramid_norm, pre_norm=pyramid_pre_norm)
        self._init_trunk()
        if weights is not None:
            self._load(weights, weights_source or "ViT weights")

    def _init_trunk(self) -> None:
        """Random init of the trunk as timm's ViT (truncated normal 0.02; used without weights)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _load(self, weights: Dict[str, torch.Tensor], source: str) -> None:
        depth = len(self.blocks)
        weights = {k: v for k, v in weights.items() if not (k.startswith("blocks.") and int(k.split(".")[1]) >= depth)}
        pos = weights.get("pos_embed")
        if pos is not None:
            if pos.dim() != 3 or pos.shape[0] != 1:
                raise ValueError(
                    f"ImageNetViT: pos_embed in {source} has shape {tuple(pos.shape)}, expected (1, 1 + N, C)"
                )
            side = int(round((pos.shape[1] - 1) ** 0.5))
            if side * side != pos.shape[1] - 1:
                raise ValueError(
                    f"ImageNetViT: pos_embed in {source} has {pos.shape[1]} rows: expected a class token and a "
                    f"square grid (distilled or register-token ViTs are not supported)"
                )
            weights["pos_embed"] = resize_grid_pos_embed(pos[0], (side, side), self.grid, antialias=True)[None]
            if (side, side) != self.grid:
                logger.info("ImageNetViT: positional embedding resized from %dx%d to %dx%d", side, side, *self.grid)
        load_backbone_weights(
            self, weights, "ImageNetViT", source, new_prefixes=("pyramid.",), ignored_prefixes=_CLASSIFIER_PREFIXES
        )

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        if input_shape.channels != 3:
            raise ValueError(f"ImageNetViT takes 3-channel images, got {input_shape.channels} (MODEL.PIXEL_MEAN)")
        vit = cfg.MODEL.VIT
        warn_unused_freeze_at(cfg, "ImageNetViT", "the ViT trains all its blocks; set it to 0")
        weights = None
        if vit.WEIGHTS:
            weights = read_backbone_weights(
                vit.WEIGHTS,
                "MODEL.VIT.WEIGHTS",
                "ViT-S/16 ImageNet weights in timm's layout: e.g. model.safetensors of the Hugging Face repo "
                "timm/vit_small_patch16_384.augreg_in21k_ft_in1k (Segmenter's ViT-S/16).",
            )
        else:
            logger.warning("MODEL.VIT.WEIGHTS is empty: ImageNetViT is randomly initialized (not the paper's setting)")
        return {
            "embed_dim": vit.EMBED_DIM,
            "depth": vit.DEPTH,
            "num_heads": vit.NUM_HEADS,
            "patch_size": vit.PATCH_SIZE,
            "mlp_ratio": vit.MLP_RATIO,
            "qkv_bias": vit.QKV_BIAS,
            "image_size": tuple(vit.IMAGE_SIZE),
            "out_indices": tuple(vit.OUT_INDICES),
            "out_features": tuple(vit.OUT_FEATURES),
            "pyramid_norm": vit.PYRAMID_NORM,
            "pyramid_pre_norm": vit.PYRAMID_PRE_NORM,
            "drop_path_rate": vit.DROP_PATH_RATE,
            "weights": weights,
            "weights_source": vit.WEIGHTS,
        }

    def _embed_tokens(self, x: torch.Tensor):
        b = x.shape[0]
        x = self.patch_embed.proj(x)  # (B, C, gh, gw)
        gh, gw = x.shape[-2:]
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        pos = resize_grid_pos_embed(self.pos_embed[0], self.grid, (gh, gw), antialias=True)
        return x + pos.to(x.dtype), (gh, gw)

    def _trunk_blocks(self) -> nn.ModuleList:
        return self.blocks
