"""Install `mta_clip`; builds the multi-scale deformable attention op as `mta_clip._C`.

The C++ CPU kernels are always compiled (the extension is optional: a compile failure leaves
the exact PyTorch path in charge). The CUDA kernels are added when a GPU and a CUDA toolkit are
present, or when FORCE_CUDA=1 (CI uses this to prove the CUDA sources compile on a GPU-less
machine). TORCH_CUDA_ARCH_LIST selects the architectures; set CUDA_HOME=/usr/local/cuda where
autodetection picks the wrong prefix.
"""
import glob
import os

from setuptools import find_packages, setup


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    csrc = os.path.join("mta_clip", "layers", "csrc")
    cpp_sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "*.cu")))
    if not cpp_sources:
        return [], {}
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    use_cuda = cuda_sources and CUDA_HOME is not None and (torch.cuda.is_available() or force_cuda)
    cxx_flags = ["-O3", "-std=c++17"]
    if use_cuda:
        ext = CUDAExtension(
            "mta_clip._C",
            cpp_sources + cuda_sources,
            include_dirs=[os.path.abspath(csrc)],
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17"]},
        )
    else:
        ext = CppExtension(
            "mta_clip._C",
            cpp_sources,
            include_dirs=[os.path.abspath(csrc)],
            extra_compile_args={"cxx": cxx_flags},
        )
    ext.optional = not force_cuda
    from torch.utils.cpp_extension import BuildExtension

    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="mta_clip",
    version="0.1.0",
    description="MTA-CLIP (ECCV 2024) and a Mask2Former semantic baseline for Detectron2",
    packages=find_packages(include=["mta_clip", "mta_clip.*"]),
    package_data={"mta_clip": ["layers/csrc/*"]},
    python_requires=">=3.10",
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
