"""CLIP's ViT (ViT-B/16) as a Detectron2 backbone with a simple feature pyramid.

Trunk modules are open_clip's ``VisionTransformer`` parts held directly under the backbone, so
names equal the CLIP weight file's ``visual.*`` names without the prefix (``conv1.weight``,
``class_embedding``, ``positional_embedding``, ``ln_pre.*``, ``transformer.resblocks.N.*``).
Blocks after the last one used, ``ln_post`` and ``proj`` are not built.

DenseCLIP's version of this backbone (used by the MTA-CLIP authors for ViT-B/16) differs from
CLIP in four points, each a switch here (defaults: DenseCLIP's): ``GroupNorm(1, C)`` before each
pyramid branch (``pyramid_pre_norm``); the class embedding added a second time to the class
token's positional embedding (``class_embed_twice``); bilinear instead of bicubic resizing of the
positional embedding, at load and at run time (``pos_embed_interpolation``); drop path with rates
``linspace(0, drop_path_rate, layers)`` over the blocks, one draw per token position
(``drop_path_unit="token"``, see ``mta_clip.layers.drop_path``).
"""

import logging
from typing import Dict, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from torch import nn

from ...config import choice
from ...layers.drop_path import DROP_PATH_UNITS, DropPath
from ..clip.weights import clip_weights_and_arch, load_clip_weights, resize_grid_pos_embed, sub_state_dict
from .freeze import warn_unused_freeze_at
from .vit_pyramid import LEVELS, PlainViTBackbone, ViTPyramid

logger = logging.getLogger(__name__)

__all__ = ["CLIPViT"]


