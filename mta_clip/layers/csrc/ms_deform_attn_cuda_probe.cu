// Can the CUDA kernels of mta_clip._C run on a given device? A library built for sm_80 / sm_90
// without PTX loads fine on a newer GPU (e.g. sm_100) and fails only at the first launch with
// "no kernel image is available". Every .cu file of the extension is compiled with the same
// -gencode flags, so launching the empty kernel below answers for the real kernels too.
// (Kept out of ms_deform_attn_cuda.cu, which the CUDA warp emulator compiles verbatim.)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <string>

#include "ms_deform_attn.h"

namespace mta_clip {
namespace {

__global__ void probe_kernel(int* flag) {
  if (flag != nullptr) *flag = 1;
}

}  // namespace

std::string ms_deform_attn_cuda_launch_error(int64_t device) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error so later CUDA calls do not see it
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
  }
  if (device < 0 || device >= count) {
    return "CUDA device " + std::to_string(device) + " does not exist (" +
           std::to_string(count) + " visible)";
  }
  const c10::cuda::CUDAGuard device_guard(static_cast<c10::DeviceIndex>(device));
  cudaFuncAttributes attributes;
  err = cudaFuncGetAttributes(&attributes, probe_kernel);
  if (err == cudaSuccess) {
    // The launch itself reports a missing image or a driver too old for the PTX; no sync needed.
    probe_kernel<<<1, 1, 0, c10::cuda::getCurrentCUDAStream()>>>(nullptr);
    err = cudaGetLastError();
  } else {
    (void)cudaGetLastError();
  }
  if (err != cudaSuccess) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, static_cast<int>(device));
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, static_cast<int>(device));
    (void)cudaGetLastError();
    return std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) +
           ") on CUDA device " + std::to_string(device) + " with compute capability " +
           std::to_string(major) + "." + std::to_string(minor);
  }
  return "";
}

}  // namespace mta_clip
