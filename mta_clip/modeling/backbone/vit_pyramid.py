"""Simple feature pyramid of the plain (single-scale) ViT backbones.

A plain ViT gives token maps at one stride (16). The pixel decoder needs ``res2..res5`` at strides
4/8/16/32: four blocks' token maps go through one branch each, res2 = ConvTranspose x2 -> norm ->
GELU -> ConvTranspose x2, res3 = ConvTranspose x2, res4 = identity, res5 = max-pool /2; every
level keeps the ViT width. With ``pre_norm`` every branch starts with ``GroupNorm(1, width)``
(DenseCLIP's CLIP ViT, used by the MTA-CLIP authors; res4 is then that norm alone). Shared by
every ViT backbone of this project (CLIP ViT, ImageNet ViT).
"""

from typing import Dict, Sequence

import torch
from detectron2.layers import get_norm
from torch import nn

__all__ = ["LEVELS", "LEVEL_STRIDES", "ViTPyramid", "pyramid_branch", "check_pyramid_args"]

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
