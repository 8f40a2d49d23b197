"""Install `mta_clip`; builds the multi-scale deformable attention op as `mta_clip._C`.

The C++ CPU kernels are always compiled (the extension is optional: a compile failure leaves
the exact PyTorch path in charge). The CUDA kernels are added when a GPU and a CUDA toolkit are
present, or when FORCE_CUDA=1 (CI uses this to prove the CUDA sources compile on a GPU-less
machine). TORCH_CUDA_ARCH_LIST selects the architectures (default without a visible GPU:
DEFAULT_CUDA_ARCH_LIST); the newest listed one always gets PTX too ("+PTX"), so the kernels also
run, JIT-compiled by the driver, on GPUs newer than the list. Set CUDA_HOME=/usr/local/cuda where
autodetection picks the wrong prefix.
"""

import glob
import os

from setuptools import find_packages, setup

# Architectures built when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible (A100, H100/H200;
# the PTX of 9.0 serves newer GPUs, e.g. Blackwell, through the driver's JIT).
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def cuda_arch_list_with_ptx(arch_list: str) -> str:
    """``arch_list`` ("8.0;9.0", also space-separated) with "+PTX" on its newest architecture
    unless some entry already has it. Named lists (e.g. "Hopper") are left to torch."""
    archs = [a for a in arch_list.replace(" ", ";").split(";") if a]
    if not archs or any(a.endswith("+PTX") for a in archs):
        return ";".join(archs)
    try:
        newest = max(archs, key=lambda a: tuple(int(x) for x in a.split(".")))
    except ValueError:  # a named architecture: torch expands it (its named lists carry PTX)
        return ";".join(archs)
    return ";".join(a + "+PTX" if a == newest else a for a in archs)


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    csrc = os.path.join("mta_clip", "layers", "csrc")
    cpp_sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "*.cu")))
    if not cpp_sources:
        return [], {}
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    if force_cuda and (CUDA_HOME is None or not cuda_sources):
        raise RuntimeError(
            f"FORCE_CUDA=1 but CUDA_HOME={CUDA_HOME!r} and {len(cuda_sources)} .cu sources in "
            f"{csrc}; set CUDA_HOME=/usr/local/cuda (a CUDA toolkit with bin/nvcc)"
        )
    use_cuda = bool(cuda_sources) and CUDA_HOME is not None and (torch.cuda.is_available() or force_cuda)
    if use_cuda:
        requested = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
        if requested and requested != "native":
            os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list_with_ptx(requested)
        elif not torch.cuda.is_available():  # torch would find no architecture to build for
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        # (with a visible GPU and no list, torch builds for that GPU and adds PTX itself)
    # No -std flag: torch's extension builder picks the standard its headers need (C++20).
    cxx_flags = ["-O3"]
    if use_cuda:
        ext = CUDAExtension(
            "mta_clip._C",
            cpp_sources + cuda_sources,
            include_dirs=[os.path.abspath(csrc)],
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        )
    else:
        ext = CppExtension(
            "mta_clip._C",
            cpp_sources,
            include_dirs=[os.path.abspath(csrc)],
            extra_compile_args={"cxx": cxx_flags},
        )
    # Optional unless FORCE_CUDA=1: a failed build leaves the PyTorch path in charge (the tests
    # of the compiled op import mta_clip._C directly, so CI still fails on a broken build).
    ext.optional = not force_cuda

    class _BuildExtension(BuildExtension):
        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except (RuntimeError, OSError) as exc:  # torch's ninja build raises RuntimeError
                if not getattr(extension, "optional", False):
                    raise
                # Never leave a stale library from an earlier build in the source tree.
                stale = os.path.join(os.path.dirname(os.path.abspath(__file__)), self.get_ext_filename(extension.name))
                if os.path.exists(stale):
                    os.remove(stale)
                self.warn(
                    f"building optional extension {extension.name} failed ({exc}); mta_clip will use the PyTorch path"
                )

    return [ext], {"build_ext": _BuildExtension.with_options(use_ninja=True)}


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
