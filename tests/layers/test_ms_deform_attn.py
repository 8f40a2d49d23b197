"""Multi-scale deformable attention: PyTorch path, C++ CPU kernel and (GPU only) CUDA kernels.

Every path is compared against ``naive_msda``, written here with explicit loops over batch,
query, head, level and point and a hand-written bilinear interpolation (align_corners=False,
zero padding). The GPU tests run as one command: ``pytest tests/layers/test_ms_deform_attn.py``.
"""

import math

import pytest
import torch

import mta_clip.layers.ms_deform_attn as msda_module
from mta_clip.layers import (
    ms_deform_attn_compiled,
    ms_deform_attn_op_available,
    ms_deform_attn_pytorch,
    ms_deform_attn_pytorch_gather,
    multi_scale_deformable_attention,
)
from tests.conftest import graph_recording_backend

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _compiled_module():
    # The compiled op is part of every install: import it directly so a broken build fails here.
    from mta_clip import _C

    return _C


def level_tensors(shapes, device="cpu"):
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device)
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index


def make_inputs(
    shapes,
    batch,
    queries,
    heads,
    channels,
    points,
    dtype=torch.float64,
    device="cpu",
    low=-0.3,
    high=1.3,
    seed=0,
):
    """Random inputs; locations in [low, high] so some points fall (partly) outside the map."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = level_tensors(shapes, device)
    total = sum(h * w for h, w in shapes)
    n_levels = len(shapes)
    value = torch.randn(batch, total, heads, channels, generator=gen, dtype=dtype)
    locations = low + (high - low) * torch.rand(batch, queries, heads, n_levels, points, 2, generator=gen, dtype=dtype)
    weights = torch.rand(batch, queries, heads, n_levels, points, generator=gen, dtype=dtype)
    return [t.to(device) for t in (value, spatial_shapes, level_start_index, locations, weights)]


def naive_msda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Reference: loops over (b, q, h, l, p) and the 4 bilinear corners; differentiable."""
    batch, _, heads, channels = value.shape
    _, queries, _, n_levels, points, _ = sampling_locations.shape
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    rows = []
    for b in range(batch):
        for q in range(queries):
            for h in range(heads):
                acc = value.new_zeros(channels)
                for lvl in range(n_levels):
                    height, width = shapes[lvl]
                    for p in range(points):
                        x = sampling_locations[b, q, h, lvl, p, 0]
                        y = sampling_locations[b, q, h, lvl, p, 1]
                        # pixel i of a map of size n has its centre at (i + 0.5) / n
                        px = x * width - 0.5
                        py = y * height - 0.5
                        x0 = math.floor(px.item())
                        y0 = math.floor(py.item())
                        fx = px - x0
                        fy = py - y0
                        corners = (
                            (y0, x0, (1 - fy) * (1 - fx)),
                            (y0, x0 + 1, (1 - fy) * fx),
                            (y0 + 1, x0, fy * (1 - fx)),
                            (y0 + 1, x0 + 1, fy * fx),
                        )
                        for cy, cx, bilinear in corners:
                            if 0 <= cy < height and 0 <= cx < width:
                                pixel = value[b, starts[lvl] + cy * width + cx, h]
                                acc = acc + attention_weights[b, q, h, lvl, p] * bilinear * pixel
                rows.append(acc)
    return torch.stack(rows).view(batch, queries, heads * channels)


def uses_compiled_op(out):
    """Whether ``out`` came from the custom op (its autograd node names the op)."""
    return "mta_clip_ms_deform_attn" in type(out.grad_fn).__name__


def grads(fn, inputs, grad_out):
    value, spatial_shapes, level_start_index, locations, weights = inputs
    leaves = [t.detach().clone().requires_grad_(True) for t in (value, locations, weights)]
    out = fn(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    return out.detach(), torch.autograd.grad(out, leaves, grad_out)


# Non-square levels, a 1-pixel-wide level and a 1x1 level.
SHAPES_A = [(5, 7), (3, 2), (1, 4)]
SHAPES_B = [(4, 1), (2, 6), (1, 1)]


# ---------------------------------------------------------------- the naive reference itself


def test_naive_reference_direct_values():
    """Pixel centres return the pixel; an edge midpoint averages with the zero padding."""
    value, spatial_shapes, level_start_index, _, _ = make_inputs([(3, 4)], 1, 1, 1, 2, 1)
    centre = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3], dtype=torch.float64)  # pixel (y=1, x=2)
    edge = torch.tensor([0.0, (1 + 0.5) / 3], dtype=torch.float64)  # left border, row 1
    for loc, expected in ((centre, value[0, 1 * 4 + 2, 0]), (edge, 0.5 * value[0, 1 * 4 + 0, 0])):
        locations = loc.view(1, 1, 1, 1, 1, 2)
        weights = torch.full((1, 1, 1, 1, 1), 0.5, dtype=torch.float64)
        for fn in (naive_msda, ms_deform_attn_pytorch, ms_deform_attn_compiled):
            out = fn(value, spatial_shapes, level_start_index, locations, weights)
            torch.testing.assert_close(out.view(-1), 0.5 * expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- PyTorch path (CPU)


@pytest.mark.parametrize("shapes,seed", [(SHAPES_A, 0), (SHAPES_B, 1)])
def test_pytorch_path_matches_naive(shapes, seed):
    inputs = make_inputs(shapes, batch=2, queries=4, heads=2, channels=3, points=3, seed=seed)
    expected = naive_msda(*inputs)
    out = ms_deform_attn_pytorch(*inputs)
    assert out.shape == (2, 4, 2 * 3)
    assert (out - expected).abs().max().item() < 1e-6


def test_pytorch_path_gradcheck():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        [(3, 4), (2, 3)], batch=1, queries=2, heads=2, channels=2, points=2, seed=3
    )
    args = [t.requires_grad_(True) for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn_pytorch(v, spatial_shapes, level_start_index, loc, w), args
    )


