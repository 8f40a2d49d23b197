"""Multi-scale deformable attention (Deformable DETR), the core of the pixel decoder.

``multi_scale_deformable_attention`` is the only entry point the models use. It validates the
inputs and dispatches:

- CUDA tensors -> the CUDA kernels of ``mta_clip._C`` when the extension was built with CUDA and
  a kernel can launch on that device (checked once per device);
- CPU tensors -> the C++ CPU kernel of ``mta_clip._C`` (faster than the PyTorch path in
  forward + backward at the ADE20k shapes, see docs/ms_deform_attn.md);
- otherwise (extension missing, built without CUDA, no kernel image for the GPU, other devices,
  more than ``_C.MAX_LEVELS`` levels, D too wide for the CUDA forward) -> ``ms_deform_attn_pytorch``,
  the exact ``grid_sample`` implementation. A CUDA fallback is logged once as a warning;
- while ``torch.jit.trace`` or the ONNX exporter records a graph (``graph_capture_active``) ->
  ``ms_deform_attn_pytorch``: ONNX / TorchScript files hold plain operators that ONNX Runtime and
  ``torch.jit.load`` run (plain ``torch.export`` keeps the custom op);
- CUDA training under ``torch.use_deterministic_algorithms(True)`` (``value`` needs a gradient)
  -> ``ms_deform_attn_pytorch_gather``, whose backward is deterministic there.

The compiled kernels are the PyTorch custom op ``torch.ops.mta_clip.ms_deform_attn`` (with a
fake implementation and registered autograd), which takes the level sizes as host integers:
nothing is read back from the device, and the op traces under ``torch.compile(fullgraph=True)``
and ``torch.export``. Pass ``spatial_shapes`` as a list of ``(H_l, W_l)`` integer pairs to get
that; (L, 2) tensors are still accepted and read once (a device-to-host copy if on a device).

The compiled op computes in float32 or float64. float16 / bfloat16 inputs (e.g. under autocast)
are computed in float32 on every path and the result is float32.
"""

import logging
import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

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
    "ms_deform_attn_pytorch_gather",
    "ms_deform_attn_compiled",
    "ms_deform_attn_op_available",
    "ms_deform_attn_op_import_error",
    "graph_capture_active",
]

logger = logging.getLogger(__name__)

# CPU tensors go to the C++ CPU kernel when it is built (it beat the PyTorch path on CPU; the
# figures are in docs/ms_deform_attn.md). Set to False to keep CPU work on the PyTorch path.
USE_COMPILED_ON_CPU = True

# Level sizes: a list of (H_l, W_l) integer pairs, or an int64 tensor of shape (L, 2).
SpatialShapes = Union[Sequence[Tuple[int, int]], torch.Tensor]
LevelStarts = Union[Sequence[int], torch.Tensor, None]

# CUDA device index -> None if the kernels can launch there, else why not (filled on first use).
_cuda_launch_errors: Dict[int, Optional[str]] = {}
# (device, reason) pairs already logged, so every fallback is reported once.
_warned_fallbacks = set()


# ---------------------------------------------------------------------------- level sizes


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _is_int(x) -> bool:
    return isinstance(x, (numbers.Integral, torch.SymInt)) and not isinstance(x, bool)


