// CUDA kernels of multi-scale deformable attention (fp32 and fp64). The per-point math is in
// ms_deform_attn_math.h (shared with, and tested through, the C++ CPU kernels); this file adds
// thread indexing, the reduction over channels and atomics.
//
// Thread layout: every (b, q, h) row is served by a group of G = min(next_pow2(D), 32) adjacent
// lanes of one warp; lane j handles channels j, j + G, j + 2G, ... so loads and the grad_value
// atomics of a group touch consecutive addresses. A grid-stride loop covers any number of rows
// with a bounded grid. In the backward pass the per-lane partial sums of the location and
// attention-weight gradients are reduced inside the group with warp shuffles; the group's lane 0
// owns (and plainly stores) those gradients, so only grad_value needs atomics.
// Only c10/cuda headers: ATen/cuda/CUDAContext.h would pull in cuBLAS / cuSPARSE headers that a
// minimal CUDA toolkit (as on the CI machines) does not ship.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "ms_deform_attn.h"

namespace mta_clip {
namespace {

constexpr int kThreads = 256;                 // threads per block (a multiple of 32)
constexpr int64_t kMaxBlocks = 4096;          // grid bound; the grid-stride loop does the rest
constexpr size_t kMaxSharedBytes = kCudaMaxSharedBytes;  // default dynamic shared memory limit

struct AtomicAdd {
  template <typename scalar_t>
  __device__ __forceinline__ void operator()(scalar_t* ptr, scalar_t v) const {
    atomicAdd(ptr, v);
  }
};

struct Launch {
  int group;             // lanes per (b, q, h) row
  int threads;           // threads per block
  int64_t blocks;        // grid size
  int64_t total;         // rows * group (threads with work)
  int64_t total_padded;  // total rounded up to whole warps (uniform shuffles)
};

Launch make_launch(int64_t rows, int64_t channels, int threads) {
  Launch cfg;
  cfg.group = msda::lane_group_size(channels);
  cfg.threads = threads;
  cfg.total = rows * cfg.group;
  cfg.total_padded = (cfg.total + 31) / 32 * 32;
  cfg.blocks = std::min<int64_t>((cfg.total_padded + threads - 1) / threads, kMaxBlocks);
  return cfg;
}

// Forward: each group accumulates its output row in shared memory (lane-private slots, so no
// synchronisation is needed), then writes it out once.
template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ value, const msda::Levels levels,
                               const scalar_t* __restrict__ loc,
                               const scalar_t* __restrict__ attn, scalar_t* __restrict__ out,
                               int64_t num_value, int64_t num_query, int64_t num_heads,
                               int64_t channels, int64_t num_points, int group, int64_t total) {
  extern __shared__ __align__(sizeof(double)) unsigned char shared_bytes[];
  scalar_t* shared_rows = reinterpret_cast<scalar_t*>(shared_bytes);
  const int lane = threadIdx.x % group;
  scalar_t* acc = shared_rows + static_cast<int64_t>(threadIdx.x / group) * channels;
  const int64_t num_levels = levels.num_levels;
  const int64_t spatial_stride = num_heads * channels;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += step) {
    const int64_t row = t / group;  // (b * Q + q) * H + h
    const int64_t h = row % num_heads;
    const int64_t b = row / (num_heads * num_query);
    for (int64_t d = lane; d < channels; d += group) acc[d] = 0;
    const scalar_t* loc_row = loc + row * num_levels * num_points * 2;
    const scalar_t* attn_row = attn + row * num_levels * num_points;
    for (int64_t l = 0; l < num_levels; ++l) {
      const scalar_t* value_level =
          value + ((b * num_value + levels.start[l]) * num_heads + h) * channels;
      for (int64_t p = 0; p < num_points; ++p) {
        const int64_t lp = l * num_points + p;
        msda::Corners<scalar_t> c;
        msda::bilinear_corners(loc_row[2 * lp], loc_row[2 * lp + 1], levels.height[l],
                               levels.width[l], c);
        msda::forward_point(value_level, spatial_stride, c, attn_row[lp], acc,
                            static_cast<int64_t>(lane), channels, static_cast<int64_t>(group));
      }
    }
    scalar_t* out_row = out + row * channels;
    for (int64_t d = lane; d < channels; d += group) out_row[d] = acc[d];
  }
}