@pytest.mark.parametrize("shapes,seed", [(SHAPES_A, 0), (SHAPES_B, 1)])
def test_gather_path_matches_naive_forward_and_gradients(shapes, seed):
    """The gather path (deterministic backward on CUDA) against the naive loops; points at NaN /
    +-inf / far outside give zeros and finite (zero) gradients."""
    inputs = make_inputs(shapes, batch=2, queries=5, heads=2, channels=3, points=3, seed=seed)
    locations = inputs[3].clone()
    locations[0, 0, 0, 0, 0] = torch.tensor([float("nan"), 0.5], dtype=torch.float64)
    locations[0, 1, 1, 1, 1] = torch.tensor([float("inf"), -float("inf")], dtype=torch.float64)
    locations[1, 2, 0, 2, 2] = torch.tensor([-5.0, 0.5], dtype=torch.float64)
    clean = list(inputs)
    clean[3] = torch.where(locations.isfinite(), locations, torch.full_like(locations, -5.0))
    grad_out = torch.randn(2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ref_out, ref_grads = grads(naive_msda, clean, grad_out)  # the naive loops cannot take NaN
    inputs[3] = locations
    out, out_grads = grads(ms_deform_attn_pytorch_gather, inputs, grad_out)
    assert (out - ref_out).abs().max().item() < 1e-12
    for got, ref in zip(out_grads, ref_grads):
        assert torch.isfinite(got).all()
        assert (got - ref).abs().max().item() < 1e-12


def test_gather_path_gradcheck():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        [(3, 4), (2, 3)], batch=1, queries=2, heads=2, channels=2, points=2, seed=14
    )
    args = [t.requires_grad_(True) for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn_pytorch_gather(v, spatial_shapes, level_start_index, loc, w), args
    )


def test_deterministic_mode_picks_the_gather_path_only_for_cuda_value_gradients(monkeypatch):
    value, _, _, locations, weights = make_inputs(SHAPES_A, 1, 2, 2, 3, 2)
    cuda_like = torch.device("cuda", 0)

    class OnCuda:  # the dispatch reads only .device and .requires_grad
        def __init__(self, t, requires_grad):
            self.device, self.requires_grad = cuda_like, requires_grad

    needed = msda_module._deterministic_cuda_backward_needed
    old = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert needed(OnCuda(value, True), locations, weights)
        assert not needed(OnCuda(value, False), locations, weights)  # location gradients: deterministic
        assert not needed(value.requires_grad_(True), locations, weights)  # CPU: the C++ kernel is deterministic
        with torch.no_grad():
            assert not needed(OnCuda(value, True), locations, weights)
        torch.use_deterministic_algorithms(False)
        assert not needed(OnCuda(value, True), locations, weights)
    finally:
        torch.use_deterministic_algorithms(old)


# ---------------------------------------------------------------- C++ CPU kernel


@pytest.mark.parametrize("shapes,channels,seed", [(SHAPES_A, 3, 0), (SHAPES_B, 1, 1), (SHAPES_A, 9, 2)])
def test_cpu_kernel_matches_naive_forward_and_gradients(shapes, channels, seed):
    inputs = make_inputs(shapes, batch=2, queries=3, heads=2, channels=channels, points=2, seed=seed)
    grad_out = torch.randn(2, 3, 2 * channels, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ref_out, ref_grads = grads(naive_msda, inputs, grad_out)
    out, out_grads = grads(ms_deform_attn_compiled, inputs, grad_out)
    assert (out - ref_out).abs().max().item() < 1e-6
    for name, got, ref in zip(("value", "sampling_locations", "attention_weights"), out_grads, ref_grads):
        assert got.shape == ref.shape, name
        assert (got - ref).abs().max().item() < 1e-6, name


@pytest.mark.parametrize("channels", [1, 5, 32, 48])
def test_cpu_replay_of_cuda_channel_split_matches_naive(channels):
    """The CUDA kernels give each (b, q, h) row G lanes (channels strided by G) and sum the lanes'
    location / weight gradients with a warp-shuffle butterfly; lane_group replays that on the CPU."""
    _C = _compiled_module()
    group = _C.lane_group_size(channels)
    assert group == min(2 ** math.ceil(math.log2(channels)), 32)
    inputs = make_inputs(SHAPES_A, batch=1, queries=2, heads=2, channels=channels, points=2, seed=channels)
    value, spatial_shapes, level_start_index, locations, weights = inputs
    grad_out = torch.randn(1, 2, 2 * channels, dtype=torch.float64)
    ref_out, ref_grads = grads(naive_msda, inputs, grad_out)
    sizes = spatial_shapes.flatten().tolist()
    out = _C.ms_deform_attn_forward(value, sizes, locations, weights, lane_group=group)
    out_grads = _C.ms_deform_attn_backward(value, sizes, locations, weights, grad_out, lane_group=group)
    assert (out - ref_out).abs().max().item() < 1e-6
    for got, ref in zip(out_grads, ref_grads):
        assert (got - ref).abs().max().item() < 1e-6
    with pytest.raises(RuntimeError, match="power of two"):
        _C.ms_deform_attn_forward(value, sizes, locations, weights, lane_group=3)


def test_cpu_kernel_gradcheck():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        [(3, 4), (2, 3)], batch=1, queries=2, heads=2, channels=2, points=2, seed=4
    )
    args = [t.requires_grad_(True) for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn_compiled(v, spatial_shapes, level_start_index, loc, w), args
    )


