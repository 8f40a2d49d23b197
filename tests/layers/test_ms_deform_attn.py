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
    multi_scale_deformable_attention,
)

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
    locations = low + (high - low) * torch.rand(
        batch, queries, heads, n_levels, points, 2, generator=gen, dtype=dtype
    )
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


# ---------------------------------------------------------------- C++ CPU kernel


@pytest.mark.parametrize("shapes,channels,seed", [(SHAPES_A, 3, 0), (SHAPES_B, 1, 1), (SHAPES_A, 9, 2)])
def test_cpu_kernel_matches_naive_forward_and_gradients(shapes, channels, seed):
    inputs = make_inputs(shapes, batch=2, queries=3, heads=2, channels=channels, points=2, seed=seed)
    grad_out = torch.randn(
        2, 3, 2 * channels, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
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
    out = _C.ms_deform_attn_forward(
        value, spatial_shapes, level_start_index, locations, weights, lane_group=group
    )
    out_grads = _C.ms_deform_attn_backward(
        value, spatial_shapes, level_start_index, locations, weights, grad_out, lane_group=group
    )
    assert (out - ref_out).abs().max().item() < 1e-6
    for got, ref in zip(out_grads, ref_grads):
        assert (got - ref).abs().max().item() < 1e-6
    with pytest.raises(RuntimeError, match="power of two"):
        _C.ms_deform_attn_forward(value, spatial_shapes, level_start_index, locations, weights, lane_group=3)


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
    with pytest.raises(RuntimeError, match="contiguous"):
        _C.ms_deform_attn_forward(
            value.transpose(1, 2).contiguous().transpose(1, 2),
            spatial_shapes,
            level_start_index,
            locations,
            weights,
        )
    with pytest.raises(RuntimeError, match="dtype"):
        _C.ms_deform_attn_forward(value, spatial_shapes, level_start_index, locations.float(), weights)
    with pytest.raises(RuntimeError, match="level_start_index"):
        _C.ms_deform_attn_forward(value, spatial_shapes, level_start_index + 1, locations, weights)
    with pytest.raises(RuntimeError, match="S="):
        _C.ms_deform_attn_forward(
            value[:, 1:].contiguous(), spatial_shapes, level_start_index, locations, weights
        )
    with pytest.raises(RuntimeError, match="grad_output"):
        _C.ms_deform_attn_backward(
            value,
            spatial_shapes,
            level_start_index,
            locations,
            weights,
            torch.zeros(1, 2, 5, dtype=torch.float64),
        )


# ---------------------------------------------------------------- public function and dispatch


def test_public_function_dispatches_cpu_to_compiled_kernel(monkeypatch):
    inputs = make_inputs(SHAPES_A, 1, 3, 2, 3, 2)
    assert ms_deform_attn_op_available("cpu")
    out = multi_scale_deformable_attention(*[t.requires_grad_(t.is_floating_point()) for t in inputs])
    assert "MSDeformAttnFunction" in type(out.grad_fn).__name__
    monkeypatch.setattr(msda_module, "USE_COMPILED_ON_CPU", False)
    out_py = multi_scale_deformable_attention(*inputs)
    assert "MSDeformAttnFunction" not in type(out_py.grad_fn).__name__
    torch.testing.assert_close(out, out_py, rtol=0, atol=1e-12)


def test_public_function_works_without_extension(monkeypatch):
    monkeypatch.setattr(msda_module, "_C", None)
    monkeypatch.setattr(msda_module, "_C_IMPORT_ERROR", "ImportError: simulated")
    assert not ms_deform_attn_op_available("cpu")
    inputs = make_inputs(SHAPES_B, 1, 3, 2, 3, 2)
    torch.testing.assert_close(
        multi_scale_deformable_attention(*inputs), naive_msda(*inputs), rtol=0, atol=1e-10
    )
    with pytest.raises(RuntimeError, match="simulated"):
        ms_deform_attn_compiled(*inputs)


def test_public_function_more_levels_than_compiled_limit_uses_pytorch():
    limit = _compiled_module().MAX_LEVELS
    inputs = make_inputs([(1, 2)] * (limit + 1), 1, 2, 1, 2, 1)
    torch.testing.assert_close(
        multi_scale_deformable_attention(*inputs), naive_msda(*inputs), rtol=0, atol=1e-10
    )


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
        out_autocast = multi_scale_deformable_attention(
            value, spatial_shapes, level_start_index, locations, weights
        )
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


# ---------------------------------------------------------------- CUDA kernels (GPU only)


@requires_cuda
def test_cuda_op_is_built_and_dispatched():
    assert _compiled_module().with_cuda(), "mta_clip._C was built without CUDA on a CUDA machine"
    assert ms_deform_attn_op_available("cuda")
    inputs = make_inputs(SHAPES_A, 1, 3, 2, 4, 2, dtype=torch.float32, device="cuda")
    out = multi_scale_deformable_attention(*[t.requires_grad_(t.is_floating_point()) for t in inputs])
    assert out.is_cuda and "MSDeformAttnFunction" in type(out.grad_fn).__name__


# (B, Q, H, D, levels): tiny; B*Q*H rows beyond one block and past the grid bound (grid-stride loop)
# at D=32; D=5 (8 lanes per row, idle lanes), D=48 (lanes with 1 or 2 channels), D=1024 fp32
# (forward block shrunk to fit shared memory).
CUDA_CASES = [
    (2, 3, 2, 3, SHAPES_A),
    (2, 4500, 8, 32, [(64, 48), (32, 24), (16, 12)]),
    (3, 700, 4, 5, SHAPES_A + SHAPES_B),
    (2, 500, 3, 48, [(17, 9), (8, 5)]),
    (1, 64, 2, 1024, [(8, 8), (4, 4)]),
]


@requires_cuda
@pytest.mark.parametrize("batch,queries,heads,channels,shapes", CUDA_CASES)
def test_cuda_op_matches_pytorch_path_fp32(batch, queries, heads, channels, shapes):
    inputs = make_inputs(shapes, batch, queries, heads, channels, 4, dtype=torch.float32, device="cuda")
    grad_out = torch.randn(batch, queries, heads * channels, device="cuda")
    ref_out, ref_grads = grads(ms_deform_attn_pytorch, inputs, grad_out)
    out, out_grads = grads(ms_deform_attn_compiled, inputs, grad_out)
    names = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
    for name, got, ref in zip(names, (out, *out_grads), (ref_out, *ref_grads)):
        scale = max(ref.abs().max().item(), 1.0)
        err = (got - ref).abs().max().item() / scale
        assert err < 1e-5, f"{name}: max error {err:.2e} relative to max |ref| {scale:.3g}"


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


def test_graph_capture_uses_the_pytorch_path_with_list_shapes():
    """While torch.jit.trace / torch.export record a graph, the public function takes the PyTorch
    path (the compiled op cannot be stored in an exported file) and accepts the level sizes as a
    list of (H_l, W_l), which keeps them symbolic under torch.export."""
    inputs = make_inputs(SHAPES_A, 1, 3, 2, 3, 2, dtype=torch.float32)
    value, spatial_shapes, level_start_index, locations, weights = inputs
    expected = naive_msda(*[t.double() if t.is_floating_point() else t for t in inputs]).float()
    as_list = [tuple(hw) for hw in spatial_shapes.tolist()]
    torch.testing.assert_close(ms_deform_attn_pytorch(value, as_list, level_start_index, locations, weights),
                               expected, rtol=0, atol=1e-5)
    traced = torch.jit.trace(
        lambda v, loc, w: multi_scale_deformable_attention(v, spatial_shapes, level_start_index, loc, w),
        (value, locations, weights),
    )
    ops = {node.kind() for node in traced.graph.nodes()}
    assert "aten::grid_sampler" in ops and not any("PythonOp" in k or "mta_clip" in k for k in ops)
    torch.testing.assert_close(traced(value, locations, weights), expected, rtol=0, atol=1e-5)

    class Attn(torch.nn.Module):
        def forward(self, v, loc, w):
            return multi_scale_deformable_attention(v, as_list, level_start_index, loc, w)

    program = torch.export.export(Attn(), (value, locations, weights))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("grid_sampler" in t for t in targets) and not any("mta_clip" in t for t in targets)
    torch.testing.assert_close(program.module()(value, locations, weights), expected, rtol=0, atol=1e-5)
