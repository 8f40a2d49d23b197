"""Environment report for bug reports: ``python -m mta_clip.collect_env``.

Prints Python / torch / CUDA / detectron2 / open_clip versions, the visible GPUs, the CUDA
toolkit used for builds, and whether the compiled op ``mta_clip._C`` is built and loadable
(and with which kernels).
"""

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import List, Tuple

__all__ = ["collect_env_info", "main"]


def _version(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is reported, not raised
        return f"not importable ({type(exc).__name__}: {exc})"
    return str(getattr(module, "__version__", "unknown version"))


def _dist_version(dist_name: str) -> str:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _nvcc_version() -> str:
    """First nvcc of $CUDA_HOME/bin, /usr/local/cuda/bin, $PATH, with its release."""
    candidates = [os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc"), "/usr/local/cuda/bin/nvcc"]
    candidates.append(shutil.which("nvcc") or "")
    for nvcc in candidates:
        if nvcc and os.path.isfile(nvcc):
            try:
                text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError) as exc:
                return f"{nvcc}: failed ({exc})"
            match = re.search(r"release ([\d.]+), V([\d.]+)", text)
            lines = text.strip().splitlines()
            return f"{nvcc}: {match.group(0) if match else (lines[-1] if lines else 'no version output')}"
    return "not found"


def _detectron2_ops() -> str:
    """Detectron2's own compiled ops are not used by this project (its deformable attention is
    ``mta_clip._C``), so their absence is normal."""
    if importlib.util.find_spec("detectron2") is None:
        return "detectron2 not installed"
    try:
        importlib.import_module("detectron2._C")
    except ImportError:
        return "not built (fine: this project does not use Detectron2's C++/CUDA ops)"
    return "built"


def _op_rows() -> List[Tuple[str, str]]:
    rows = []
    spec = importlib.util.find_spec("mta_clip._C")
    rows.append(("mta_clip._C built", f"yes ({spec.origin})" if spec is not None else "no"))
    from mta_clip.layers import ms_deform_attn as msda

    error = msda.ms_deform_attn_op_import_error()
    rows.append(("mta_clip._C loadable", "yes" if error is None else f"no ({error})"))
    if error is None:
        cuda_version = msda._C.cuda_version()
        built = f"yes (CUDA {cuda_version // 1000}.{cuda_version % 1000 // 10})" if msda._C.with_cuda() else "no"
        rows.append(("mta_clip._C CUDA kernels", built))
    rows.append(
        (
            "deform attn on CPU",
            ("C++ kernel" if msda.ms_deform_attn_op_available("cpu") and msda.USE_COMPILED_ON_CPU else "PyTorch path"),
        )
    )
    rows.append(
        (
            "deform attn on CUDA",
            "CUDA kernel" if msda.ms_deform_attn_op_available("cuda") else "PyTorch path (no usable CUDA op)",
        )
    )
    return rows


def collect_env_info() -> str:
    """The report as a two-column text table."""
    import torch

    rows: List[Tuple[str, str]] = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("platform", platform.platform()),
        ("numpy", _version("numpy")),
        ("torch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"),
        ("torch CUDA build", str(torch.version.cuda)),
        ("torchvision", _version("torchvision")),
        ("detectron2", _version("detectron2")),
        ("detectron2._C", _detectron2_ops()),
        ("open_clip", _version("open_clip")),
        (
            "mta_clip",
            f"{_dist_version('mta_clip')} @ {os.path.dirname(importlib.import_module('mta_clip').__file__)}",
        ),
    ]
    cuda_ok = torch.cuda.is_available()
    rows.append(("CUDA available", str(cuda_ok)))
    if cuda_ok:
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            rows.append((f"GPU {i}", f"{torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})"))
        rows.append(("cuDNN", str(torch.backends.cudnn.version())))
    rows.append(("CUDA_HOME", os.environ.get("CUDA_HOME", "(unset)")))
    rows.append(("nvcc", _nvcc_version()))
    rows.append(("TORCH_CUDA_ARCH_LIST", os.environ.get("TORCH_CUDA_ARCH_LIST", "(unset)")))
    rows.append(("FORCE_CUDA", os.environ.get("FORCE_CUDA", "(unset)")))
    rows.extend(_op_rows())
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main() -> None:
    sys.stdout.write(collect_env_info() + "\n")


if __name__ == "__main__":
    main()