def test_cpu_kernel_fp32_matches_pytorch_path():
    inputs = make_inputs(SHAPES_A, batch=2, queries=16, heads=4, channels=8, points=4, dtype=torch.float32)
    grad_out = torch.randn(2, 16, 32)
    ref_out, ref_grads = grads(ms_deform_attn_pytorch, inputs, grad_out)
    out, out_grads = grads(ms_deform_attn_compiled, inputs, grad_out)
    assert out.dtype == torch.float32
    for got, ref in zip((out, *out_grads), (ref_out, *ref_grads)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_cpu_kernel_points_far_outside_give_zero():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(SHAPES_A, 1, 5, 2, 3, 2)
    locations = locations.clone()
    locations[..., 0] = torch.tensor([-5.0, 7.0, float("inf"), -float("inf"), 2.0]).view(1, 5, 1, 1, 1)
    grad_out = torch.ones(1, 5, 6, dtype=torch.float64)
    out, (g_value, g_loc, g_weights) = grads(
        ms_deform_attn_compiled, (value, spatial_shapes, level_start_index, locations, weights), grad_out
    )
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(g_value) == 0 and torch.count_nonzero(g_loc) == 0
    assert torch.count_nonzero(g_weights) == 0


def test_cpu_kernel_threads_agree():
    """Work is split over (batch, head); 2 threads must give bit-identical results."""
    inputs = make_inputs(SHAPES_A, batch=2, queries=8, heads=3, channels=4, points=2)
    grad_out = torch.randn(2, 8, 12, dtype=torch.float64)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = grads(ms_deform_attn_compiled, inputs, grad_out)
        torch.set_num_threads(2)
        multi = grads(ms_deform_attn_compiled, inputs, grad_out)
    finally:
        torch.set_num_threads(old)
    for a, b in zip((single[0], *single[1]), (multi[0], *multi[1])):
        assert torch.equal(a, b)


def test_compiled_module_validates_inputs():
    _C = _compiled_module()
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(SHAPES_A, 1, 2, 2, 3, 2)
    sizes = spatial_shapes.flatten().tolist()
    with pytest.raises(RuntimeError, match="contiguous"):
        _C.ms_deform_attn_forward(value.transpose(1, 2).contiguous().transpose(1, 2), sizes, locations, weights)
    with pytest.raises(RuntimeError, match="dtype"):
        _C.ms_deform_attn_forward(value, sizes, locations.float(), weights)
    with pytest.raises(RuntimeError, match="pairs"):
        _C.ms_deform_attn_forward(value, sizes[:-1], locations, weights)
    with pytest.raises(RuntimeError, match=r"level 1 has spatial shape \(0, 2\)"):
        _C.ms_deform_attn_forward(value, [5, 7, 0, 2, 1, 4], locations, weights)
    with pytest.raises(RuntimeError, match="S="):
        _C.ms_deform_attn_forward(value[:, 1:].contiguous(), sizes, locations, weights)
    with pytest.raises(RuntimeError, match="grad_output"):
        _C.ms_deform_attn_backward(value, sizes, locations, weights, torch.zeros(1, 2, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="no gradient requested"):
        _C.ms_deform_attn_backward(
            value, sizes, locations, weights, torch.zeros(1, 2, 6, dtype=torch.float64), False, False
        )


# ---------------------------------------------------------------- public function and dispatch


def test_public_function_dispatches_cpu_to_compiled_kernel(monkeypatch):
    inputs = make_inputs(SHAPES_A, 1, 3, 2, 3, 2)
    assert ms_deform_attn_op_available("cpu")
    out = multi_scale_deformable_attention(*[t.requires_grad_(t.is_floating_point()) for t in inputs])
    assert uses_compiled_op(out)
    monkeypatch.setattr(msda_module, "USE_COMPILED_ON_CPU", False)
    out_py = multi_scale_deformable_attention(*inputs)
    assert not uses_compiled_op(out_py)
    torch.testing.assert_close(out, out_py, rtol=0, atol=1e-12)


def test_public_function_works_without_extension(monkeypatch):
    monkeypatch.setattr(msda_module, "_C", None)
    monkeypatch.setattr(msda_module, "_C_IMPORT_ERROR", "ImportError: simulated")
    assert not ms_deform_attn_op_available("cpu")
    inputs = make_inputs(SHAPES_B, 1, 3, 2, 3, 2)
    torch.testing.assert_close(multi_scale_deformable_attention(*inputs), naive_msda(*inputs), rtol=0, atol=1e-10)
    with pytest.raises(RuntimeError, match="simulated"):
        ms_deform_attn_compiled(*inputs)


def test_public_function_more_levels_than_compiled_limit_uses_pytorch():
    limit = _compiled_module().MAX_LEVELS
    inputs = make_inputs([(1, 2)] * (limit + 1), 1, 2, 1, 2, 1)
    torch.testing.assert_close(multi_scale_deformable_attention(*inputs), naive_msda(*inputs), rtol=0, atol=1e-10)


def test_public_function_non_contiguous_and_device_level_tensors():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(SHAPES_A, 2, 3, 2, 3, 2)
    value_nc = value.transpose(0, 1).contiguous().transpose(0, 1)
    weights_nc = weights.transpose(1, 2).contiguous().transpose(1, 2)
    assert not value_nc.is_contiguous() and not weights_nc.is_contiguous()
    out = multi_scale_deformable_attention(value_nc, spatial_shapes, level_start_index, locations, weights_nc)
    torch.testing.assert_close(
        out, naive_msda(value, spatial_shapes, level_start_index, locations, weights), rtol=0, atol=1e-10
    )


def test_public_function_half_inputs_computed_in_fp32():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        SHAPES_A, 1, 3, 2, 4, 2, dtype=torch.float32
    )
    half = [t.bfloat16() for t in (value, locations, weights)]
    expected = ms_deform_attn_pytorch(
        half[0].float(), spatial_shapes, level_start_index, half[1].float(), half[2].float()
    )
    out = multi_scale_deformable_attention(half[0], spatial_shapes, level_start_index, half[1], half[2])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_autocast = multi_scale_deformable_attention(value, spatial_shapes, level_start_index, locations, weights)
    assert out_autocast.dtype == torch.float32
    torch.testing.assert_close(
        out_autocast,
        ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, locations, weights),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "mutate,error,match",
    [
        (lambda a: a.__setitem__(1, a[1].int()), TypeError, "spatial_shapes must be an int64"),
        (lambda a: a.__setitem__(1, a[1][:, :1]), ValueError, r"spatial_shapes must have shape \(L, 2\)"),
        (lambda a: a.__setitem__(2, a[2][:2]), ValueError, r"level_start_index must have shape \(3,\)"),
        (lambda a: a.__setitem__(2, a[2] * 2), ValueError, r"level_start_index\[1\]"),
        (lambda a: a.__setitem__(0, a[0][:, :-1]), ValueError, "value has S="),
        (lambda a: a.__setitem__(0, a[0][0]), ValueError, r"value must have shape \(B, S, H, D\)"),
        (lambda a: a.__setitem__(3, a[3][..., :1]), ValueError, "sampling_locations must have shape"),
        (lambda a: a.__setitem__(4, a[4][..., :1]), ValueError, "attention_weights must have shape"),
        (lambda a: a.__setitem__(4, a[4].long()), TypeError, "attention_weights must be a floating"),
        (lambda a: a.__setitem__(1, torch.tensor([[5, 7], [3, 2], [0, 4]])), ValueError, "must be >= 1"),
    ],
)
def test_public_function_rejects_bad_inputs(mutate, error, match):
    args = make_inputs(SHAPES_A, 1, 2, 2, 3, 2)
    mutate(args)
    with pytest.raises(error, match=match):
        multi_scale_deformable_attention(*args)


