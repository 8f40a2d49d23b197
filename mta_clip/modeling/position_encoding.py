"""Sine positional encoding of 2-D feature maps (DETR / Mask2Former convention)."""

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine encoding: half the channels encode y, half x; no padding mask.

    Coordinates are the cumulative row/column index (1..H, 1..W), optionally normalized by the
    last index and scaled to [0, ``scale``].
    """

    def __init__(
        self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True, scale: float = 2 * math.pi
    ):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, 2 * num_pos_feats, H, W) in float32."""
        b, _, h, w = x.shape
        ys = torch.arange(1, h + 1, dtype=torch.float32, device=x.device).view(1, h, 1).expand(b, h, w)
        xs = torch.arange(1, w + 1, dtype=torch.float32, device=x.device).view(1, 1, w).expand(b, h, w)
        if self.normalize:
            eps = 1e-6
            ys = ys / (ys[:, -1:, :] + eps) * self.scale
            xs = xs / (xs[:, :, -1:] + eps) * self.scale
        idx = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        freqs = self.temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / self.num_pos_feats)
        px = xs[..., None] / freqs
        py = ys[..., None] / freqs
        # interleave sin (even channels) and cos (odd channels)
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)