def _host_int(v):
    """Python ints as they are (SymInts too); numpy integers and the 0-d integer tensors that
    ``x.shape[i]`` gives under ``torch.jit.trace`` become ints (a trace bakes them in)."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point() and v.dtype != torch.bool:
        return int(v)
    return v


def _level_sizes(spatial_shapes: SpatialShapes, level_start_index: LevelStarts) -> List[Tuple[int, int]]:
    """Checks the level description and returns [(H_l, W_l)] as integers.

    ``spatial_shapes`` given as integer pairs is used as is (no tensor is read); as an (L, 2) int64
    tensor it is read once, together with ``level_start_index`` if that is a tensor on the same
    device. ``level_start_index`` may be None; otherwise it must equal the exclusive cumulative
    sum of H_l * W_l.
    """
    if isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dtype != torch.int64:
            raise TypeError(
                f"spatial_shapes must be an int64 tensor of shape (L, 2) or a list of (H, W) pairs, "
                f"got {_describe(spatial_shapes)}"
            )
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.shape[0] < 1:
            raise ValueError(f"spatial_shapes must have shape (L, 2) with L >= 1, got {tuple(spatial_shapes.shape)}")
        n_levels = spatial_shapes.shape[0]
        _check_start_tensor(level_start_index, n_levels)
        if isinstance(level_start_index, torch.Tensor) and level_start_index.device == spatial_shapes.device:
            flat = torch.cat([spatial_shapes.reshape(-1), level_start_index]).tolist()
            shapes_flat, starts = flat[: 2 * n_levels], flat[2 * n_levels :]
        else:
            shapes_flat = spatial_shapes.reshape(-1).tolist()
            starts = level_start_index.tolist() if isinstance(level_start_index, torch.Tensor) else level_start_index
        levels = [(shapes_flat[2 * i], shapes_flat[2 * i + 1]) for i in range(n_levels)]
    else:
        try:
            levels = [tuple(_host_int(v) for v in pair) for pair in spatial_shapes]
        except TypeError:
            raise TypeError(
                f"spatial_shapes must be a list of (H, W) integer pairs or an int64 (L, 2) tensor, "
                f"got {_describe(spatial_shapes)}"
            ) from None
        if not levels or any(len(pair) != 2 or not all(_is_int(v) for v in pair) for pair in levels):
            raise ValueError(f"spatial_shapes must be a non-empty list of (H, W) integer pairs, got {spatial_shapes!r}")
        if level_start_index is not None and not isinstance(level_start_index, torch.Tensor):
            level_start_index = [_host_int(v) for v in level_start_index]
        _check_start_tensor(level_start_index, len(levels))
        starts = level_start_index.tolist() if isinstance(level_start_index, torch.Tensor) else level_start_index
    total = 0
    for lvl, (h, w) in enumerate(levels):
        if h < 1 or w < 1:
            raise ValueError(f"spatial_shapes[{lvl}] is ({h}, {w}); both sizes must be >= 1")
        if starts is not None and starts[lvl] != total:
            raise ValueError(
                f"level_start_index[{lvl}] is {starts[lvl]} but spatial_shapes put level {lvl} at {total} "
                f"(expected the exclusive cumulative sum of H_l * W_l)"
            )
        total = total + h * w
    return levels


def _check_start_tensor(level_start_index, n_levels: int) -> None:
    if level_start_index is None:
        return
    if isinstance(level_start_index, torch.Tensor):
        if level_start_index.dtype != torch.int64:
            raise TypeError(
                f"level_start_index must be an int64 tensor of shape ({n_levels},), got {_describe(level_start_index)}"
            )
        if tuple(level_start_index.shape) != (n_levels,):
            raise ValueError(f"level_start_index must have shape ({n_levels},), got {tuple(level_start_index.shape)}")
    elif len(level_start_index) != n_levels or not all(_is_int(v) for v in level_start_index):
        raise ValueError(f"level_start_index must hold {n_levels} integers, got {level_start_index!r}")


def _flat_sizes(levels: List[Tuple[int, int]]) -> List[int]:
    return [v for pair in levels for v in pair]


# ---------------------------------------------------------------------------- PyTorch path


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: LevelStarts,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """PyTorch path: bilinear sampling with ``grid_sample`` (zero padding, align_corners=False).

    Args:
        value: (B, S, H, D) with S = sum_l H_l * W_l.
        spatial_shapes: [(H_l, W_l)] integer pairs, or an (L, 2) int64 tensor.
        level_start_index: (L,) start of each level in S, or None (levels are split by shape).
        sampling_locations: (B, Q, H, L, P, 2) normalized (x, y) in [0, 1].
        attention_weights: (B, Q, H, L, P).
    Returns:
        (B, Q, H * D).
    """
    levels = _level_sizes(spatial_shapes, level_start_index)
    b, _, n_heads, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
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


def ms_deform_attn_pytorch_gather(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: LevelStarts,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """PyTorch path built on ``torch.gather`` (same arguments and numbers as
    ``ms_deform_attn_pytorch``). Its backward is a ``scatter_add``, which CUDA runs
    deterministically under ``torch.use_deterministic_algorithms(True)`` (``grid_sample``'s CUDA
    backward and the compiled op's ``grad_value`` atomics do not), so the dispatch uses it for
    CUDA training in deterministic mode. Slower and larger than the other paths."""
    levels = _level_sizes(spatial_shapes, level_start_index)
    b, _, n_heads, d = value.shape
    _, q, _, _, n_points, _ = sampling_locations.shape
    v = value.permute(0, 2, 1, 3)  # (B, heads, S, D)
    out = value.new_zeros(b, n_heads, q, d)
    start = 0
    for lvl, (h, w) in enumerate(levels):
        loc = sampling_locations[:, :, :, lvl].transpose(1, 2)  # (B, heads, Q, P, 2)
        attn = attention_weights[:, :, :, lvl].transpose(1, 2)  # (B, heads, Q, P)
        x = loc[..., 0] * w - 0.5
        y = loc[..., 1] * h - 0.5
        # Points with no corner on the map (NaN / inf included) are moved to a finite spot
        # outside it: no contribution and no gradient, as in the kernels.
        inside = (x >= -1) & (x < w) & (y >= -1) & (y < h)
        x = torch.where(inside, x, torch.full_like(x, -2.0))
        y = torch.where(inside, y, torch.full_like(y, -2.0))
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        corners = ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx))
        for dy, dx, bilinear in corners:
            cx, cy = x0 + dx, y0 + dy
            valid = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            index = start + (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long()  # (B, heads, Q, P)
            coef = attn * bilinear * valid.to(attn.dtype)
            gathered = torch.gather(v, 2, index.reshape(b, n_heads, q * n_points, 1).expand(-1, -1, -1, d))
            out = out + (gathered.view(b, n_heads, q, n_points, d) * coef[..., None]).sum(3)
        start = start + h * w
    return out.permute(0, 2, 1, 3).reshape(b, q, n_heads * d)


# ---------------------------------------------------------------------------- custom op


def _require_C():
    if _C is None:
        raise RuntimeError(f"the compiled deformable attention op is not built: {_C_IMPORT_ERROR}")
    return _C


@torch.library.custom_op("mta_clip::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(
    value: torch.Tensor,
    level_sizes: List[int],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Compiled forward. value (B, S, H, D), level_sizes [H_0, W_0, H_1, W_1, ...],
    sampling_locations (B, Q, H, L, P, 2), attention_weights (B, Q, H, L, P), all contiguous and
    of one dtype (float32 / float64) -> (B, Q, H * D)."""
    return _require_C().ms_deform_attn_forward(value, level_sizes, sampling_locations, attention_weights)


@_ms_deform_attn_op.register_fake
def _ms_deform_attn_fake(value, level_sizes, sampling_locations, attention_weights):
    _check_op_shapes(value, level_sizes, sampling_locations, attention_weights)
    b, _, n_heads, d = value.shape
    return value.new_empty((b, sampling_locations.shape[1], n_heads * d))


@torch.library.custom_op("mta_clip::ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward_op(
    value: torch.Tensor,
    level_sizes: List[int],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    grad_output: torch.Tensor,
    grad_value: bool,
    grad_loc_attn: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compiled backward -> (grad_value, grad_sampling_locations, grad_attention_weights). A
    gradient that is not requested is not computed and comes back as an empty (0,) tensor."""
    grads = _require_C().ms_deform_attn_backward(
        value, level_sizes, sampling_locations, attention_weights, grad_output, grad_value, grad_loc_attn
    )
    return tuple(g if g is not None else value.new_empty(0) for g in grads)


@_ms_deform_attn_backward_op.register_fake
def _ms_deform_attn_backward_fake(
    value, level_sizes, sampling_locations, attention_weights, grad_output, grad_value, grad_loc_attn
):
    _check_op_shapes(value, level_sizes, sampling_locations, attention_weights)
    return (
        torch.empty_like(value) if grad_value else value.new_empty(0),
        torch.empty_like(sampling_locations) if grad_loc_attn else value.new_empty(0),
        torch.empty_like(attention_weights) if grad_loc_attn else value.new_empty(0),
    )


def _check_op_shapes(value, level_sizes, sampling_locations, attention_weights) -> None:
    """Shape checks of the fake implementations (the real kernels check the same in C++)."""
    torch._check(len(level_sizes) % 2 == 0, lambda: f"level_sizes must hold (H, W) pairs, got {level_sizes}")
    n_levels = len(level_sizes) // 2
    torch._check(value.dim() == 4, lambda: f"value must be (B, S, H, D), got {tuple(value.shape)}")
    total = 0
    for i in range(n_levels):
        total = total + level_sizes[2 * i] * level_sizes[2 * i + 1]
    torch._check(value.shape[1] == total, lambda: "value's S must equal the sum of the level sizes")
    b, _, n_heads, _ = value.shape
    torch._check(
        sampling_locations.dim() == 6
        and sampling_locations.shape[0] == b
        and sampling_locations.shape[2] == n_heads
        and sampling_locations.shape[3] == n_levels
        and sampling_locations.shape[5] == 2,
        lambda: f"sampling_locations must be (B, Q, H, L, P, 2), got {tuple(sampling_locations.shape)}",
    )
    torch._check(
        tuple(attention_weights.shape) == tuple(sampling_locations.shape[:5]),
        lambda: f"attention_weights must be (B, Q, H, L, P), got {tuple(attention_weights.shape)}",
    )
    torch._check(
        value.dtype == sampling_locations.dtype == attention_weights.dtype,
        lambda: "value, sampling_locations and attention_weights must share one dtype",
    )


def _setup_context(ctx, inputs, output) -> None:
    value, level_sizes, sampling_locations, attention_weights = inputs
    ctx.save_for_backward(value, sampling_locations, attention_weights)
    ctx.level_sizes = level_sizes


def _backward(ctx, grad_output):
    value, sampling_locations, attention_weights = ctx.saved_tensors
    need_value, _, need_loc, need_attn = ctx.needs_input_grad
    if not (need_value or need_loc or need_attn):
        return None, None, None, None
    grad_value, grad_loc, grad_attn = _ms_deform_attn_backward_op(
        value,
        ctx.level_sizes,
        sampling_locations,
        attention_weights,
        grad_output.contiguous(),
        need_value,
        need_loc or need_attn,
    )
    return (
        grad_value if need_value else None,
        None,
        grad_loc if need_loc else None,
        grad_attn if need_attn else None,
    )


_ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------- availability


def ms_deform_attn_op_import_error() -> Optional[str]:
    """Why ``mta_clip._C`` could not be imported, or None if it loaded."""
    return _C_IMPORT_ERROR


def _cuda_launch_error(index: int) -> Optional[str]:
    """None if the CUDA kernels can launch on cuda:``index``, else why not; asked once per device."""
    if index not in _cuda_launch_errors:
        error = _C.cuda_launch_error(index)
        _cuda_launch_errors[index] = error or None
    return _cuda_launch_errors[index]


def _device_unavailable_reason(device: torch.device) -> Optional[str]:
    """None if the compiled op can run on ``device``, else why not."""
    if _C is None:
        return f"mta_clip._C not importable: {_C_IMPORT_ERROR}"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"mta_clip._C has no kernels for {device.type} tensors"
    if not _C.with_cuda():
        return "mta_clip._C was built without CUDA kernels"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    index = device.index if device.index is not None else torch.cuda.current_device()
    error = _cuda_launch_error(index)
    if error is not None:
        return f"its CUDA kernels cannot launch on cuda:{index}: {error}"
    return None


def ms_deform_attn_op_available(device="cpu") -> bool:
    """Whether the compiled op can run on tensors of ``device`` ("cpu", "cuda", "cuda:1", ...).

    For a CUDA device this means a kernel of ``mta_clip._C`` can launch there (an image or PTX
    for its architecture is in the library), checked once per device."""
    return _device_unavailable_reason(torch.device(device)) is None


def _compiled_unavailable_reason(device: torch.device, n_levels: int, channels: int, dtype) -> Optional[str]:
    """None if the compiled op can serve these inputs, else why not."""
    reason = _device_unavailable_reason(device)
    if reason is not None:
        return reason
    if n_levels > _C.MAX_LEVELS:
        return f"{n_levels} levels exceed the compiled op's limit of {_C.MAX_LEVELS}"
    if device.type == "cuda":
        limit = _C.cuda_max_channels(torch.empty((), dtype=dtype).element_size())
        if channels > limit:
            return f"D={channels} channels exceed the CUDA forward's limit of {limit} for {dtype}"
    return None


@torch.compiler.assume_constant_result
def _use_compiled_op(device: torch.device, n_levels: int, channels: int, dtype) -> bool:
    """The dispatch decision (a constant for torch.compile): True for the compiled op, False for
    the PyTorch path. A CUDA fallback is logged once per device and reason."""
    reason = _compiled_unavailable_reason(device, n_levels, channels, dtype)
    if reason is None:
        return device.type == "cuda" or USE_COMPILED_ON_CPU
    if device.type == "cuda" and (str(device), reason) not in _warned_fallbacks:
        _warned_fallbacks.add((str(device), reason))
        logger.warning("multi_scale_deformable_attention: using the slower PyTorch path on %s: %s", device, reason)
    return False


# ---------------------------------------------------------------------------- entry points


def _prepare(value, levels, sampling_locations, attention_weights):
    """Validates the tensors against ``levels``; returns (value, locations, weights) contiguous in
    the compute dtype."""
    for name, t in (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {_describe(t)}")
    if value.dim() != 4:
        raise ValueError(f"value must have shape (B, S, H, D), got {tuple(value.shape)}")
    b, s, n_heads, d = value.shape
    n_levels = len(levels)
    total = sum(h * w for h, w in levels)
    if s != total:
        raise ValueError(f"value has S={s} positions but spatial_shapes {levels} sum to {total}")
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
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32  # float16 / bfloat16: computed in float32 (precision-sensitive sampling)
    return tuple(t.to(dtype).contiguous() for t in (value, sampling_locations, attention_weights))


def ms_deform_attn_compiled(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: LevelStarts,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The compiled op (C++ CPU or CUDA kernels by device), differentiable; same arguments as
    ``ms_deform_attn_pytorch``. Raises RuntimeError if ``mta_clip._C`` cannot serve the inputs."""
    levels = _level_sizes(spatial_shapes, level_start_index)
    value, locations, weights = _prepare(value, levels, sampling_locations, attention_weights)
    reason = _compiled_unavailable_reason(value.device, len(levels), value.shape[3], value.dtype)
    if reason is not None:
        raise RuntimeError(f"the compiled deformable attention op cannot run: {reason}")
    return _ms_deform_attn_op(value, _flat_sizes(levels), locations, weights)


def graph_capture_active() -> bool:
    """Whether ``torch.jit.trace`` or the ONNX exporter (either one) is recording a graph."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: LevelStarts,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention; see ``ms_deform_attn_pytorch`` for shapes.

    Dispatches to the compiled op (CUDA kernels for CUDA tensors, the C++ kernel for CPU tensors
    when ``USE_COMPILED_ON_CPU``) or to the PyTorch path; see the module docstring. With
    ``spatial_shapes`` as integer pairs (and ``level_start_index`` None or integers) nothing is
    read from the device and the call traces under ``torch.compile(fullgraph=True)``.
    """
    if graph_capture_active():  # export: plain operators only, sizes as given (symbolic under torch.export)
        return ms_deform_attn_pytorch(value, spatial_shapes, None, sampling_locations, attention_weights)
    levels = _level_sizes(spatial_shapes, level_start_index)
    value, locations, weights = _prepare(value, levels, sampling_locations, attention_weights)
    if _deterministic_cuda_backward_needed(value, locations, weights):
        return ms_deform_attn_pytorch_gather(value, levels, None, locations, weights)
    if _use_compiled_op(value.device, len(levels), value.shape[3], value.dtype):
        return _ms_deform_attn_op(value, _flat_sizes(levels), locations, weights)
    return ms_deform_attn_pytorch(value, levels, None, locations, weights)


def _deterministic_cuda_backward_needed(value, locations, weights) -> bool:
    """CUDA training under ``torch.use_deterministic_algorithms(True)``: the compiled op's
    ``grad_value`` atomics and ``grid_sample``'s backward would raise, the gather path is
    deterministic. Location / weight gradients alone are deterministic in the compiled op."""
    return (
        value.device.type == "cuda"
        and torch.are_deterministic_algorithms_enabled()
        and torch.is_grad_enabled()
        and value.requires_grad
    )