def test_public_function_takes_level_sizes_as_integers():
    """(H, W) integer pairs and integer starts (or None) give the same result as the tensors."""
    inputs = make_inputs(SHAPES_B, 2, 3, 2, 3, 2, seed=7)
    value, _, _, locations, weights = inputs
    expected = naive_msda(*inputs)
    for fn in (multi_scale_deformable_attention, ms_deform_attn_compiled, ms_deform_attn_pytorch):
        for starts in (None, [0, 4, 16]):
            out = fn(value, SHAPES_B, starts, locations, weights)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match=r"level_start_index\[2\] is 15"):
        multi_scale_deformable_attention(value, SHAPES_B, [0, 4, 15], locations, weights)
    with pytest.raises(ValueError, match="integer pairs"):
        multi_scale_deformable_attention(value, [(4, 1), (2, 6), (1,)], None, locations, weights)
    with pytest.raises(ValueError, match="integer pairs"):
        multi_scale_deformable_attention(value, [(4, 1), (2, 6.0), (1, 1)], None, locations, weights)
    with pytest.raises(TypeError, match="list of \\(H, W\\) integer pairs"):
        multi_scale_deformable_attention(value, 7, None, locations, weights)


# ---------------------------------------------------------------- the custom op (torch.library)


def test_custom_op_opcheck():
    """torch.library.opcheck: schema, fake implementation vs real kernel, autograd registration,
    AOT dispatch with static and dynamic shapes; forward and backward ops."""
    value, spatial_shapes, _, locations, weights = make_inputs(SHAPES_A, 2, 3, 2, 3, 2, seed=8)
    sizes = spatial_shapes.flatten().tolist()
    op = torch.ops.mta_clip.ms_deform_attn.default
    torch.library.opcheck(op, (value.requires_grad_(), sizes, locations.requires_grad_(), weights.requires_grad_()))
    torch.library.opcheck(op, (value.detach(), sizes, locations.detach().requires_grad_(), weights.detach()))
    grad_out = torch.randn(2, 3, 6, dtype=torch.float64)
    backward = torch.ops.mta_clip.ms_deform_attn_backward.default
    for flags in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(backward, (value.detach(), sizes, locations.detach(), weights.detach(), grad_out, *flags))


