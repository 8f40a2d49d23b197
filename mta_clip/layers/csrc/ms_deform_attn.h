// Multi-scale deformable attention op of mta_clip._C: declarations shared by the bindings and
// the CPU / CUDA kernel files. Inputs are validated by the entry points in bindings.cpp;
// the kernels below assume contiguous tensors of one floating dtype on one device.
//
//   value              (B, S, H, D)        S = sum_l H_l * W_l
//   levels             heights, widths and start offsets of the L levels (host copy)
//   sampling_locations (B, Q, H, L, P, 2)  normalized (x, y)
//   attention_weights  (B, Q, H, L, P)
//   output             (B, Q, H * D)
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>

#include "ms_deform_attn_math.h"

namespace mta_clip {

// lane_group > 1 replays the CUDA kernels' channel split and lane reduction (tests only).
at::Tensor ms_deform_attn_cpu_forward(const at::Tensor& value, const msda::Levels& levels,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights, int64_t lane_group);

// Returns (grad_value, grad_sampling_locations, grad_attention_weights); with
// want_grad_value / want_grad_loc_attn false the corresponding gradients are not computed and
// come back undefined (at least one must be true).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_cpu_backward(
    const at::Tensor& value, const msda::Levels& levels, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output, int64_t lane_group,
    bool want_grad_value = true, bool want_grad_loc_attn = true);

// The CUDA forward keeps one output row (D values) per lane group in shared memory, at most this
// many bytes per block; a row that does not fit even in a one-warp block (D * sizeof(scalar) >
// this) is refused by the CUDA forward, and the Python dispatch sends it to the PyTorch path.
constexpr int64_t kCudaMaxSharedBytes = 48 * 1024;

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const msda::Levels& levels,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);

// Same contract as ms_deform_attn_cpu_backward. Accumulates grad_value with float atomics, so
// it reports itself to torch.use_deterministic_algorithms (alertNotDeterministic).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_cuda_backward(
    const at::Tensor& value, const msda::Levels& levels, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output,
    bool want_grad_value = true, bool want_grad_loc_attn = true);

// Empty if the kernels can launch on CUDA device `device` (a kernel image or PTX for its
// architecture is in the library and the driver accepts it), else the CUDA runtime's error.
std::string ms_deform_attn_cuda_launch_error(int64_t device);
#endif

}  // namespace mta_clip
