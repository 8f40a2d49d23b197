// Python bindings of mta_clip._C: input validation and CPU / CUDA dispatch of the multi-scale
// deformable attention op. Autograd is wired in Python (mta_clip/layers/ms_deform_attn.py).
#include <torch/extension.h>

#include <string>
#include <vector>

#include "ms_deform_attn.h"

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>  // CUDART_VERSION
#endif

namespace mta_clip {
namespace {

std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

// Checks the level sizes [H_0, W_0, H_1, W_1, ...] (host integers: nothing is read from a
// device) and fills the by-value struct the kernels use; level l starts at sum_{k<l} H_k * W_k.
msda::Levels read_levels(const at::Tensor& value, const std::vector<int64_t>& level_sizes) {
  const int64_t count = static_cast<int64_t>(level_sizes.size());
  TORCH_CHECK(count % 2 == 0, "ms_deform_attn: level_sizes must hold (H_l, W_l) pairs "
              "[H_0, W_0, H_1, W_1, ...], got ", count, " values");
  const int64_t num_levels = count / 2;
  TORCH_CHECK(num_levels >= 1 && num_levels <= msda::kMaxLevels,
              "ms_deform_attn: the compiled op supports 1 to ", msda::kMaxLevels,
              " levels, got L=", num_levels);
  msda::Levels levels{};
  levels.num_levels = static_cast<int>(num_levels);
  int64_t total = 0;
  for (int64_t l = 0; l < num_levels; ++l) {
    const int64_t height = level_sizes[2 * l], width = level_sizes[2 * l + 1];
    TORCH_CHECK(height >= 1 && width >= 1, "ms_deform_attn: level ", l,
                " has spatial shape (", height, ", ", width, "); both sizes must be >= 1");
    levels.height[l] = height;
    levels.width[l] = width;
    levels.start[l] = total;
    total += height * width;
  }
  TORCH_CHECK(total == value.size(1), "ms_deform_attn: value has S=", value.size(1),
              " positions but the level sizes sum to ", total);
  return levels;
}

void check_tensor(const at::Tensor& t, const char* name, int64_t dim, const at::Tensor& value) {
  TORCH_CHECK(t.dim() == dim, "ms_deform_attn: ", name, " must have ", dim, " dims, got ",
              shape_str(t));
  TORCH_CHECK(t.scalar_type() == value.scalar_type(), "ms_deform_attn: ", name, " has dtype ",
              t.scalar_type(), " but value has ", value.scalar_type(),
              " (all floating inputs must share one dtype)");
  TORCH_CHECK(t.device() == value.device(), "ms_deform_attn: ", name, " is on ", t.device(),
              " but value is on ", value.device());
  TORCH_CHECK(t.is_contiguous(), "ms_deform_attn: ", name, " must be contiguous");
}

msda::Levels check_inputs(const at::Tensor& value, const std::vector<int64_t>& level_sizes,
                          const at::Tensor& sampling_locations,
                          const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (B, S, H, D), got ",
              shape_str(value));
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "ms_deform_attn: the compiled op supports float32 and float64, got ",
              value.scalar_type());
  TORCH_CHECK(value.is_contiguous(), "ms_deform_attn: value must be contiguous");
  TORCH_CHECK(value.size(3) >= 1, "ms_deform_attn: value has D=0 channels");
  check_tensor(sampling_locations, "sampling_locations", 6, value);
  check_tensor(attention_weights, "attention_weights", 5, value);
  msda::Levels levels = read_levels(value, level_sizes);
  const int64_t batch = value.size(0), heads = value.size(2), num_levels = levels.num_levels;
  TORCH_CHECK(sampling_locations.size(0) == batch && sampling_locations.size(2) == heads &&
                  sampling_locations.size(3) == num_levels && sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must be (B=", batch, ", Q, H=", heads,
              ", L=", num_levels, ", P, 2), got ", shape_str(sampling_locations));
  const int64_t num_query = sampling_locations.size(1), num_points = sampling_locations.size(4);
  TORCH_CHECK(attention_weights.sizes() ==
                  at::IntArrayRef({batch, num_query, heads, num_levels, num_points}),
              "ms_deform_attn: attention_weights must be (", batch, ", ", num_query, ", ", heads,
              ", ", num_levels, ", ", num_points, "), got ", shape_str(attention_weights));
  return levels;
}

void check_lane_group_device(const at::Tensor& value, int64_t lane_group) {
  TORCH_CHECK(lane_group == 1 || value.device().is_cpu(),
              "ms_deform_attn: lane_group (a test-only replay of the CUDA channel split) is only "
              "available for CPU tensors");
}

at::Tensor forward(const at::Tensor& value, const std::vector<int64_t>& level_sizes,
                   const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
                   int64_t lane_group) {
  check_lane_group_device(value, lane_group);
  const msda::Levels levels =
      check_inputs(value, level_sizes, sampling_locations, attention_weights);
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_cuda_forward(value, levels, sampling_locations, attention_weights);
#else
    TORCH_CHECK(false, "ms_deform_attn: mta_clip._C was built without CUDA; rebuild with a CUDA "
                       "toolkit (or FORCE_CUDA=1) to run on ", value.device());
#endif
  }
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn: unsupported device ", value.device());
  return ms_deform_attn_cpu_forward(value, levels, sampling_locations, attention_weights,
                                    lane_group);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& value, const std::vector<int64_t>& level_sizes,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output, bool grad_value, bool grad_loc_attn, int64_t lane_group) {
  check_lane_group_device(value, lane_group);
  TORCH_CHECK(grad_value || grad_loc_attn,
              "ms_deform_attn: backward called with no gradient requested");
  const msda::Levels levels =
      check_inputs(value, level_sizes, sampling_locations, attention_weights);
  const int64_t expected[3] = {value.size(0), sampling_locations.size(1),
                               value.size(2) * value.size(3)};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected),
              "ms_deform_attn: grad_output must be (", expected[0], ", ", expected[1], ", ",
              expected[2], "), got ", shape_str(grad_output));
  check_tensor(grad_output, "grad_output", 3, value);
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_cuda_backward(value, levels, sampling_locations, attention_weights,
                                        grad_output, grad_value, grad_loc_attn);