def test_fake_implementation_shapes():
    """Under FakeTensorMode (what torch.compile / torch.export trace with) no kernel runs and the
    shapes follow the inputs; bad shapes are refused there too."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    value, _, _, locations, weights = make_inputs(SHAPES_A, 2, 5, 3, 4, 2, dtype=torch.float32)
    sizes = [v for pair in SHAPES_A for v in pair]
    with FakeTensorMode() as mode:
        v, loc, w = (mode.from_tensor(t) for t in (value, locations, weights))
        out = torch.ops.mta_clip.ms_deform_attn(v, sizes, loc, w)
        assert out.shape == (2, 5, 12) and out.dtype == torch.float32
        g = torch.ops.mta_clip.ms_deform_attn_backward(v, sizes, loc, w, out, True, False)
        assert [tuple(t.shape) for t in g] == [tuple(value.shape), (0,), (0,)]
        g = torch.ops.mta_clip.ms_deform_attn_backward(v, sizes, loc, w, out, False, True)
        assert [tuple(t.shape) for t in g] == [(0,), tuple(locations.shape), tuple(weights.shape)]
        with pytest.raises(RuntimeError, match="sum of the level sizes"):
            torch.ops.mta_clip.ms_deform_attn(v, sizes[:-2] + [2, 4], loc, w)


def test_backward_honours_needs_input_grad():
    """Only the requested gradients are computed (the backward op is told which), and each one
    equals the naive reference's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordBackwardFlags(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.flags = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.mta_clip.ms_deform_attn_backward.default:
                self.flags.append(tuple(args[5:7]))
            return func(*args, **(kwargs or {}))

    inputs = make_inputs(SHAPES_A, 2, 3, 2, 3, 2, seed=9)
    value, _, _, locations, weights = inputs
    grad_out = torch.randn(2, 3, 6, dtype=torch.float64)
    _, ref = grads(naive_msda, inputs, grad_out)
    for wanted, expected_flags in (
        ((0,), (True, False)),
        ((1,), (False, True)),
        ((2,), (False, True)),
        ((0, 2), (True, True)),
    ):
        leaves = [t.detach().clone().requires_grad_(i in wanted) for i, t in enumerate((value, locations, weights))]
        out = multi_scale_deformable_attention(leaves[0], SHAPES_A, None, leaves[1], leaves[2])
        with RecordBackwardFlags() as mode:
            out.backward(grad_out)
        assert mode.flags == [expected_flags]
        for i, leaf in enumerate(leaves):
            if i in wanted:
                assert (leaf.grad - ref[i]).abs().max().item() < 1e-6
            else:
                assert leaf.grad is None
    # The extension itself returns None for what was not asked for.
    sizes = [v for pair in SHAPES_A for v in pair]
    g_value, g_loc, g_weights = _compiled_module().ms_deform_attn_backward(
        value, sizes, locations, weights, grad_out, True, False
    )
    assert g_loc is None and g_weights is None and (g_value - ref[0]).abs().max().item() < 1e-6


