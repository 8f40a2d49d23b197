"""Simple feature pyramid of the plain (single-scale) ViT backbones.

A plain ViT gives token maps at one stride (16). The pixel decoder needs ``res2..res5`` at strides
4/8/16/32: four blocks' token maps go through one branch each, res2 = ConvTranspose x2 -> norm ->
GELU -> ConvTranspose x2, res3 = ConvTranspose x2, res4 = identity, res5 = max-pool /2; every
level keeps the ViT width. With ``pre_norm`` every branch starts with ``GroupNorm(1, width)``
(DenseCLIP's CLIP ViT, used by the MTA-CLIP authors; res4 is then that norm alone). Shared by
every ViT backbone of this project (CLIP ViT, ImageNet ViT), as is their base class
:class:`PlainViTBackbone` (argument checks, input check, block loop, pyramid call).
"""

from abc import abstractmethod
from typing import Dict, Sequence, Tuple

import torch
from detectron2.layers import get_norm
from detectron2.modeling import Backbone
from torch import nn

from ..clip.weights import image_size_pair

__all__ = ["LEVELS", "LEVEL_STRIDES", "PlainViTBackbone", "ViTPyramid", "pyramid_branch", "check_pyramid_args"]

LEVELS = ("res2", "res3", "res4", "res5")
LEVEL_STRIDES = {f: 4 * 2**i for i, f in enumerate(LEVELS)}  # res2: 4 ... res5: 32


def pyramid_branch(level: str, width: int, norm: str, pre_norm: bool = False) -> nn.Module:
    """Stride-16 tokens -> stride 4 (x4 up), 8 (x2 up), 16 (identity), 32 (x2 down); with
    ``pre_norm`` a ``GroupNorm(1, width)`` first (parameters ``0.*``, the branch's layers follow)."""
    branch = _branch(level, width, norm)
    if not pre_norm:
        return branch
    layers = list(branch) if isinstance(branch, nn.Sequential) else [] if isinstance(branch, nn.Identity) else [branch]
    return nn.Sequential(nn.GroupNorm(1, width), *layers)


def _branch(level: str, width: int, norm: str) -> nn.Module:
    if level == "res2":
        return nn.Sequential(
            nn.ConvTranspose2d(width, width, kernel_size=2, stride=2),
            get_norm(norm, width),
            nn.GELU(),
            nn.ConvTranspose2d(width, width, kernel_size=2, stride=2),
        )
    if level == "res3":
        return nn.ConvTranspose2d(width, width, kernel_size=2, stride=2)
    if level == "res4":
        return nn.Identity()
    if level == "res5":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    raise ValueError(f"pyramid level '{level}': expected one of {LEVELS}")


def check_pyramid_args(
    owner: str,
    out_indices: Sequence[int],
    layers: int,
    out_features: Sequence[str],
    norm: str,
    width: int,
    indices_key: str,
    norm_key: str,
) -> Dict[str, int]:
    """Checks a ViT backbone's pyramid arguments; returns {level: 0-based block index feeding it}
    for the levels in ``out_features``. ``indices_key`` / ``norm_key`` name the config keys in errors."""
    out_indices = [int(i) for i in out_indices]
    if len(out_indices) != 4 or not all(0 <= i < layers for i in out_indices):
        raise ValueError(
            f"{owner} out_indices {out_indices} ({indices_key}): expected 4 block indices in [0, {layers})"
        )
    unknown = [f for f in out_features if f not in LEVELS]
    if unknown or not out_features:
        raise ValueError(f"{owner} out_features {list(out_features)}: expected a subset of {LEVELS}")
    try:
        get_norm(norm, width)
    except KeyError as e:
        raise ValueError(f"{owner} pyramid norm '{norm}' ({norm_key}) is unknown") from e
    return {f: out_indices[LEVELS.index(f)] for f in out_features}


