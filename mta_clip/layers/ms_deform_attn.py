"""Multi-scale deformable attention (Deformable DETR), the core of the pixel decoder.

``multi_scale_deformable_attention`` is the only entry point the models use. It validates the
inputs and dispatches:

- CUDA tensors -> the CUDA kernels of ``mta_clip._C`` when the extension was built with CUDA;
- CPU tensors -> the C++ CPU kernel of ``mta_clip._C`` (measured about 5x faster than the
  PyTorch path in forward + backward at the ADE20k shapes, see docs/ms_deform_attn.md);
- otherwise (extension missing, built without CUDA, other devices, more than ``_C.MAX_LEVELS``
  levels) -> ``ms_deform_attn_pytorch``, the exact ``grid_sample`` implementation;
- while a graph is being recorded (``torch.jit.trace``, ``torch.export`` / ONNX export, see
  ``graph_capture_active``) -> ``ms_deform_attn_pytorch``, so exported files hold plain operators.

The compiled op computes in float32 or float64. float16 / bfloat16 inputs (e.g. under autocast)
are computed in float32 on every path and the result is float32.
"""

import logging
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

try:
    from mta_clip import _C
except ImportError as _exc:  # not built (e.g. no compiler at install time): PyTorch path only
    _C = None
    _C_IMPORT_ERROR: Optional[str] = f"{type(_exc).__name__}: {_exc}"
else:
    _C_IMPORT_ERROR = None

__all__ = [
    "multi_scale_deformable_attention",
    "ms_deform_attn_pytorch",
    "ms_deform_attn_compiled",
    "ms_deform_attn_op_available",
    "ms_deform_attn_op_import_error",
    "graph_capture_active",
]

logger = logging.getLogger(__name__)

# CPU tensors go to the C++ CPU kernel when it is built (it beat the PyTorch path on CPU; the
# figures are in docs/ms_deform_attn.md). Set to False to keep CPU work on the PyTorch path.
USE_COMPILED_ON_CPU = True

_warned_cuda_fallback = False