def test_export_op_on_cpu():
    """torch.export keeps the C++ op as one node (level sizes baked in as integers)."""

    class Attn(torch.nn.Module):
        def forward(self, value, locations, weights):
            return multi_scale_deformable_attention(value, SHAPES_A, None, locations, weights)

    inputs = make_inputs(SHAPES_A, 2, 3, 2, 3, 2, dtype=torch.float32, seed=10)
    value, _, _, locations, weights = inputs
    program = torch.export.export(Attn(), (value, locations, weights))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.mta_clip.ms_deform_attn.default in targets
    assert not any("grid_sampler" in str(t) for t in targets)
    other = make_inputs(SHAPES_A, 2, 3, 2, 3, 2, dtype=torch.float32, seed=11)
    out = program.module()(other[0], other[3], other[4])
    torch.testing.assert_close(out, naive_msda(*other), rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_forward_and_backward():
    """torch.compile(fullgraph=True): the op is one node in the forward graph and its backward op
    one node in the backward graph; results equal eager."""
    backend, graphs = graph_recording_backend()
    torch._dynamo.reset()
    fn = torch.compile(multi_scale_deformable_attention, fullgraph=True, backend=backend)
    inputs = make_inputs(SHAPES_A, 2, 4, 2, 3, 2, seed=12)
    grad_out = torch.randn(2, 4, 6, dtype=torch.float64)
    value, _, _, locations, weights = inputs
    compiled = grads(lambda v, ss, lsi, loc, w: fn(v, SHAPES_A, None, loc, w), inputs, grad_out)
    eager = grads(naive_msda, inputs, grad_out)
    for got, ref in zip((compiled[0], *compiled[1]), (eager[0], *eager[1])):
        assert (got - ref).abs().max().item() < 1e-6
    assert any("mta_clip.ms_deform_attn.default" in g for g in graphs["forward"])
    assert any("mta_clip.ms_deform_attn_backward.default" in g for g in graphs["backward"])


# ---------------------------------------------------------------- availability per device


class _FakeCudaExtension:
    """Stands in for a CUDA build of mta_clip._C on a machine whose GPU has no kernel image."""

    def __init__(self, real, launch_error):
        self._real = real
        self.launch_error = launch_error
        self.probes = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def with_cuda(self):
        return True

    def cuda_launch_error(self, index):
        self.probes.append(index)
        return self.launch_error


def _simulate_cuda(monkeypatch, launch_error):
    fake = _FakeCudaExtension(_compiled_module(), launch_error)
    monkeypatch.setattr(msda_module, "_C", fake)
    monkeypatch.setattr(msda_module, "_cuda_launch_errors", {})
    monkeypatch.setattr(msda_module, "_warned_fallbacks", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return fake


def test_no_kernel_image_means_unavailable_and_pytorch_path(monkeypatch, caplog):
    """A CUDA build whose kernels cannot launch on the GPU (simulated "no kernel image", as for
    sm_80 / sm_90 images on a Blackwell GPU) is reported unavailable, asked once per device, and
    the dispatch picks the PyTorch path with one logged warning."""
    no_image = "cudaErrorNoKernelImageForDevice (no kernel image is available for execution on the device)"
    fake = _simulate_cuda(monkeypatch, no_image)
    assert not ms_deform_attn_op_available("cuda")
    assert not ms_deform_attn_op_available("cuda:0")
    assert not ms_deform_attn_op_available(torch.device("cuda", 1))
    assert fake.probes == [0, 1]  # once per device
    device = torch.device("cuda", 0)
    with caplog.at_level("WARNING", logger=msda_module.__name__):
        for _ in range(3):
            assert not msda_module._use_compiled_op(device, 3, 32, torch.float32)
    warnings = [r.getMessage() for r in caplog.records if "PyTorch path" in r.getMessage()]
    assert len(warnings) == 1 and "no kernel image" in warnings[0] and "cuda:0" in warnings[0]
    assert fake.probes == [0, 1]
    reason = msda_module._compiled_unavailable_reason(device, 3, 32, torch.float32)
    assert reason.startswith("its CUDA kernels cannot launch on cuda:0: cudaErrorNoKernelImageForDevice")


def test_cuda_channel_limit_falls_back(monkeypatch):
    """D too wide for the CUDA forward's shared memory goes to the PyTorch path instead of raising."""
    _simulate_cuda(monkeypatch, "")
    device = torch.device("cuda", 0)
    limit32 = _compiled_module().cuda_max_channels(4)
    limit64 = _compiled_module().cuda_max_channels(8)
    assert (limit32, limit64) == (12288, 6144)
    assert msda_module._use_compiled_op(device, 3, limit32, torch.float32)
    assert not msda_module._use_compiled_op(device, 3, limit32 + 1, torch.float32)
    assert msda_module._use_compiled_op(device, 3, limit64, torch.float64)
    assert not msda_module._use_compiled_op(device, 3, limit64 + 1, torch.float64)
    assert "exceed the CUDA forward's limit" in msda_module._compiled_unavailable_reason(
        device, 3, limit64 + 1, torch.float64
    )


def test_launch_probe_of_the_extension():
    """The real probe: a CPU-only build says so; a CUDA build refuses a device that does not exist."""
    _C = _compiled_module()
    if _C.with_cuda():
        assert "does not exist" in _C.cuda_launch_error(1000) or "cudaGetDeviceCount" in _C.cuda_launch_error(1000)
    else:
        assert _C.cuda_launch_error(0) == "mta_clip._C was built without CUDA kernels"


# ---------------------------------------------------------------- CUDA kernels (GPU only)


@requires_cuda
def test_cuda_op_is_built_and_dispatched():
    assert _compiled_module().with_cuda(), "mta_clip._C was built without CUDA on a CUDA machine"
    assert ms_deform_attn_op_available("cuda")
    inputs = make_inputs(SHAPES_A, 1, 3, 2, 4, 2, dtype=torch.float32, device="cuda")
    out = multi_scale_deformable_attention(*[t.requires_grad_(t.is_floating_point()) for t in inputs])
    assert out.is_cuda and uses_compiled_op(out)


# (B, Q, H, D, levels): tiny; B*Q*H rows beyond one block and past the grid bound (grid-stride loop)
# at D=32; D=5 (8 lanes per row, idle lanes), D=48 (lanes with 1 or 2 channels), D=1024 fp32 (8 rows
# of 4 KiB fit the 48 KiB of shared memory in a 256-thread block), D=2048 fp32 / D=1024 fp64 (8 KiB
# rows: the forward block shrinks to 128 threads).
CUDA_CASES = [
    (2, 3, 2, 3, SHAPES_A, torch.float32),
    (2, 4500, 8, 32, [(64, 48), (32, 24), (16, 12)], torch.float32),
    (3, 700, 4, 5, SHAPES_A + SHAPES_B, torch.float32),
    (2, 500, 3, 48, [(17, 9), (8, 5)], torch.float32),
    (1, 64, 2, 1024, [(8, 8), (4, 4)], torch.float32),
    (1, 48, 2, 2048, [(8, 8), (4, 4)], torch.float32),
    (1, 48, 2, 1024, [(8, 8), (4, 4)], torch.float64),
]


@requires_cuda
@pytest.mark.parametrize("batch,queries,heads,channels,shapes,dtype", CUDA_CASES)
def test_cuda_op_matches_pytorch_path(batch, queries, heads, channels, shapes, dtype):
    inputs = make_inputs(shapes, batch, queries, heads, channels, 4, dtype=dtype, device="cuda")
    grad_out = torch.randn(batch, queries, heads * channels, device="cuda", dtype=dtype)
    ref_out, ref_grads = grads(ms_deform_attn_pytorch, inputs, grad_out)
    out, out_grads = grads(ms_deform_attn_compiled, inputs, grad_out)
    names = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
    for name, got, ref in zip(names, (out, *out_grads), (ref_out, *ref_grads)):
        scale = max(ref.abs().max().item(), 1.0)
        err = (got - ref).abs().max().item() / scale
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert err < tol, f"{name}: max error {err:.2e} relative to max |ref| {scale:.3g}"


@requires_cuda
def test_cuda_op_gradcheck_fp64():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        [(3, 4), (2, 3)], batch=2, queries=3, heads=2, channels=3, points=2, device="cuda", seed=5
    )
    args = [t.requires_grad_(True) for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn_compiled(v, spatial_shapes, level_start_index, loc, w), args
    )


@requires_cuda
def test_cuda_op_matches_cpu_kernel_fp64():
    inputs = make_inputs(SHAPES_A + SHAPES_B, 2, 300, 4, 33, 3, seed=6)
    grad_out = torch.randn(2, 300, 4 * 33, dtype=torch.float64)
    cpu_out, cpu_grads = grads(ms_deform_attn_compiled, inputs, grad_out)
    gpu_out, gpu_grads = grads(ms_deform_attn_compiled, [t.cuda() for t in inputs], grad_out.cuda())
    for got, ref in zip((gpu_out, *gpu_grads), (cpu_out, *cpu_grads)):
        torch.testing.assert_close(got.cpu(), ref, rtol=1e-10, atol=1e-10)


@requires_cuda
def test_cuda_kernels_launch_on_this_gpu():
    """The launch probe passes on the test GPU (a kernel image or PTX for it is in the library)."""
    index = torch.cuda.current_device()
    assert _compiled_module().cuda_launch_error(index) == ""
    assert ms_deform_attn_op_available(f"cuda:{index}")
    assert "does not exist" in _compiled_module().cuda_launch_error(torch.cuda.device_count())


@requires_cuda
def test_cuda_backward_alerts_in_deterministic_mode():
    """grad_value is scattered with float atomics: deterministic mode raises (or warns with
    warn_only); location / weight gradients alone are deterministic and raise nothing."""
    inputs = make_inputs(SHAPES_A, 1, 8, 2, 4, 2, dtype=torch.float32, device="cuda")
    grad_out = torch.randn(1, 8, 8, device="cuda")
    old, old_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        with pytest.raises(RuntimeError, match="ms_deform_attn_cuda_backward"):
            grads(ms_deform_attn_compiled, inputs, grad_out)
        value, _, _, locations, weights = inputs
        loc = locations.clone().requires_grad_(True)
        out = ms_deform_attn_compiled(value, SHAPES_A, None, loc, weights)
        (g_loc,) = torch.autograd.grad(out, [loc], grad_out)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="ms_deform_attn_cuda_backward"):
            _, ref = grads(ms_deform_attn_compiled, inputs, grad_out)
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)
    torch.testing.assert_close(g_loc, ref[1], rtol=1e-6, atol=1e-6 * ref[1].abs().max().item())


