"""CLIP's modified ResNets (RN50 [3,4,6,3], RN101 [3,4,23,3]) as a Detectron2 backbone.

The modules are open_clip's ``ModifiedResNet`` parts (3-conv stem + avg-pool, bottlenecks with
anti-aliased avg-pool downsampling), held directly under the backbone so parameter names equal the
CLIP weight file's ``visual.*`` names without the prefix (``conv1.weight``, ``layer3.5.bn2.running_var``,
``attnpool.q_proj.weight``...).
"""

import logging
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ..clip.weights import (
    clip_weights_and_arch,
    image_size_pair,
    load_clip_weights,
    resize_grid_pos_embed,
    sub_state_dict,
)
from .freeze import warn_unused_freeze_at

logger = logging.getLogger(__name__)

__all__ = ["CLIPResNet"]

_STAGES = ("res2", "res3", "res4", "res5")
_STEM = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool")
_NORMS = ("FrozenBN", "BN", "SyncBN", "naiveSyncBN")


def _replace_batchnorms(module: nn.Module, norm: str) -> None:
    """Replaces every ``nn.BatchNorm2d`` under ``module`` by Detectron2's ``norm``, keeping the
    affine weights and running statistics."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:  # exactly the plain class: already-converted ones stay
            new = get_norm(norm, child.num_features)
            new.eps = child.eps
            with torch.no_grad():
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(new, attr).copy_(getattr(child, attr))
            if getattr(new, "num_batches_tracked", None) is not None and child.num_batches_tracked is not None:
                new.num_batches_tracked.copy_(child.num_batches_tracked)
            setattr(module, name, new)
        else:
            _replace_batchnorms(child, norm)


@BACKBONE_REGISTRY.register()
class CLIPResNet(Backbone):
    """CLIP ResNet: ``res2..res5`` at strides 4/8/16/32 with ``4w, 8w, 16w, 32w`` channels
    (w = 64 for RN50/RN101: 256/512/1024/2048). ``res5`` is the trunk output before attention
    pooling. Optional output ``attnpool``: CLIP's attention pool applied densely (every res5
    location as a query, DenseCLIP-style), (B, embed_dim, H/32, W/32).
    """

    @configurable
    def __init__(
        self,
        *,
        layers: Sequence[int],
        width: int = 64,
        embed_dim: int = 1024,
        heads: Optional[int] = None,
        image_size: Sequence[int] = (512, 512),
        out_features: Sequence[str] = _STAGES,
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        weights: Optional[Dict[str, torch.Tensor]] = None,
        weights_source: str = "",
    ):
        """
        Args:
            layers: bottleneck blocks per stage, e.g. (3, 4, 6, 3).
            width: stem / res2 base width w.
            embed_dim: CLIP embedding width (attention-pool output).
            heads: attention-pool heads (default ``32 * width // 64``).
            image_size: (H, W) training resolution; the attention-pool positional embedding is
                resized to its (H/32, W/32) grid at load time (and to the input grid at run time).
            out_features: subset of res2..res5 and "attnpool".
            norm: FrozenBN, BN, SyncBN or naiveSyncBN for every batch norm.
            freeze_at: 0 = train all; 1 = freeze the stem; k >= 2 = also res2..res{k} (max 5).
            weights: ``visual.*`` weights without the prefix; None = open_clip's random init.
            weights_source: file name for messages.
        """
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet

        if len(layers) != 4:
            raise ValueError(f"CLIPResNet needs blocks for 4 stages, got {list(layers)}")
        unknown = [f for f in out_features if f not in _STAGES + ("attnpool",)]
        if unknown or not out_features:
            raise ValueError(
                f"CLIPResNet out_features {list(out_features)}: expected a subset of {_STAGES + ('attnpool',)}"
            )
        if norm not in _NORMS:
            raise ValueError(f"CLIPResNet norm '{norm}' (MODEL.CLIP.RESNET.NORM): expected one of {_NORMS}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"CLIPResNet freeze_at {freeze_at} (MODEL.CLIP.RESNET.FREEZE_AT): expected 0..5")
        image_size = image_size_pair(image_size)
        heads = heads or max(1, width * 32 // 64)

        trunk = ModifiedResNet(layers=list(layers), output_dim=embed_dim, heads=heads, image_size=224, width=width)
        self._out_features = list(out_features)
        use_pool = "attnpool" in out_features
        depth = 4 if use_pool else 1 + max(_STAGES.index(f) for f in out_features if f in _STAGES)
        for name in _STEM:
            self.add_module(name, getattr(trunk, name))
        self.stages = [f"layer{i + 1}" for i in range(depth)]
        for name in self.stages:
            self.add_module(name, getattr(trunk, name))
        self.pool_grid = (max(1, image_size[0] // 32), max(1, image_size[1] // 32))
        if use_pool:
            self.attnpool = trunk.attnpool
            grid_cells = trunk.attnpool.positional_embedding.shape[0] - 1
            side = int(round(grid_cells**0.5))
            pos = resize_grid_pos_embed(trunk.attnpool.positional_embedding.data, (side, side), self.pool_grid)
            self.attnpool.positional_embedding = nn.Parameter(pos.clone())
        del trunk

        if weights is not None:
            self._load_clip(weights, weights_source or "CLIP weights")
        _replace_batchnorms(self, norm)
        self._freeze(freeze_at)
        self.freeze_at = freeze_at

        self._out_feature_strides = {f"res{i + 2}": 4 * 2**i for i in range(4)}
        self._out_feature_channels = {f"res{i + 2}": width * 4 * 2**i for i in range(4)}
        self._out_feature_strides["attnpool"] = 32
        self._out_feature_channels["attnpool"] = embed_dim

    def _load_clip(self, weights: Dict[str, torch.Tensor], source: str) -> None:
        keep = tuple(f"{n}." for n in _STEM + tuple(self.stages))
        if hasattr(self, "attnpool"):
            keep += ("attnpool.",)
        unused = sorted({k.split(".")[0] for k in weights if not k.startswith(keep)})
        if unused:
            logger.info("CLIPResNet: not using CLIP weights %s (not requested)", unused)
        weights = {k: v for k, v in weights.items() if k.startswith(keep)}
        key = "attnpool.positional_embedding"
        if key in weights:
            side = int(round((weights[key].shape[0] - 1) ** 0.5))
            weights[key] = resize_grid_pos_embed(weights[key], (side, side), self.pool_grid)
        load_clip_weights(self, weights, "CLIPResNet", source)

    def _freeze(self, freeze_at: int) -> None:
        groups = [list(_STEM)] + [[f"layer{i}"] for i in range(1, 5)]
        for group in groups[:freeze_at]:
            for name in group:
                if not hasattr(self, name):
                    continue
                module = getattr(self, name)
                for p in module.parameters():
                    p.requires_grad_(False)
                setattr(self, name, FrozenBatchNorm2d.convert_frozen_batchnorm(module))

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        if input_shape.channels != 3:
            raise ValueError(f"CLIPResNet takes 3-channel images, got {input_shape.channels} (MODEL.PIXEL_MEAN)")
        clip = cfg.MODEL.CLIP
        warn_unused_freeze_at(cfg, "CLIPResNet", f"use MODEL.CLIP.RESNET.FREEZE_AT (now {clip.RESNET.FREEZE_AT})")
        weights, arch = clip_weights_and_arch(clip.WEIGHTS, clip.MODEL_NAME, clip.DOWNLOAD, "CLIPResNet backbone")
        if arch.is_vit:
            raise ValueError(
                f"MODEL.BACKBONE.NAME is CLIPResNet but the CLIP model ({clip.WEIGHTS or clip.MODEL_NAME}) "
                f"is a ViT: use CLIPViT"
            )
        return dict(
            layers=tuple(arch.vision_layers),
            width=arch.vision_width,
            embed_dim=arch.embed_dim,
            heads=arch.vision_heads,
            image_size=tuple(clip.IMAGE_SIZE),
            out_features=tuple(clip.RESNET.OUT_FEATURES),
            norm=clip.RESNET.NORM,
            freeze_at=clip.RESNET.FREEZE_AT,
            weights=sub_state_dict(weights, "visual.") if weights is not None else None,
            weights_source=clip.WEIGHTS,
        )

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def attention_pool(self, res5: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """CLIP's attention pool on (B, 32w, h, w) with the positional embedding resized to (h, w).

        Returns ``(pooled (B, D), dense (B, D, h, w))``: the mean token's output (CLIP's image
        embedding) and every location's output.
        """
        pool = self.attnpool
        b, c, h, w = res5.shape
        tokens = res5.flatten(2).permute(2, 0, 1)  # (hw, B, C)
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
        pos = resize_grid_pos_embed(pool.positional_embedding, self.pool_grid, (h, w))
        tokens = tokens + pos[:, None, :].to(tokens.dtype)
        out, _ = F.multi_head_attention_forward(
            query=tokens,
            key=tokens,
            value=tokens,
            embed_dim_to_check=c,
            num_heads=pool.num_heads,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            training=self.training,
            need_weights=False,
            use_separate_proj_weight=True,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
        )
        dense = out[1:].permute(1, 2, 0).reshape(b, -1, h, w)
        return out[0], dense

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (B, 3, H, W) normalized images -> {name: (B, C, H/stride, W/stride)}."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"CLIPResNet takes (B, 3, H, W) input, got {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        for name, stage in zip(_STAGES, self.stages):
            x = getattr(self, stage)(x)
            if name in self._out_features:
                outputs[name] = x
        if "attnpool" in self._out_features:
            outputs["attnpool"] = self.attention_pool(x)[1]
        return outputs
