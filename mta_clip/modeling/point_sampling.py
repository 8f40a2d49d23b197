"""Point sampling of mask logits (PointRend / Mask2Former importance sampling).

Coordinates are normalized to ``[0, 1]`` in ``(x, y)`` order: ``(0, 0)`` is the top-left corner of
the top-left pixel, ``(1, 1)`` the bottom-right corner of the bottom-right pixel. With
``align_corners=False`` a point at ``((j + 0.5) / W, (i + 0.5) / H)`` reads pixel ``(i, j)`` exactly,
whatever the map's resolution, so maps of different strides are sampled at the same image points.
"""

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["point_sample", "calculate_uncertainty", "get_uncertain_point_coords_with_randomness"]


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, **kwargs) -> torch.Tensor:
    """Bilinearly samples ``input`` at normalized points (a ``F.grid_sample`` wrapper).

    Args:
        input: (N, C, H, W) maps.
        point_coords: (N, P, 2) or (N, Hg, Wg, 2) ``(x, y)`` coordinates in ``[0, 1]``.
        **kwargs: passed to ``F.grid_sample`` (e.g. ``align_corners=False``, ``mode``).

    Returns:
        (N, C, P) for (N, P, 2) coordinates, else (N, C, Hg, Wg).
    """
    if input.dim() != 4:
        raise ValueError(f"point_sample: expected input of shape (N, C, H, W), got {tuple(input.shape)}")
    if point_coords.shape[-1] != 2 or point_coords.dim() not in (3, 4):
        raise ValueError(
            f"point_sample: expected point_coords of shape (N, P, 2) or (N, Hg, Wg, 2), got {tuple(point_coords.shape)}"
        )
    flat = point_coords.dim() == 3
    grid = point_coords.unsqueeze(2) if flat else point_coords
    # grid_sample reads coordinates in [-1, 1].
    out = F.grid_sample(input, (2.0 * grid - 1.0).to(input.dtype), **kwargs)
    return out.squeeze(3) if flat else out


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of class-agnostic mask logits: ``-|logit|`` (highest at the decision boundary).

    Args:
        logits: (R, 1, ...) logits.

    Returns:
        (R, 1, ...) uncertainty scores.
    """
    if logits.shape[1] != 1:
        raise ValueError(f"calculate_uncertainty: expected one channel, got shape {tuple(logits.shape)}")
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Importance sampling of points on uncertain regions, plus uniform random points.

    Draws ``int(num_points * oversample_ratio)`` uniform random points per map, keeps the
    ``int(importance_sample_ratio * num_points)`` most uncertain of them (uncertainty evaluated on
    the bilinearly sampled logits), and fills the remaining points with fresh uniform random points.
    Call it under ``torch.no_grad()``: the choice of points is not differentiated.

    Args:
        coarse_logits: (R, C, H, W) logits (C = 1 for class-agnostic masks).
        uncertainty_func: maps sampled logits (R, C, P) to uncertainties (R, 1, P).
        num_points: P, points returned per map.
        oversample_ratio: k >= 1, oversampling factor.
        importance_sample_ratio: beta in [0, 1], fraction of points taken by uncertainty.

    Returns:
        (R, P, 2) ``(x, y)`` coordinates in ``[0, 1]``; the uncertain points come first.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_maps = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    candidates = torch.rand(num_maps, num_sampled, 2, device=coarse_logits.device)
    candidate_logits = point_sample(coarse_logits, candidates, align_corners=False)
    uncertainties = uncertainty_func(candidate_logits)  # (R, 1, kP)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    top = torch.topk(uncertainties[:, 0, :], k=num_uncertain, dim=1).indices  # (R, beta*P)
    coords = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        random_coords = torch.rand(num_maps, num_random, 2, device=coarse_logits.device)
        coords = torch.cat([coords, random_coords], dim=1)
    return coords