@requires_cuda
def test_cuda_channel_limit_falls_back_to_pytorch_path(caplog):
    """D above the CUDA forward's shared-memory limit: the PyTorch path, with one logged warning."""
    limit = _compiled_module().cuda_max_channels(8)
    inputs = make_inputs([(2, 2)], 1, 2, 1, limit + 1, 1, device="cuda")
    with caplog.at_level("WARNING", logger=msda_module.__name__):
        out = multi_scale_deformable_attention(*inputs)
    assert any("exceed the CUDA forward's limit" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(out.cpu(), naive_msda(*[t.cpu() for t in inputs]), rtol=0, atol=1e-10)
    with pytest.raises(RuntimeError, match="exceed the CUDA forward's limit"):
        ms_deform_attn_compiled(*inputs)


@requires_cuda
def test_cuda_pixel_decoder_makes_no_sync():
    """Forward and backward of the pixel decoder on the GPU under CUDA's sync debug mode "error":
    any device-to-host read or blocking copy raises."""
    from tests.modeling.test_pixel_decoder import features, small_decoder

    decoder = small_decoder().cuda().train()
    feats = features(device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mask_features, _, multi = decoder.forward_features(feats)
        (mask_features.sum() + sum(m.sum() for m in multi)).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert mask_features.is_cuda and all(p.grad is not None for p in decoder.transformer.parameters())
    # the CUDA kernels served it (not the PyTorch path)
    assert msda_module._use_compiled_op(mask_features.device, 3, 8, torch.float32)


@requires_cuda
def test_cuda_compile_and_export():
    """torch.compile(fullgraph=True) and torch.export on CUDA tensors keep the CUDA op."""
    inputs = make_inputs(SHAPES_A, 2, 40, 2, 8, 2, dtype=torch.float32, device="cuda", seed=13)
    value, _, _, locations, weights = inputs
    grad_out = torch.randn(2, 40, 16, device="cuda")
    torch._dynamo.reset()
    fn = torch.compile(multi_scale_deformable_attention, fullgraph=True, backend="aot_eager")
    compiled = grads(lambda v, ss, lsi, loc, w: fn(v, SHAPES_A, None, loc, w), inputs, grad_out)
    eager = grads(ms_deform_attn_pytorch, inputs, grad_out)
    for got, ref in zip((compiled[0], *compiled[1]), (eager[0], *eager[1])):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * max(ref.abs().max().item(), 1.0))

    class Attn(torch.nn.Module):
        def forward(self, value, locations, weights):
            return multi_scale_deformable_attention(value, SHAPES_A, None, locations, weights)

    program = torch.export.export(Attn(), (value, locations, weights))
    assert torch.ops.mta_clip.ms_deform_attn.default in [n.target for n in program.graph.nodes]
    torch.testing.assert_close(program.module()(value, locations, weights), eager[0], rtol=1e-5, atol=1e-5)


@requires_cuda
def test_cuda_deterministic_mode_uses_the_gather_path():
    """Under torch.use_deterministic_algorithms(True) CUDA training works (gather path) and is
    bitwise reproducible; the result equals the CUDA op's."""
    inputs = make_inputs(SHAPES_A + SHAPES_B, 2, 300, 4, 16, 4, dtype=torch.float32, device="cuda", seed=15)
    grad_out = torch.randn(2, 300, 64, device="cuda")
    reference = grads(ms_deform_attn_compiled, inputs, grad_out)
    old = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        first = grads(multi_scale_deformable_attention, inputs, grad_out)
        second = grads(multi_scale_deformable_attention, inputs, grad_out)
    finally:
        torch.use_deterministic_algorithms(old)
    for a, b, ref in zip((first[0], *first[1]), (second[0], *second[1]), (reference[0], *reference[1])):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-5 * max(ref.abs().max().item(), 1.0))


