// C++ CPU kernels of multi-scale deformable attention (fp32 and fp64). The per-point math is in
// ms_deform_attn_math.h (shared with the CUDA kernels); this file only loops.
//
// Work is split over (batch, head) pairs: every write of one pair, including the scattered
// grad_value writes, stays inside value[b, :, h, :], so threads never write the same memory.
//
// lane_group > 1 (tests only) replays the CUDA kernels' channel split on the CPU: each row's
// channels are visited by lane_group "lanes" with stride lane_group, and the lanes' partial
// location / weight gradients are combined with the same xor butterfly as the warp shuffles.
// The default lane_group == 1 is the fast path (unit stride, known at compile time).
#include <ATen/Parallel.h>

#include <type_traits>

#include "ms_deform_attn.h"

namespace mta_clip {
namespace {

struct PlainAdd {
  template <typename scalar_t>
  void operator()(scalar_t* ptr, scalar_t v) const {
    *ptr += v;
  }
};

constexpr int kMaxLanes = 32;

template <typename scalar_t, bool kLanes>
void forward_kernel(const scalar_t* value, const msda::Levels& levels, const scalar_t* loc,
                    const scalar_t* attn, scalar_t* out, int64_t batch, int64_t num_value,
                    int64_t num_query, int64_t num_heads, int64_t channels, int64_t num_points,
                    int64_t lane_group) {
  const int64_t lanes = kLanes ? lane_group : 1;
  const int64_t num_levels = levels.num_levels;
  const int64_t spatial_stride = num_heads * channels;
  at::parallel_for(0, batch * num_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / num_heads;
      const int64_t h = bh % num_heads;
      for (int64_t q = 0; q < num_query; ++q) {
        const int64_t row = (b * num_query + q) * num_heads + h;  // index of (b, q, h)
        scalar_t* out_row = out + row * channels;
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
            for (int64_t lane = 0; lane < lanes; ++lane) {
              msda::forward_point(value_level, spatial_stride, c, attn_row[lp], out_row, lane,
                                  channels, lanes);
            }
          }
        }
      }
    }
  });
}

// Sums lane partials like `v += __shfl_xor_sync(mask, v, offset)` for offset = lanes/2 .. 1
// and returns lane 0's value.
template <typename scalar_t>
scalar_t butterfly_sum(scalar_t* partial, int64_t lanes) {
  scalar_t previous[kMaxLanes];
  for (int64_t offset = lanes / 2; offset > 0; offset /= 2) {
    for (int64_t i = 0; i < lanes; ++i) previous[i] = partial[i];
    for (int64_t i = 0; i < lanes; ++i) partial[i] = previous[i] + previous[i ^ offset];
  }
  return partial[0];
}

template <typename scalar_t, bool kLanes, bool kGradValue, bool kGradLocAttn>
void backward_kernel(const scalar_t* value, const msda::Levels& levels, const scalar_t* loc,
                     const scalar_t* attn, const scalar_t* grad_out, scalar_t* grad_value,
                     scalar_t* grad_loc, scalar_t* grad_attn, int64_t batch, int64_t num_value,
                     int64_t num_query, int64_t num_heads, int64_t channels,
                     int64_t num_points, int64_t lane_group) {
  const int64_t num_levels = levels.num_levels;
  const int64_t spatial_stride = num_heads * channels;
  at::parallel_for(0, batch * num_heads, 1, [&](int64_t begin, int64_t end) {
    const PlainAdd add;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / num_heads;
      const int64_t h = bh % num_heads;
      for (int64_t q = 0; q < num_query; ++q) {
        const int64_t row = (b * num_query + q) * num_heads + h;
        const scalar_t* grad_out_row = grad_out + row * channels;
        const scalar_t* loc_row = loc + row * num_levels * num_points * 2;
        const scalar_t* attn_row = attn + row * num_levels * num_points;
        scalar_t* grad_loc_row = kGradLocAttn ? grad_loc + row * num_levels * num_points * 2 : nullptr;
        scalar_t* grad_attn_row = kGradLocAttn ? grad_attn + row * num_levels * num_points : nullptr;
        for (int64_t l = 0; l < num_levels; ++l) {
          const int64_t level_offset =
              ((b * num_value + levels.start[l]) * num_heads + h) * channels;
          for (int64_t p = 0; p < num_points; ++p) {
            const int64_t lp = l * num_points + p;
            msda::Corners<scalar_t> c;
            msda::bilinear_corners(loc_row[2 * lp], loc_row[2 * lp + 1], levels.height[l],
                                   levels.width[l], c);
            scalar_t ga = 0, gx = 0, gy = 0;
            scalar_t* grad_value_level = kGradValue ? grad_value + level_offset : nullptr;
            if constexpr (!kLanes) {
              msda::backward_point<kGradValue, kGradLocAttn>(value + level_offset, grad_value_level,
                                   spatial_stride, c, attn_row[lp], grad_out_row, int64_t{0},
                                   channels, int64_t{1}, add, ga, gx, gy);
            } else {
              scalar_t pa[kMaxLanes], px[kMaxLanes], py[kMaxLanes];
              for (int64_t lane = 0; lane < lane_group; ++lane) {
                pa[lane] = px[lane] = py[lane] = 0;
                msda::backward_point<kGradValue, kGradLocAttn>(value + level_offset, grad_value_level,
                                     spatial_stride, c, attn_row[lp], grad_out_row, lane, channels,
                                     lane_group, add, pa[lane], px[lane], py[lane]);
              }
              ga = butterfly_sum(pa, lane_group);
              gx = butterfly_sum(px, lane_group);
              gy = butterfly_sum(py, lane_group);
            }
            if constexpr (kGradLocAttn) {
              grad_attn_row[lp] = ga;
              grad_loc_row[2 * lp] = gx;
              grad_loc_row[2 * lp + 1] = gy;
            }
          }
        }
      }
    }
  });
}

