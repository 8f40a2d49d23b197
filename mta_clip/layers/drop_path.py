"""Drop path (stochastic depth) on a residual branch, per sample or per token.

``unit="sample"``: the usual stochastic depth, one keep/drop draw per image of a batch-first
(B, N, C) tensor. ``unit="token"``: one draw per token position, shared by all images, which is
what DenseCLIP's CLIP ViT (used by the MTA-CLIP authors) does: its blocks run on sequence-first
(N, B, C) tokens and timm's ``drop_path`` draws along the first dimension. Kept branches are
scaled by ``1 / (1 - p)``; nothing happens in eval mode or with ``p = 0``.
"""

import torch
from torch import nn

__all__ = ["DropPath", "DROP_PATH_UNITS"]

#: values of ``MODEL.CLIP.VIT.DROP_PATH_UNIT``
DROP_PATH_UNITS = ("token", "sample")


class DropPath(nn.Module):
    """Zeroes a residual branch of batch-first (B, N, C) tokens with probability ``drop_prob``."""

    def __init__(self, drop_prob: float, unit: str = "sample"):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {drop_prob}")
        if unit not in DROP_PATH_UNITS:
            raise ValueError(f"drop path unit must be one of {DROP_PATH_UNITS}, got {unit!r}")
        self.drop_prob = float(drop_prob)
        self.unit = unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        if self.unit == "sample":
            mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        else:  # one draw per token position (dim 1), drawn in the order of a (N, 1, 1) tensor
            if x.dim() != 3:
                raise ValueError(f"token drop path takes (B, N, C) tokens, got shape {tuple(x.shape)}")
            mask = x.new_empty((x.shape[1], 1, 1)).bernoulli_(keep).view(1, x.shape[1], 1)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}, unit={self.unit}"