def test_graph_capture_uses_the_pytorch_path_with_list_shapes(tmp_path):
    """While torch.jit.trace or the ONNX exporter record a graph, the public function takes the
    PyTorch path: the files hold plain operators (no custom op) and compute the same values."""
    import onnxruntime

    inputs = make_inputs(SHAPES_A, 1, 3, 2, 3, 2, dtype=torch.float32)
    value, spatial_shapes, level_start_index, locations, weights = inputs
    expected = naive_msda(*[t.double() if t.is_floating_point() else t for t in inputs]).float()
    traced = torch.jit.trace(
        lambda v, loc, w: multi_scale_deformable_attention(v, spatial_shapes, level_start_index, loc, w),
        (value, locations, weights),
    )
    ops = {node.kind() for node in traced.graph.nodes()}
    assert "aten::grid_sampler" in ops and not any("PythonOp" in k or "mta_clip" in k for k in ops)
    torch.testing.assert_close(traced(value, locations, weights), expected, rtol=0, atol=1e-5)

    class Attn(torch.nn.Module):
        def forward(self, v, loc, w):
            return multi_scale_deformable_attention(v, SHAPES_A, None, loc, w)

    path = str(tmp_path / "attn.onnx")
    torch.onnx.export(Attn(), (value, locations, weights), path, dynamo=True, input_names=["v", "loc", "w"])
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"v": value.numpy(), "loc": locations.numpy(), "w": weights.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-5)