void check_lane_group(int64_t lane_group) {
  TORCH_CHECK(lane_group >= 1 && lane_group <= kMaxLanes && (lane_group & (lane_group - 1)) == 0,
              "ms_deform_attn: lane_group must be a power of two in [1, ", kMaxLanes, "], got ",
              lane_group);
}

}  // namespace

at::Tensor ms_deform_attn_cpu_forward(const at::Tensor& value, const msda::Levels& levels,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights, int64_t lane_group) {
  check_lane_group(lane_group);
  const int64_t batch = value.size(0), num_value = value.size(1), num_heads = value.size(2),
                channels = value.size(3);
  const int64_t num_query = sampling_locations.size(1), num_points = sampling_locations.size(4);
  at::Tensor out = at::zeros({batch, num_query, num_heads * channels}, value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cpu_forward", [&] {
    const auto run = lane_group == 1 ? forward_kernel<scalar_t, false>
                                     : forward_kernel<scalar_t, true>;
    run(value.const_data_ptr<scalar_t>(), levels, sampling_locations.const_data_ptr<scalar_t>(),
        attention_weights.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), batch,
        num_value, num_query, num_heads, channels, num_points, lane_group);
  });
  return out;
}

// Returns (grad_value, grad_sampling_locations, grad_attention_weights); a gradient that is not
// requested comes back undefined and costs nothing. grad_value is scattered (so zero-filled);
// every element of the other two is written exactly once (so left uninitialised).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_cpu_backward(
    const at::Tensor& value, const msda::Levels& levels, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output, int64_t lane_group,
    bool want_grad_value, bool want_grad_loc_attn) {
  check_lane_group(lane_group);
  const int64_t batch = value.size(0), num_value = value.size(1), num_heads = value.size(2),
                channels = value.size(3);
  const int64_t num_query = sampling_locations.size(1), num_points = sampling_locations.size(4);
  at::Tensor grad_value, grad_loc, grad_attn;
  if (want_grad_value) grad_value = at::zeros_like(value);
  if (want_grad_loc_attn) {
    grad_loc = at::empty_like(sampling_locations);
    grad_attn = at::empty_like(attention_weights);
  }
  if (!want_grad_value && !want_grad_loc_attn) return {grad_value, grad_loc, grad_attn};
  if (batch * num_query * num_heads * channels == 0) return {grad_value, grad_loc, grad_attn};
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_cpu_backward", [&] {
    const auto pick = [&](auto grad_value_flag, auto grad_loc_attn_flag) {
      constexpr bool kV = decltype(grad_value_flag)::value;
      constexpr bool kLA = decltype(grad_loc_attn_flag)::value;
      return lane_group == 1 ? backward_kernel<scalar_t, false, kV, kLA>
                             : backward_kernel<scalar_t, true, kV, kLA>;
    };
    const auto run = !want_grad_loc_attn ? pick(std::true_type{}, std::false_type{})
                     : !want_grad_value  ? pick(std::false_type{}, std::true_type{})
                                         : pick(std::true_type{}, std::true_type{});
    run(value.const_data_ptr<scalar_t>(), levels, sampling_locations.const_data_ptr<scalar_t>(),
        attention_weights.const_data_ptr<scalar_t>(), grad_output.const_data_ptr<scalar_t>(),
        want_grad_value ? grad_value.mutable_data_ptr<scalar_t>() : nullptr,
        want_grad_loc_attn ? grad_loc.mutable_data_ptr<scalar_t>() : nullptr,
        want_grad_loc_attn ? grad_attn.mutable_data_ptr<scalar_t>() : nullptr, batch, num_value,
        num_query, num_heads, channels, num_points, lane_group);
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace mta_clip
