#!/usr/bin/env bash
# Proves the C++/CUDA sources of mta_clip._C compile (no GPU needed): builds the extension with
# FORCE_CUDA=1 into temporary directories, so the in-place CPU build is never replaced, checks
# that the library holds a kernel image for every requested architecture, and loads it.
# Exits non-zero on any compile or link error.
#
#   bash scripts/check_cuda_build.sh            # TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0"
#   TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=4 bash scripts/check_cuda_build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export FORCE_CUDA=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
export MAX_JOBS=${MAX_JOBS:-2}

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "[check_cuda_build] no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
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

# Every requested architecture must have a kernel image (e.g. "8.0" -> sm_80): listed by
# cuobjdump where the toolkit has it, else read from the nvcc command lines of the build.
if [ -x "$CUDA_HOME/bin/cuobjdump" ]; then
  IMAGES=$("$CUDA_HOME/bin/cuobjdump" --list-elf "$SO")
  WHAT="cuobjdump --list-elf $SO"
else
  IMAGES=$(grep -ho 'code=sm_[0-9]*[af]*' "$TMP"/temp/build.ninja 2>/dev/null || true)
  WHAT="nvcc flags in build.ninja (no cuobjdump in $CUDA_HOME/bin)"
fi
IFS=';' read -ra ARCHS <<< "${TORCH_CUDA_ARCH_LIST// /;}"
for arch in "${ARCHS[@]}"; do
  [ -z "$arch" ] && continue
  sm="sm_$(echo "${arch%%+PTX}" | tr -d '.')"
  if ! grep -q "$sm" <<< "$IMAGES"; then
    echo "[check_cuda_build] no $sm kernel image found by $WHAT:" >&2
    echo "$IMAGES" >&2
    exit 1
  fi
done
echo "[check_cuda_build] kernel images for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST found by $WHAT"

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
