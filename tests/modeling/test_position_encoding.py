"""Sine positional encoding (mta_clip.modeling.position_encoding) against the DETR formula, by loops."""

import math

import pytest
import torch

from mta_clip.modeling.position_encoding import PositionEmbeddingSine


@pytest.mark.parametrize("normalize", [True, False])
def test_equals_the_formula(normalize):
    feats, h, w, temperature = 6, 3, 4, 10000.0
    pe = PositionEmbeddingSine(feats, temperature=temperature, normalize=normalize)
    out = pe(torch.zeros(2, 5, h, w))
    assert out.shape == (2, 2 * feats, h, w) and out.dtype == torch.float32
    for y in range(h):
        for x in range(w):
            coords = {"y": y + 1.0, "x": x + 1.0}
            if normalize:
                coords = {"y": coords["y"] / (h + 1e-6) * 2 * math.pi, "x": coords["x"] / (w + 1e-6) * 2 * math.pi}
            for half, axis in enumerate(("y", "x")):  # y channels first, then x
                for i in range(feats):
                    angle = coords[axis] / temperature ** (2 * (i // 2) / feats)
                    expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
                    assert out[1, half * feats + i, y, x].item() == pytest.approx(expected, abs=1e-5)