// Backward: the loop bound is padded to whole warps and idle lanes still take part in the
// shuffles, so every warp runs the same iterations with a full mask. kGradValue / kGradLocAttn
// drop the work of gradients nobody needs (the choice is uniform over the grid).
template <typename scalar_t, bool kGradValue, bool kGradLocAttn>
__device__ __forceinline__ void backward_rows(
    const scalar_t* __restrict__ value, const msda::Levels& levels,
    const scalar_t* __restrict__ loc, const scalar_t* __restrict__ attn,
    const scalar_t* __restrict__ grad_out, scalar_t* __restrict__ grad_value,
    scalar_t* __restrict__ grad_loc, scalar_t* __restrict__ grad_attn, int64_t num_value,
    int64_t num_query, int64_t num_heads, int64_t channels, int64_t num_points, int group,
    int64_t total, int64_t total_padded) {
  const int lane = threadIdx.x % group;
  const int64_t num_levels = levels.num_levels;
  const int64_t spatial_stride = num_heads * channels;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const AtomicAdd add;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       t < total_padded; t += step) {
    const bool active = t < total;
    const int64_t row = active ? t / group : 0;
    const int64_t h = row % num_heads;
    const int64_t b = row / (num_heads * num_query);
    const scalar_t* loc_row = loc + row * num_levels * num_points * 2;
    const scalar_t* attn_row = attn + row * num_levels * num_points;
    const scalar_t* grad_out_row = grad_out + row * channels;
    for (int64_t l = 0; l < num_levels; ++l) {
      const int64_t level_offset = ((b * num_value + levels.start[l]) * num_heads + h) * channels;
      for (int64_t p = 0; p < num_points; ++p) {
        const int64_t lp = l * num_points + p;
        scalar_t ga = 0, gx = 0, gy = 0;
        if (active) {
          msda::Corners<scalar_t> c;
          msda::bilinear_corners(loc_row[2 * lp], loc_row[2 * lp + 1], levels.height[l],
                                 levels.width[l], c);
          msda::backward_point<kGradValue, kGradLocAttn>(
              value + level_offset, kGradValue ? grad_value + level_offset : nullptr,
              spatial_stride, c, attn_row[lp], grad_out_row, static_cast<int64_t>(lane),
              channels, static_cast<int64_t>(group), add, ga, gx, gy);
        }
        if (kGradLocAttn) {
          // Sum over the group's lanes (groups are aligned, so xor offsets < group stay inside).
          for (int offset = group / 2; offset > 0; offset /= 2) {
            ga += __shfl_xor_sync(0xffffffffu, ga, offset);
            gx += __shfl_xor_sync(0xffffffffu, gx, offset);
            gy += __shfl_xor_sync(0xffffffffu, gy, offset);
          }
          if (active && lane == 0) {
            grad_attn[row * num_levels * num_points + lp] = ga;
            grad_loc[(row * num_levels * num_points + lp) * 2] = gx;
            grad_loc[(row * num_levels * num_points + lp) * 2 + 1] = gy;
          }
        }
      }
    }
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ value, const msda::Levels levels,
                                const scalar_t* __restrict__ loc,
                                const scalar_t* __restrict__ attn,
                                const scalar_t* __restrict__ grad_out,
                                scalar_t* __restrict__ grad_value, scalar_t* __restrict__ grad_loc,
                                scalar_t* __restrict__ grad_attn, int64_t num_value,
                                int64_t num_query, int64_t num_heads, int64_t channels,
                                int64_t num_points, int group, int64_t total,
                                int64_t total_padded, bool want_grad_value,
                                bool want_grad_loc_attn) {
  if (want_grad_value && want_grad_loc_attn) {
    backward_rows<scalar_t, true, true>(value, levels, loc, attn, grad_out, grad_value, grad_loc,
                                        grad_attn, num_value, num_query, num_heads, channels,
                                        num_points, group, total, total_padded);
  } else if (want_grad_value) {
    backward_rows<scalar_t, true, false>(value, levels, loc, attn, grad_out, grad_value, grad_loc,
                                         grad_attn, num_value, num_query, num_heads, channels,
                                         num_points, group, total, total_padded);
  } else {
    backward_rows<scalar_t, false, true>(value, levels, loc, attn, grad_out, grad_value, grad_loc,
                                         grad_attn, num_value, num_query, num_heads, channels,
                                         num_points, group, total, total_padded);
  }
}

}  // namespace

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const msda::Levels& levels,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  const c10::cuda::CUDAGuard device_guard(value.device());
  const int64_t batch = value.size(0), num_value = value.size(1), num_heads = value.size(2),
                channels = value.size(3);
  const int64_t num_query = sampling_locations.size(1), num_points = sampling_locations.size(4);
  at::Tensor out = at::empty({batch, num_query, num_heads * channels}, value.options());
  if (out.numel() == 0) return out;
  const size_t elem = value.element_size();
  // Shared memory holds one output row per group; shrink the block for very wide rows.
  const int group = msda::lane_group_size(channels);
  int threads = kThreads;
  while (threads > 32 && static_cast<size_t>(threads / group) * channels * elem > kMaxSharedBytes)
    threads /= 2;
  TORCH_CHECK(static_cast<size_t>(threads / group) * channels * elem <= kMaxSharedBytes,
              "ms_deform_attn: D=", channels, " channels do not fit the CUDA kernel's shared "
              "memory");
  const Launch cfg = make_launch(batch * num_query * num_heads, channels, threads);
  const size_t shared = static_cast<size_t>(threads / group) * channels * elem;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cuda_forward", [&] {
    forward_kernel<scalar_t><<<cfg.blocks, cfg.threads, shared, stream>>>(
        value.const_data_ptr<scalar_t>(), levels, sampling_locations.const_data_ptr<scalar_t>(),
        attention_weights.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
        num_value, num_query, num_heads, channels, num_points, cfg.group, cfg.total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_cuda_backward(
    const at::Tensor& value, const msda::Levels& levels, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output, bool want_grad_value,
    bool want_grad_loc_attn) {
  const c10::cuda::CUDAGuard device_guard(value.device());
  const int64_t batch = value.size(0), num_value = value.size(1), num_heads = value.size(2),
                channels = value.size(3);
  const int64_t num_query = sampling_locations.size(1), num_points = sampling_locations.size(4);
  at::Tensor grad_value, grad_loc, grad_attn;
  if (want_grad_value) {
    // Scattered with float atomics: the summation order, hence the last bits, vary per run.
    at::globalContext().alertNotDeterministic("ms_deform_attn_cuda_backward");
    grad_value = at::zeros_like(value);
  }
  if (want_grad_loc_attn) {
    // Every element is stored exactly once by its row's lane 0 (no zero fill needed).
    grad_loc = at::empty_like(sampling_locations);
    grad_attn = at::empty_like(attention_weights);
  }
  const int64_t rows = batch * num_query * num_heads;
  if ((!want_grad_value && !want_grad_loc_attn) || rows == 0 || num_points == 0) {
    return {grad_value, grad_loc, grad_attn};
  }
  const Launch cfg = make_launch(rows, channels, kThreads);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cuda_backward", [&] {
    backward_kernel<scalar_t><<<cfg.blocks, cfg.threads, 0, stream>>>(
        value.const_data_ptr<scalar_t>(), levels, sampling_locations.const_data_ptr<scalar_t>(),
        attention_weights.const_data_ptr<scalar_t>(), grad_output.const_data_ptr<scalar_t>(),
        want_grad_value ? grad_value.mutable_data_ptr<scalar_t>() : nullptr,
        want_grad_loc_attn ? grad_loc.mutable_data_ptr<scalar_t>() : nullptr,
        want_grad_loc_attn ? grad_attn.mutable_data_ptr<scalar_t>() : nullptr, num_value,
        num_query, num_heads, channels, num_points, cfg.group, cfg.total, cfg.total_padded,
        want_grad_value, want_grad_loc_attn);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace mta_clip