#else
    TORCH_CHECK(false, "ms_deform_attn: mta_clip._C was built without CUDA; rebuild with a CUDA "
                       "toolkit (or FORCE_CUDA=1) to run on ", value.device());
#endif
  }
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn: unsupported device ", value.device());
  return ms_deform_attn_cpu_backward(value, levels, sampling_locations, attention_weights,
                                     grad_output, lane_group, grad_value, grad_loc_attn);
}

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

// CUDA runtime version the op was compiled against (e.g. 13000), 0 without CUDA.
int cuda_version() {
#ifdef WITH_CUDA
  return CUDART_VERSION;
#else
  return 0;
#endif
}

// "" if the CUDA kernels can launch on CUDA device `device`, else why not.
std::string cuda_launch_error(int64_t device) {
#ifdef WITH_CUDA
  return ms_deform_attn_cuda_launch_error(device);
#else
  return "mta_clip._C was built without CUDA kernels";
#endif
}

// Largest D the CUDA forward accepts for an element of `element_size` bytes (one row of D
// values must fit the shared memory of a one-warp block).
int64_t cuda_max_channels(int64_t element_size) {
  TORCH_CHECK(element_size > 0, "ms_deform_attn: element_size must be positive");
  return kCudaMaxSharedBytes / element_size;
}

}  // namespace
}  // namespace mta_clip

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mta_clip compiled ops: multi-scale deformable attention (CPU, and CUDA if built)";
  m.def("ms_deform_attn_forward", &mta_clip::forward,
        "Multi-scale deformable attention forward -> (B, Q, H*D); level_sizes is "
        "[H_0, W_0, H_1, W_1, ...]",
        py::arg("value"), py::arg("level_sizes"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::arg("lane_group") = 1);
  m.def("ms_deform_attn_backward", &mta_clip::backward,
        "Multi-scale deformable attention backward -> (grad_value, grad_sampling_locations, "
        "grad_attention_weights); gradients not requested are None and not computed",
        py::arg("value"), py::arg("level_sizes"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::arg("grad_output"), py::arg("grad_value") = true,
        py::arg("grad_loc_attn") = true, py::arg("lane_group") = 1);
  m.def("cuda_launch_error", &mta_clip::cuda_launch_error,
        "Empty string if the CUDA kernels can launch on the given CUDA device, else the reason",
        py::arg("device"));
  m.def("cuda_max_channels", &mta_clip::cuda_max_channels,
        "Largest D the CUDA forward accepts for the given element size in bytes",
        py::arg("element_size"));
  m.def("with_cuda", &mta_clip::with_cuda, "True if the CUDA kernels were compiled in");
  m.def("cuda_version", &mta_clip::cuda_version,
        "CUDA runtime version the op was compiled against (0 without CUDA)");
  m.def("lane_group_size", &mta_clip::msda::lane_group_size,
        "Lanes the CUDA kernels give one (b, q, h) row with D channels");
  m.attr("MAX_LEVELS") = mta_clip::msda::kMaxLevels;
}
