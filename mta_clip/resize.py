"""The test mapper's resize as tensor operations, for graphs that are exported (ONNX, TorchScript).

Detectron2's test mapper resizes with ``ResizeShortestEdge`` (sizes: :func:`shortest_edge_shape`)
and, for uint8 images, PIL's ``Image.resize(..., BILINEAR)``: an anti-aliased triangle filter,
width first then height, each pass in 22-bit fixed point and rounded to uint8.
:func:`pil_bilinear_resize` computes that pass by pass with the same double-precision
coefficients and integer sums, so an exported file sees the pixels ``Predictor`` feeds its model
(bit for bit in PyTorch and ONNX Runtime: all sums are of integers, exact in float64), and the
sizes are symbolic under torch.export (no branch on a size, no ``int()``).
"""

from typing import Tuple

import torch

__all__ = ["pil_bilinear_resize", "shortest_edge_shape"]

PRECISION_BITS = 22  # PIL's fixed-point precision of the 8-bit resampling coefficients (32 - 8 - 2)


def shortest_edge_shape(height, width, min_size: int, max_size: int):
    """Detectron2's ``ResizeShortestEdge.get_output_shape`` in integer arithmetic, so that it stays
    symbolic under torch.export: the short side becomes ``min_size``, unless the long side would
    then exceed ``max_size`` (<= 0: no limit); sides round half up. Works on ints and SymInts
    (``torch.sym_min`` / ``sym_max``). The same sizes as Detectron2's float formula except in exact
    ties that its float division rounds down."""
    short = torch.sym_min(height, width)
    longest = torch.sym_max(height, width)

    def side(n):
        by_short = (2 * min_size * n + short) // (2 * short)
        if max_size <= 0:
            return by_short
        return torch.sym_min(by_short, (2 * max_size * n + longest) // (2 * longest))

    return side(height), side(width)


def _size_tensor(size, like: torch.Tensor) -> torch.Tensor:
    """A float64 scalar tensor of ``size`` (an int or a SymInt: recorded as a size, not a constant)."""
    return torch.ones((), dtype=torch.float64, device=like.device) * size


def pil_bilinear_taps(in_size, out_size, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """PIL's bilinear resampling taps along one axis (``precompute_coeffs`` + ``normalize_coeffs_8bpc``):
    ``(index (out, K) int64 into [0, in), weight (out, K) float64 integers in units of 2**-22)``, K = 2 *
    ceil(support) + 1; taps past the filter's support have weight 0."""
    n_in = _size_tensor(in_size, like)
    scale = n_in / _size_tensor(out_size, like)
    filterscale = scale.clamp_min(1.0)
    support = filterscale  # the triangle filter's support is 1
    inv = 1.0 / filterscale
    num_taps = 2 * torch.sym_max((in_size + out_size - 1) // out_size, 1) + 1
    center = (torch.arange(out_size, dtype=torch.float64, device=like.device) + 0.5) * scale
    first = torch.floor(center - support + 0.5).clamp_min(0)  # C's int() of a value > -1, then max(., 0)
    count = torch.minimum(torch.floor(center + support + 0.5), n_in) - first
    taps = torch.arange(num_taps, dtype=torch.float64, device=like.device)
    t = ((taps[None, :] + first[:, None]) - center[:, None] + 0.5) * inv[None, None]
    w = (1.0 - t.abs()).clamp_min(0.0) * (taps[None, :] < count[:, None])
    total = w.sum(dim=1, keepdim=True)
    k = w / torch.where(total == 0, torch.ones_like(total), total)
    weight = torch.floor(k * float(1 << PRECISION_BITS) + 0.5)
    index = torch.minimum(taps[None, :] + first[:, None], n_in - 1).to(torch.int64)
    return index, weight


def _pass(x: torch.Tensor, out_size) -> torch.Tensor:
    """One PIL resampling pass along the last axis of the float64 image ``x`` (integers 0..255).
    The products and sums are integers below 2**31, exact in float64 in any summation order; the
    division by 2**22 is exact too (integer ops would do, but ONNX has no signed shift, and
    exporters lower integer floor division through float32, which cannot hold 2**31)."""
    in_size = x.shape[-1]
    if torch.jit.is_tracing():  # the tracer gives sizes as tensors; a trace serves one size anyway
        in_size = int(in_size)
    index, weight = pil_bilinear_taps(in_size, out_size, x)
    acc = (x[..., index] * weight).sum(dim=-1)
    return torch.floor((acc + float(1 << (PRECISION_BITS - 1))) / float(1 << PRECISION_BITS)).clamp(0, 255)


def pil_bilinear_resize(image: torch.Tensor, size) -> torch.Tensor:
    """(..., H, W) values 0..255 (rounded to integers first, as a uint8 image holds them) ->
    (..., h, w) float32 equal to PIL's ``Image.resize((w, h), BILINEAR)`` of the uint8 image:
    the width pass, then the height pass, each rounded to 0..255 integers."""
    h, w = size
    x = image.to(torch.float64).round().clamp(0, 255)
    x = _pass(x, w)
    x = _pass(x.transpose(-1, -2), h).transpose(-1, -2)
    return x.to(torch.float32)