class ViTPyramid(nn.ModuleDict):
    """One branch per requested level (a ``ModuleDict``, so parameters are named
    ``<level>.<i>.weight`` under the owner's attribute)."""

    def __init__(self, levels: Sequence[str], width: int, norm: str, pre_norm: bool = False):
        super().__init__({f: pyramid_branch(f, width, norm, pre_norm) for f in levels})

    def forward(self, feats: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """feats: {level: (B, width, H/16, W/16)} -> {level: (B, width, H/stride, W/stride)}."""
        return {f: branch(feats[f]) for f, branch in self.items()}


class PlainViTBackbone(Backbone):
    """Base of the plain ViT backbones: the patch tokens after the blocks ``level_index`` names, as
    (B, width, H/p, W/p) maps, turned into ``res2..res5`` by a :class:`ViTPyramid` ``self.pyramid``.

    A subclass sets the config keys named in its errors (:attr:`_CONFIG_NODE`,
    :attr:`_IMAGE_SIZE_KEY`), calls :meth:`_init_vit` first in its ``__init__``, then builds its
    trunk (the blocks up to :attr:`_used_blocks`) and ``self.pyramid``; it implements
    :meth:`_embed_tokens` (images -> tokens for the first block) and :meth:`_trunk_blocks`. Error
    messages name the subclass.
    """

    _CONFIG_NODE: str  # config node of the ViT's keys OUT_INDICES, PYRAMID_NORM, DROP_PATH_RATE (e.g. MODEL.VIT)
    _IMAGE_SIZE_KEY: str  # config key of image_size

    def _init_vit(
        self,
        width: int,
        layers: int,
        patch_size: int,
        image_size: Sequence[int],
        out_indices: Sequence[int],
        out_features: Sequence[str],
        pyramid_norm: str,
        drop_path_rate: float,
    ) -> Tuple[int, int]:
        """Checks the arguments every plain ViT has and sets ``patch_size``, ``grid`` (the patch grid
        of ``image_size``), ``level_index`` and the output features; returns ``image_size`` as (H, W)."""
        owner, key = type(self).__name__, self._CONFIG_NODE
        self.level_index = check_pyramid_args(
            owner,
            out_indices,
            layers,
            out_features,
            pyramid_norm,
            width,
            f"{key}.OUT_INDICES",
            f"{key}.PYRAMID_NORM",
        )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"{owner} drop_path_rate {drop_path_rate} ({key}.DROP_PATH_RATE): expected [0, 1)")
        image_size = image_size_pair(image_size)
        if image_size[0] % patch_size or image_size[1] % patch_size:
            raise ValueError(
                f"{owner} image_size {image_size} ({self._IMAGE_SIZE_KEY}) must be multiples of {patch_size}"
            )
        self.patch_size = patch_size
        self.grid = (image_size[0] // patch_size, image_size[1] // patch_size)
        self._out_features = list(out_features)
        self._out_feature_strides = dict(LEVEL_STRIDES)
        self._out_feature_channels = {f: width for f in LEVELS}
        return image_size

    @property
    def _used_blocks(self) -> int:
        """How many blocks are built: up to the last one feeding the pyramid."""
        return 1 + max(self.level_index.values())

    @abstractmethod
    def _embed_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(B, 3, H, W) images -> ((B, 1 + gh * gw, C) tokens for the first block, class token
        first; (gh, gw), the patch grid, taken from the patch embedding's output shape)."""

    @abstractmethod
    def _trunk_blocks(self) -> nn.ModuleList:
        """The built transformer blocks, in order; each maps (B, N, C) tokens to (B, N, C)."""

    @property
    def size_divisibility(self) -> int:
        """Padding to 2 x patch keeps res5 exactly at stride 32 (forward accepts multiples of the patch)."""
        return 2 * self.patch_size

    def block_features(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        """Patch tokens after the used blocks: {block index: (B, width, H/p, W/p)}."""
        p = self.patch_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(
                f"{type(self).__name__} takes (B, 3, H, W) input with H, W multiples of {p}, got {tuple(x.shape)}"
            )
        b = x.shape[0]
        x, (gh, gw) = self._embed_tokens(x)
        wanted = set(self.level_index.values())
        feats = {}
        for i, block in enumerate(self._trunk_blocks()):
            x = block(x)
            if i in wanted:
                feats[i] = x[:, 1:].transpose(1, 2).reshape(b, -1, gh, gw)
        return feats

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (B, 3, H, W) normalized images -> {res2..res5: (B, width, H/stride, W/stride)}."""
        feats = self.block_features(x)
        return self.pyramid({f: feats[i] for f, i in self.level_index.items()})
