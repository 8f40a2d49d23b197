// Multi-scale deformable attention op of mta_clip._C: declarations shared by the bindings and
// the CPU / CUDA kernel files. Inputs are validated by the entry points in ms_deform_attn.cpp;
// the kernels below assume contiguous tensors of one floating dtype on one device.
//
//   value              (B, S, H, D)        S = sum_l H_l * W_l
//   levels             heights, widths and start offsets of the L levels (host copy)
//   sampling_locations (B, Q, H, L, P, 2)  normalized (x, y)
//   attention_weights  (B, Q, H, L, P)
//   output             (B, Q, H * D)
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "ms_deform_attn_math.h"

namespace mta_clip {

// lane_group > 1 replays the CUDA kernels' channel split and lane reduction (tests only).
at::Tensor ms_deform_attn_cpu_forward(const at::Tensor& value, const msda::Levels& levels,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights, int64_t lane_group);

// Returns (grad_value, grad_sampling_locations, grad_attention_weights).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_cpu_backward(
    const at::Tensor& value, const msda::Levels& levels, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output, int64_t lane_group);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const msda::Levels& levels,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_cuda_backward(
    const at::Tensor& value, const msda::Levels& levels, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output);
#endif

}  // namespace mta_clip
