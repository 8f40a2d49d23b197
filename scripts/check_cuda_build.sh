#!/usr/bin/env bash
# Proves the C++/CUDA sources of mta_clip._C compile (no GPU needed): builds the extension with
# FORCE_CUDA=1 into temporary directories, so the in-place CPU build is never replaced, checks
# with cuobjdump that the library holds SASS (a cubin) for every requested architecture and PTX
# for the newest one (setup.py adds "+PTX" to it), and loads it.
# Exits non-zero on any compile or link error or missing image.
#
#   bash scripts/check_cuda_build.sh            # TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0+PTX"
#   TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=4 bash scripts/check_cuda_build.sh
#
# cuobjdump: $CUDA_HOME/bin/cuobjdump, else the one of the pinned nvidia-cuda-cuobjdump wheel
# (requirements.txt), else $CUOBJDUMP.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export FORCE_CUDA=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0+PTX"}
export MAX_JOBS=${MAX_JOBS:-2}

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "[check_cuda_build] no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  exit 1
fi
CUOBJDUMP=${CUOBJDUMP:-}
if [ -z "$CUOBJDUMP" ] && [ -x "$CUDA_HOME/bin/cuobjdump" ]; then CUOBJDUMP="$CUDA_HOME/bin/cuobjdump"; fi
if [ -z "$CUOBJDUMP" ]; then
  CUOBJDUMP=$("$PY" - <<'PYEOF'
import glob
import os

import nvidia  # namespace package of NVIDIA's wheels (nvidia-cuda-cuobjdump)

hits = [p for d in nvidia.__path__ for p in sorted(glob.glob(os.path.join(d, "*", "bin", "cuobjdump")))]
print(hits[0] if hits else "")
PYEOF
  ) || CUOBJDUMP=""
fi
if [ -z "$CUOBJDUMP" ] || [ ! -x "$CUOBJDUMP" ]; then
  echo "[check_cuda_build] no cuobjdump: not in $CUDA_HOME/bin and the nvidia-cuda-cuobjdump wheel" \
       "(requirements.txt) is not installed; set CUOBJDUMP=/path/to/cuobjdump" >&2
  exit 1
fi
TMP=$(mktemp -d -t mta_clip_cuda_build.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
echo "[check_cuda_build] CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
START=$(date +%s)
"$PY" setup.py -q build_ext --build-temp "$TMP/temp" --build-lib "$TMP/lib"
SO=$(ls "$TMP"/lib/mta_clip/_C*.so 2>/dev/null | head -n 1)
if [ -z "$SO" ]; then
  echo "[check_cuda_build] build finished but produced no mta_clip/_C*.so" >&2
  exit 1
fi

# SASS for every requested architecture ("8.0" -> an sm_80 cubin) and PTX for the newest one.
ELF=$("$CUOBJDUMP" --list-elf "$SO")
PTX=$("$CUOBJDUMP" --list-ptx "$SO")
echo "[check_cuda_build] $CUOBJDUMP ($("$CUOBJDUMP" --version | tail -n 1)):"
echo "$ELF" | sed 's/^/  /'
echo "$PTX" | sed 's/^/  /'
"$PY" - "$TORCH_CUDA_ARCH_LIST" "$ELF" "$PTX" <<'PYEOF'
import re
import sys

arch_list, elf, ptx = sys.argv[1:4]
archs = [a for a in arch_list.replace(" ", ";").split(";") if a]
numbers = [a.split("+")[0] for a in archs]
if not all(re.fullmatch(r"\d+\.\d+", n) for n in numbers):
    sys.exit(f"[check_cuda_build] TORCH_CUDA_ARCH_LIST={arch_list!r}: give numeric architectures (e.g. 8.0;9.0)")
sass = set(re.findall(r"\.sm_(\d+)[a-z]?\.cubin", elf))
ptx_archs = set(re.findall(r"\.sm_(\d+)[a-z]?\.ptx", ptx))
wanted = [n.replace(".", "") for n in numbers]
missing = [f"sm_{n}" for n in wanted if n not in sass]
newest = max(wanted, key=int)
if missing:
    sys.exit(f"[check_cuda_build] no SASS for {missing} (SASS found: {sorted(sass)})")
if newest not in ptx_archs:
    sys.exit(f"[check_cuda_build] no PTX for the newest architecture sm_{newest} (PTX found: {sorted(ptx_archs)})")
print(f"[check_cuda_build] SASS for {', '.join('sm_' + n for n in wanted)} and PTX for sm_{newest}: OK")
PYEOF

# The library must load (links against torch's CUDA runtime) and report its CUDA kernels.
"$PY" - "$SO" <<'PYEOF'
import importlib.util
import sys

import torch  # noqa: F401  (loads libc10 / libtorch, which the extension links against)

spec = importlib.util.spec_from_file_location("mta_clip._C", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
if not module.with_cuda():
    sys.exit("[check_cuda_build] the built library reports with_cuda() == False")
print(f"[check_cuda_build] loaded {sys.argv[1]}: with_cuda={module.with_cuda()} "
      f"cuda_version={module.cuda_version()}")
PYEOF
echo "[check_cuda_build] OK in $(( $(date +%s) - START )) s"