@BACKBONE_REGISTRY.register()
class CLIPViT(PlainViTBackbone):
    """CLIP ViT: the patch tokens after blocks ``out_indices`` (default 3, 5, 7, 11; 0-based) as
    (B, width, H/16, W/16) maps, turned into ``res2..res5`` at strides 4/8/16/32 (all ``width``
    channels) by ConvTranspose x4 (with norm + GELU between the two), ConvTranspose x2, identity,
    max-pool /2. Takes any input whose sides are multiples of the patch size.
    """

    _CONFIG_NODE = "MODEL.CLIP.VIT"
    _IMAGE_SIZE_KEY = "MODEL.CLIP.IMAGE_SIZE"

    @configurable
    def __init__(
        self,
        *,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        patch_size: int = 16,
        image_size: Sequence[int] = (512, 512),
        out_indices: Sequence[int] = (3, 5, 7, 11),
        out_features: Sequence[str] = LEVELS,
        pyramid_norm: str = "SyncBN",
        pyramid_pre_norm: bool = True,
        class_embed_twice: bool = True,
        pos_embed_interpolation: str = "bilinear",
        drop_path_rate: float = 0.1,
        drop_path_unit: str = "token",
        weights: Optional[Dict[str, torch.Tensor]] = None,
        weights_source: str = "",
    ):
        """
        Args:
            width, layers, heads, patch_size: transformer shapes (ViT-B/16: 768, 12, 12, 16).
            image_size: (H, W) training resolution; the positional embedding is resized to its
                patch grid at load time (and to the input's grid at run time).
            out_indices: the 4 blocks feeding res2, res3, res4, res5.
            out_features: subset of res2..res5.
            pyramid_norm: Detectron2 norm name inside the x4 upsampling branch.
            pyramid_pre_norm: ``GroupNorm(1, width)`` before each pyramid branch (DenseCLIP).
            class_embed_twice: class token = 2 x class embedding + its positional row (DenseCLIP);
                False: CLIP's class embedding + positional row.
            pos_embed_interpolation: "bilinear" (DenseCLIP) or "bicubic", at load and run time.
            drop_path_rate: drop path of block i is ``drop_path_rate * i / (layers - 1)``.
            drop_path_unit: "token" (DenseCLIP) or "sample", see ``mta_clip.layers.drop_path``.
            weights: ``visual.*`` weights without the prefix; None = open_clip's random init.
            weights_source: file name for messages.
        """
        super().__init__()
        from open_clip.transformer import QuickGELU, VisionTransformer

        image_size = self._init_vit(
            width, layers, patch_size, image_size, out_indices, out_features, pyramid_norm, drop_path_rate
        )
        pos_embed_interpolation = choice(
            ("bilinear", "bicubic"), pos_embed_interpolation, "MODEL.CLIP.VIT.POS_EMBED_INTERPOLATION"
        )
        drop_path_unit = choice(DROP_PATH_UNITS, drop_path_unit, "MODEL.CLIP.VIT.DROP_PATH_UNIT")

        trunk = VisionTransformer(
            image_size=image_size,
            patch_size=patch_size,
            width=width,
            layers=layers,
            heads=heads,
            mlp_ratio=4.0,
            output_dim=width,
            act_layer=QuickGELU,
        )
        if not getattr(trunk.transformer, "batch_first", True):
            raise RuntimeError("CLIPViT calls open_clip's blocks on (B, N, C) tokens: needs batch-first blocks")
        depth = self._used_blocks
        self.conv1 = trunk.conv1
        self.class_embedding = trunk.class_embedding
        self.positional_embedding = trunk.positional_embedding
        self.ln_pre = trunk.ln_pre
        self.transformer = trunk.transformer
        self.transformer.resblocks = self.transformer.resblocks[:depth]
        del trunk
        self.class_embed_twice = bool(class_embed_twice)
        self.pos_embed_interpolation = pos_embed_interpolation
        rates = torch.linspace(0, drop_path_rate, layers).tolist()
        for i, block in enumerate(self.transformer.resblocks):
            if rates[i] > 0:
                if not isinstance(block.ls_1, torch.nn.Identity) or not isinstance(block.ls_2, torch.nn.Identity):
                    raise RuntimeError("CLIPViT drop path replaces open_clip's identity layer scales ls_1 / ls_2")
                # open_clip's block: x + ls_1(attention(ln_1(x))), then x + ls_2(mlp(ln_2(x)))
                block.ls_1 = DropPath(rates[i], drop_path_unit)
                block.ls_2 = DropPath(rates[i], drop_path_unit)
        self.pyramid = ViTPyramid(self._out_features, width, pyramid_norm, pre_norm=pyramid_pre_norm)

        if weights is not None:
            self._load_clip(weights, weights_source or "CLIP weights", depth)

    def _load_clip(self, weights: Dict[str, torch.Tensor], source: str, depth: int) -> None:
        def used(key: str) -> bool:
            if key.startswith("transformer.resblocks."):
                return int(key.split(".")[2]) < depth
            return key.split(".")[0] in ("conv1", "class_embedding", "positional_embedding", "ln_pre")

        unused = sorted(
            {
                k.split(".")[0] if not k.startswith("transformer.") else "transformer.resblocks.>=%d" % depth
                for k in weights
                if not used(k)
            }
        )
        if unused:
            logger.info("CLIPViT: not using CLIP weights %s", unused)
        weights = {k: v for k, v in weights.items() if used(k)}
        key = "positional_embedding"
        if key in weights:
            side = int(round((weights[key].shape[0] - 1) ** 0.5))
            weights[key] = resize_grid_pos_embed(weights[key], (side, side), self.grid, self.pos_embed_interpolation)
        load_clip_weights(self, weights, "CLIPViT", source, new_prefixes=("pyramid.",))

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        if input_shape.channels != 3:
            raise ValueError(f"CLIPViT takes 3-channel images, got {input_shape.channels} (MODEL.PIXEL_MEAN)")
        clip = cfg.MODEL.CLIP
        warn_unused_freeze_at(cfg, "CLIPViT", "the ViT trains all its blocks; set it to 0")
        weights, arch = clip_weights_and_arch(clip.WEIGHTS, clip.MODEL_NAME, clip.DOWNLOAD, "CLIPViT backbone")
        if not arch.is_vit:
            raise ValueError(
                f"MODEL.BACKBONE.NAME is CLIPViT but the CLIP model ({clip.WEIGHTS or clip.MODEL_NAME}) "
                f"is a ResNet: use CLIPResNet"
            )
        return dict(
            width=arch.vision_width,
            layers=int(arch.vision_layers),
            heads=arch.vision_heads,
            patch_size=arch.vision_patch_size,
            image_size=tuple(clip.IMAGE_SIZE),
            out_indices=tuple(clip.VIT.OUT_INDICES),
            out_features=tuple(clip.VIT.OUT_FEATURES),
            pyramid_norm=clip.VIT.PYRAMID_NORM,
            pyramid_pre_norm=clip.VIT.PYRAMID_PRE_NORM,
            class_embed_twice=clip.VIT.CLASS_EMBED_TWICE,
            pos_embed_interpolation=clip.VIT.POS_EMBED_INTERPOLATION,
            drop_path_rate=clip.VIT.DROP_PATH_RATE,
            drop_path_unit=clip.VIT.DROP_PATH_UNIT,
            weights=sub_state_dict(weights, "visual.") if weights is not None else None,
            weights_source=clip.WEIGHTS,
        )

    def _embed_tokens(self, x: torch.Tensor):
        b = x.shape[0]
        x = self.conv1(x)  # (B, C, gh, gw)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, C)
        cls = self.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = resize_grid_pos_embed(self.positional_embedding, self.grid, (gh, gw), self.pos_embed_interpolation)
        if self.class_embed_twice:  # DenseCLIP: the class row of the positional embedding + class embedding
            pos = torch.cat([pos[:1] + self.class_embedding[None], pos[1:]], dim=0)
        return self.ln_pre(x + pos.to(x.dtype)), (gh, gw)

    def _trunk_blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks
