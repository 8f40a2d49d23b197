// Per-sample math of multi-scale deformable attention, shared by the C++ CPU kernels and the
// CUDA kernels. Everything that decides a number lives here: the bilinear corner weights and
// their bounds (zero padding outside the map, align_corners=False), the forward accumulation and
// the value / location / attention-weight gradients of one sampling point. The kernels add only
// the loops over (batch, query, head, level, point), thread indexing and atomics.
//
// The header compiles with plain g++ (no CUDA): the qualifiers are behind MSDA_HOST_DEVICE.
//
// Conventions (matching torch.nn.functional.grid_sample, padding_mode="zeros",
// align_corners=False, after mapping a location u in [0, 1] to 2u - 1):
//   value of one level:  (H_l, W_l) cells, cell (i, j) has its centre at ((j + 0.5) / W_l,
//                        (i + 0.5) / H_l) in normalized (x, y);
//   pixel coordinates:   w_im = x * W_l - 0.5,  h_im = y * H_l - 0.5;
//   corners:             (y0, x0), (y0, x1), (y1, x0), (y1, x1) with x0 = floor(w_im), x1 = x0 + 1;
//   a corner outside [0, H_l) x [0, W_l) contributes zero (and receives no gradient).
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define MSDA_HOST_DEVICE __host__ __device__
#define MSDA_INLINE __host__ __device__ __forceinline__
#define MSDA_RESTRICT __restrict__
#define MSDA_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define MSDA_HOST_DEVICE
#define MSDA_INLINE inline __attribute__((always_inline))
#define MSDA_RESTRICT __restrict__
#define MSDA_UNROLL _Pragma("GCC unroll 4")
#else
#define MSDA_HOST_DEVICE
#define MSDA_INLINE inline
#define MSDA_RESTRICT
#define MSDA_UNROLL
#endif

namespace mta_clip {
namespace msda {

// Levels are passed to the kernels by value; more than this is refused with a clear error.
constexpr int kMaxLevels = 16;

struct Levels {
  int64_t height[kMaxLevels];
  int64_t width[kMaxLevels];
  int64_t start[kMaxLevels];  // first index of the level in the flattened S axis
  int num_levels;
};

// The four bilinear corners of one sampling point on one level.
template <typename scalar_t>
struct Corners {
  int64_t index[4];        // spatial index y * W_l + x inside the level (meaningful if valid)
  bool valid[4];           // inside the map
  scalar_t weight[4];      // bilinear weight (0 for invalid corners)
  scalar_t dweight_dx[4];  // d weight / d x for the normalized location x (includes W_l)
  scalar_t dweight_dy[4];  // d weight / d y for the normalized location y (includes H_l)
};

// Lanes that share one (b, q, h) row in the CUDA kernels: the next power of two >= D, capped at a
// warp. Lane j handles channels j, j + G, j + 2G, ... (the d_begin / d_step of the functions below).
MSDA_INLINE int lane_group_size(int64_t channels) {
  int group = 1;
  while (group < channels && group < 32) group *= 2;
  return group;
}

MSDA_INLINE float msda_floor(float x) { return floorf(x); }
MSDA_INLINE double msda_floor(double x) { return floor(x); }

// Bilinear corners, weights, weight derivatives and bounds of normalized location (x, y).
template <typename scalar_t>
MSDA_INLINE void bilinear_corners(scalar_t x, scalar_t y, int64_t height, int64_t width,
                                  Corners<scalar_t>& c) {
  const scalar_t w_im = x * static_cast<scalar_t>(width) - static_cast<scalar_t>(0.5);
  const scalar_t h_im = y * static_cast<scalar_t>(height) - static_cast<scalar_t>(0.5);
MSDA_UNROLL
  for (int k = 0; k < 4; ++k) {
    c.index[k] = 0;
    c.valid[k] = false;
    c.weight[k] = 0;
    c.dweight_dx[k] = 0;
    c.dweight_dy[k] = 0;
  }
  // Outside [-1, size) on either axis no corner is inside the map; this also rejects NaN and
  // huge values before they are converted to integers.
  if (!(w_im >= static_cast<scalar_t>(-1) && w_im < static_cast<scalar_t>(width) &&
        h_im >= static_cast<scalar_t>(-1) && h_im < static_cast<scalar_t>(height))) {
    return;
  }
  const scalar_t x0f = msda_floor(w_im);
  const scalar_t y0f = msda_floor(h_im);
  const int64_t x0 = static_cast<int64_t>(x0f);
  const int64_t y0 = static_cast<int64_t>(y0f);
  const scalar_t lx = w_im - x0f;  // fraction towards x1
  const scalar_t ly = h_im - y0f;  // fraction towards y1
  const scalar_t hx = static_cast<scalar_t>(1) - lx;
  const scalar_t hy = static_cast<scalar_t>(1) - ly;
  const scalar_t sw = static_cast<scalar_t>(width);   // d w_im / d x
  const scalar_t sh = static_cast<scalar_t>(height);  // d h_im / d y

  const int64_t cx[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t cy[4] = {y0, y0, y0 + 1, y0 + 1};
  const scalar_t w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const scalar_t dx[4] = {-hy * sw, hy * sw, -ly * sw, ly * sw};
  const scalar_t dy[4] = {-hx * sh, -lx * sh, hx * sh, lx * sh};
MSDA_UNROLL
  for (int k = 0; k < 4; ++k) {
    if (cx[k] >= 0 && cx[k] < width && cy[k] >= 0 && cy[k] < height) {
      c.valid[k] = true;
      c.index[k] = cy[k] * width + cx[k];
      c.weight[k] = w[k];
      c.dweight_dx[k] = dx[k];
      c.dweight_dy[k] = dy[k];
    }
  }
}

// Forward of one sampling point: out[d] += attn * bilinear(value)[d] for d in
// [d_begin, d_end) with step d_step.
//   value_level: value + ((b * S + start_l) * H + h) * D, i.e. channel 0 of (b, level start, h);
//   spatial_stride: H * D (distance between consecutive spatial positions);
//   out: channel 0 of the output row of (b, q, h).
template <typename scalar_t>
MSDA_INLINE void forward_point(const scalar_t* MSDA_RESTRICT value_level, int64_t spatial_stride,
                               const Corners<scalar_t>& c, scalar_t attn,
                               scalar_t* MSDA_RESTRICT out, int64_t d_begin, int64_t d_end,
                               int64_t d_step) {
MSDA_UNROLL
  for (int k = 0; k < 4; ++k) {
    if (!c.valid[k]) continue;
    const scalar_t coef = attn * c.weight[k];
    const scalar_t* MSDA_RESTRICT v = value_level + c.index[k] * spatial_stride;
    for (int64_t d = d_begin; d < d_end; d += d_step) out[d] += coef * v[d];
  }
}

// Backward of one sampling point over the channels [d_begin, d_end) step d_step.
//   kGradValue:   grad_value receives attn * weight_k * grad_out[d] at each valid corner through
//                 add(ptr, v) (plain += on the CPU, atomicAdd on the GPU);
//   kGradLocAttn: grad_attn += sum_d grad_out[d] * sample[d];
//                 grad_x/y  += attn * sum_d grad_out[d] * d sample[d] / d x|y.
// Gradients nobody needs are skipped at compile time (grad_value_level may then be null).
// The partial sums cover only the given channels; the caller reduces them over all channels.
template <bool kGradValue, bool kGradLocAttn, typename scalar_t, typename AddFn>
MSDA_INLINE void backward_point(const scalar_t* MSDA_RESTRICT value_level,
                                scalar_t* MSDA_RESTRICT grad_value_level, int64_t spatial_stride,
                                const Corners<scalar_t>& c, scalar_t attn,
                                const scalar_t* MSDA_RESTRICT grad_out, int64_t d_begin,
                                int64_t d_end, int64_t d_step, const AddFn& add,
                                scalar_t& grad_attn, scalar_t& grad_x, scalar_t& grad_y) {
MSDA_UNROLL
  for (int k = 0; k < 4; ++k) {
    if (!c.valid[k]) continue;
    const scalar_t coef = attn * c.weight[k];
    const int64_t offset = c.index[k] * spatial_stride;
    const scalar_t* MSDA_RESTRICT v = value_level + offset;
    scalar_t* MSDA_RESTRICT gv = kGradValue ? grad_value_level + offset : nullptr;
    scalar_t dot = 0;  // sum_d grad_out[d] * value_corner[d]
    for (int64_t d = d_begin; d < d_end; d += d_step) {
      const scalar_t g = grad_out[d];
      if (kGradLocAttn) dot += g * v[d];
      if (kGradValue) add(gv + d, coef * g);
    }
    if (kGradLocAttn) {
      grad_attn += c.weight[k] * dot;
      grad_x += attn * c.dweight_dx[k] * dot;
      grad_y += attn * c.dweight_dy[k] * dot;
    }
  }
}

}  // namespace msda
}  // namespace mta_clip