def graph_capture_active() -> bool:
    """Whether ``torch.jit.trace``, ``torch.export`` or the ONNX exporter is recording a graph."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """PyTorch path: bilinear sampling with ``grid_sample`` (zero padding, align_corners=False).

    Args:
        value: (B, S, H, D) with S = sum_l H_l * W_l.
        spatial_shapes: (L, 2) int64 (H_l, W_l), or a list of L (H_l, W_l) pairs (sizes stay
            symbolic under ``torch.export``, where reading a tensor's values is not allowed).
        level_start_index: (L,) start of each level in S (unused here; levels are split by shape).
        sampling_locations: (B, Q, H, L, P, 2) normalized (x, y) in [0, 1].
        attention_weights: (B, Q, H, L, P).
    Returns:
        (B, Q, H * D).
    """
    b, _, n_heads, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    levels = spatial_shapes.tolist() if isinstance(spatial_shapes, torch.Tensor) else list(spatial_shapes)
    value_levels = value.split([h * w for h, w in levels], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(levels):
        # (B, H_l*W_l, heads, D) -> (B*heads, D, H_l, W_l)
        v = value_levels[lvl].flatten(2).transpose(1, 2).reshape(b * n_heads, d, h, w)
        # (B, Q, heads, P, 2) -> (B*heads, Q, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B*heads, D, Q, L, P) weighted by (B*heads, 1, Q, L, P)
    stacked = torch.stack(sampled, dim=-2)
    weights = attention_weights.transpose(1, 2).reshape(b * n_heads, 1, q, n_levels, n_points)
    out = (stacked * weights).sum(dim=(-1, -2))  # (B*heads, D, Q)
    return out.view(b, n_heads * d, q).transpose(1, 2).contiguous()


def ms_deform_attn_op_import_error() -> Optional[str]:
    """Why ``mta_clip._C`` could not be imported, or None if it loaded."""
    return _C_IMPORT_ERROR


def ms_deform_attn_op_available(device="cpu") -> bool:
    """Whether the compiled op can run on tensors of ``device`` ("cpu", "cuda", "cuda:1", ...)."""
    device = torch.device(device)
    if _C is None:
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return bool(_C.with_cuda()) and torch.cuda.is_available()
    return False


class _MSDeformAttnFunction(torch.autograd.Function):
    """Autograd wrapper of ``mta_clip._C`` (CPU or CUDA kernels, chosen by the tensors' device)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return _C.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = _C.ms_deform_attn_backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output.contiguous(),
        )
        return grad_value, None, None, grad_locations, grad_weights


def _read_levels(spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> List[Tuple[int, int]]:
    """Checks the level tensors and returns [(H_l, W_l)] (one host transfer if on a device)."""
    if not isinstance(spatial_shapes, torch.Tensor) or spatial_shapes.dtype != torch.int64:
        raise TypeError(
            f"spatial_shapes must be an int64 tensor of shape (L, 2), got {_describe(spatial_shapes)}"
        )
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.shape[0] < 1:
        raise ValueError(
            f"spatial_shapes must have shape (L, 2) with L >= 1, got {tuple(spatial_shapes.shape)}"
        )
    n_levels = spatial_shapes.shape[0]
    if not isinstance(level_start_index, torch.Tensor) or level_start_index.dtype != torch.int64:
        raise TypeError(
            f"level_start_index must be an int64 tensor of shape ({n_levels},), got {_describe(level_start_index)}"
        )
    if tuple(level_start_index.shape) != (n_levels,):
        raise ValueError(
            f"level_start_index must have shape ({n_levels},), got {tuple(level_start_index.shape)}"
        )
    if spatial_shapes.device == level_start_index.device:
        flat = torch.cat([spatial_shapes.reshape(-1), level_start_index]).tolist()
        shapes_flat, starts = flat[: 2 * n_levels], flat[2 * n_levels :]
    else:
        shapes_flat, starts = spatial_shapes.reshape(-1).tolist(), level_start_index.tolist()
    levels = [(shapes_flat[2 * i], shapes_flat[2 * i + 1]) for i in range(n_levels)]
    total = 0
    for lvl, ((h, w), start) in enumerate(zip(levels, starts)):
        if h < 1 or w < 1:
            raise ValueError(f"spatial_shapes[{lvl}] is ({h}, {w}); both sizes must be >= 1")
        if start != total:
            raise ValueError(
                f"level_start_index[{lvl}] is {start} but spatial_shapes put level {lvl} at {total} "
                f"(expected the exclusive cumulative sum of H_l * W_l)"
            )
        total += h * w
    return levels


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _prepare(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Validates the inputs; returns (value, locations, weights) in the compute dtype, the level
    tensors on the CPU, and the list of levels."""
    for name, t in (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {_describe(t)}")
    if value.dim() != 4:
        raise ValueError(f"value must have shape (B, S, H, D), got {tuple(value.shape)}")
    levels = _read_levels(spatial_shapes, level_start_index)
    b, s, n_heads, d = value.shape
    n_levels = len(levels)
    if s != sum(h * w for h, w in levels):
        raise ValueError(
            f"value has S={s} positions but spatial_shapes {levels} sum to {sum(h * w for h, w in levels)}"
        )
    if d < 1:
        raise ValueError(f"value has D={d} channels; expected at least 1")
    loc_shape = tuple(sampling_locations.shape)
    if (
        sampling_locations.dim() != 6
        or loc_shape[0] != b
        or loc_shape[2] != n_heads
        or loc_shape[3] != n_levels
        or loc_shape[5] != 2
    ):
        raise ValueError(
            f"sampling_locations must have shape (B={b}, Q, H={n_heads}, L={n_levels}, P, 2), got {loc_shape}"
        )
    expected_w = loc_shape[:5]
    if tuple(attention_weights.shape) != expected_w:
        raise ValueError(
            f"attention_weights must have shape {expected_w} (B, Q, H, L, P), got {tuple(attention_weights.shape)}"
        )
    for name, t in (("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if t.device != value.device:
            raise ValueError(f"{name} is on {t.device} but value is on {value.device}")
    dtype = torch.promote_types(
        torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype
    )
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32  # float16 / bfloat16: computed in float32 (precision-sensitive sampling)
    value, sampling_locations, attention_weights = (
        t.to(dtype).contiguous() for t in (value, sampling_locations, attention_weights)
    )
    shapes_cpu = torch.tensor(levels, dtype=torch.int64).reshape(n_levels, 2)
    starts_cpu = torch.zeros(n_levels, dtype=torch.int64)
    if n_levels > 1:
        starts_cpu[1:] = torch.cumsum(shapes_cpu[:, 0] * shapes_cpu[:, 1], 0)[:-1]
    return value, shapes_cpu, starts_cpu, sampling_locations, attention_weights, levels


def ms_deform_attn_compiled(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The compiled op (C++ CPU or CUDA kernels by device), differentiable; same shapes as
    ``ms_deform_attn_pytorch``. Raises RuntimeError if ``mta_clip._C`` cannot serve the device."""
    value, shapes, starts, locations, weights, levels = _prepare(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    reason = _compiled_unavailable_reason(value.device, len(levels))
    if reason is not None:
        raise RuntimeError(f"the compiled deformable attention op cannot run: {reason}")
    return _MSDeformAttnFunction.apply(value, shapes, starts, locations, weights)


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention; see ``ms_deform_attn_pytorch`` for shapes.

    Dispatches to the compiled op (CUDA kernels for CUDA tensors, the C++ kernel for CPU tensors
    when ``USE_COMPILED_ON_CPU``) or to the PyTorch path; see the module docstring. Passing
    ``spatial_shapes`` / ``level_start_index`` as CPU tensors avoids a device-to-host copy.
    """
    global _warned_cuda_fallback
    if graph_capture_active():  # the compiled op cannot be recorded; shapes may be a list here
        return ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    value, shapes, starts, locations, weights, levels = _prepare(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    device = value.device
    reason = _compiled_unavailable_reason(device, len(levels))
    if reason is None and (device.type == "cuda" or USE_COMPILED_ON_CPU):
        return _MSDeformAttnFunction.apply(value, shapes, starts, locations, weights)
    if device.type == "cuda" and not _warned_cuda_fallback:
        _warned_cuda_fallback = True
        logger.warning("multi_scale_deformable_attention: using the slower PyTorch path on CUDA (%s)", reason)
    return ms_deform_attn_pytorch(value, shapes, starts, locations, weights)


def _compiled_unavailable_reason(device: torch.device, n_levels: int) -> Optional[str]:
    """None if the compiled op can serve ``device`` and ``n_levels``, else why not."""
    if _C is None:
        return f"mta_clip._C not importable: {_C_IMPORT_ERROR}"
    if not ms_deform_attn_op_available(device):
        return f"mta_clip._C has no kernels usable on {device} (with_cuda={_C.with_cuda()})"
    if n_levels > _C.MAX_LEVELS:
        return f"{n_levels} levels exceed the compiled op's limit of {_C.MAX_LEVELS}"
    return None
