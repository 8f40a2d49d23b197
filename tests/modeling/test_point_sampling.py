"""Point sampling (mta_clip.modeling.point_sampling) against a direct bilinear formula."""

import pytest
import torch

from mta_clip.modeling.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from tests.modeling.conftest import bilinear_reference as _bilinear


def test_point_sample_is_bilinear_with_zero_padding():
    torch.manual_seed(0)
    img = torch.randn(2, 3, 5, 7)
    coords = torch.rand(2, 9, 2) * 1.2 - 0.1  # a few points outside [0, 1]
    out = point_sample(img, coords, align_corners=False)
    assert out.shape == (2, 3, 9)
    for n in range(2):
        for c in range(3):
            for p in range(9):
                x, y = coords[n, p].tolist()
                assert out[n, c, p].item() == pytest.approx(_bilinear(img[n, c], x, y), abs=1e-5)


def test_point_sample_grid_shape():
    img = torch.randn(1, 2, 4, 4)
    assert point_sample(img, torch.rand(1, 3, 5, 2), align_corners=False).shape == (1, 2, 3, 5)


def test_uncertain_points_are_the_most_uncertain_candidates():
    logits = torch.randn(3, 1, 6, 6) * 3
    num_points, k, beta = 20, 3.0, 0.75
    torch.manual_seed(7)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, num_points, k, beta)
    assert coords.shape == (3, num_points, 2)
    assert bool(((coords >= 0) & (coords <= 1)).all())
    torch.manual_seed(7)
    candidates = torch.rand(3, int(num_points * k), 2)
    fresh = torch.rand(3, num_points - int(beta * num_points), 2)
    n_unc = int(beta * num_points)
    for r in range(3):
        unc = [-abs(_bilinear(logits[r, 0], x, y)) for x, y in candidates[r].tolist()]
        order = sorted(range(len(unc)), key=lambda i: -unc[i])
        expected = candidates[r][order[:n_unc]]
        got = coords[r, :n_unc]
        # the same set of points (topk order may differ for near-ties only)
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, expected.tolist()))
        torch.testing.assert_close(coords[r, n_unc:], fresh[r])


def test_importance_ratio_extremes():
    logits = torch.randn(2, 1, 5, 5)
    torch.manual_seed(3)
    all_random = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 10, 2.0, 0.0)
    torch.manual_seed(3)
    torch.rand(2, 20, 2)
    torch.testing.assert_close(all_random, torch.rand(2, 10, 2))
    all_unc = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 10, 2.0, 1.0)
    assert all_unc.shape == (2, 10, 2)
