#!/usr/bin/env bash
# The GPU check in one command (docs/gpu.md): sets up .venv from the offline bundle (no network),
# builds the CUDA op in place, then runs tools/gpu_check.py: environment, the op's GPU tests, the
# MTA-CLIP vs Mask2Former* benchmark (fp32, AMP bf16, AMP fp16), the op benchmark and a short
# training run. Writes OUT_DIR/gpu_check.md, OUT_DIR/gpu_check.json and OUT_DIR/logs.tar.gz.
#
#   bash scripts/gpu_check.sh OUT_DIR [--cpu-rehearsal]
#
# Environment: MTA_CLIP_BUNDLE (default offline_bundle/, see scripts/make_offline_bundle.sh; when it
# is missing an existing .venv is used), PYTHON (the Python holding torch, default python3),
# TORCH_CUDA_ARCH_LIST (default 9.0), CUDA_HOME (default /usr/local/cuda, else nvcc's prefix),
# GPU_CHECK_BUDGET_S (default 480, rehearsal 2400: every step gets a time limit inside it). --cpu-rehearsal (or
# GPU_CHECK_CPU_REHEARSAL=1) runs every step on the CPU at tiny sizes, the CUDA parts reported as
# "skipped: no CUDA". Exit status 0 when every step passed.
set -euo pipefail
T0=$(date +%s)
CALLER_DIR=$(pwd)
cd "$(dirname "$0")/.."
OUT="" REHEARSAL=${GPU_CHECK_CPU_REHEARSAL:-0}
for arg in "$@"; do
  case "$arg" in
    --cpu-rehearsal) REHEARSAL=1 ;;
    -*) echo "[gpu_check] unknown option $arg (usage: gpu_check.sh OUT_DIR [--cpu-rehearsal])" >&2; exit 2 ;;
    *) OUT=$arg ;;
  esac
done
[ -n "$OUT" ] || { echo "usage: bash scripts/gpu_check.sh OUT_DIR [--cpu-rehearsal]" >&2; exit 2; }
case "$OUT" in /*) ;; *) OUT="$CALLER_DIR/$OUT" ;; esac
mkdir -p "$OUT"
BUNDLE=${MTA_CLIP_BUNDLE:-offline_bundle}
case "$BUNDLE" in /*) ;; *) BUNDLE="$(pwd)/$BUNDLE" ;; esac
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-$( [ "$REHEARSAL" = 1 ] && echo 2400 || echo 480 )}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$( [ "$REHEARSAL" = 1 ] && echo 1 || nproc )}

# CUDA build settings where a GPU is used.
if [ "$REHEARSAL" != 1 ] && command -v nvidia-smi >/dev/null 2>&1; then
  export FORCE_CUDA=1
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  if [ -z "${CUDA_HOME:-}" ]; then
    if [ -x /usr/local/cuda/bin/nvcc ] || ! command -v nvcc >/dev/null 2>&1; then CUDA_HOME=/usr/local/cuda
    else CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")"); fi
  fi
  export CUDA_HOME
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
fi

SETUP_LOG=$(mktemp -t mta_clip_gpu_check_setup.XXXXXX)
trap 'rm -f "$SETUP_LOG"' EXIT
SETUP_OK=1
if [ -f "$BUNDLE/manifest.json" ]; then
  echo "[gpu_check] setup: offline install from $BUNDLE (log: logs/setup.log in the report)"
  PYTHON="$PY" bash scripts/setup_env.sh --offline "$BUNDLE" --system-site-packages >"$SETUP_LOG" 2>&1 || SETUP_OK=0
elif [ -x .venv/bin/python ]; then
  echo "[gpu_check] setup: no bundle at $BUNDLE; using the existing .venv, building the op in place"
  .venv/bin/python setup.py -q build_ext --inplace >"$SETUP_LOG" 2>&1 || SETUP_OK=0
else
  echo "[gpu_check] no bundle at $BUNDLE (MTA_CLIP_BUNDLE) and no .venv: nothing to run with" >&2
  echo "no bundle at $BUNDLE and no .venv" >"$SETUP_LOG"
  SETUP_OK=0
fi
tail -n 5 "$SETUP_LOG"
SETUP_STATUS=ok
if [ "$SETUP_OK" != 1 ]; then
  SETUP_STATUS=unusable
  # The packages installed but the op's build failed (e.g. its CUDA part): build the CPU op only
  # and run the steps anyway; the report shows the failed setup and what it broke.
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import detectron2, open_clip" >/dev/null 2>&1; then
    echo "[gpu_check] setup failed after the install: building the op without CUDA, running the steps anyway"
    FORCE_CUDA=0 .venv/bin/python setup.py -q build_ext --inplace >>"$SETUP_LOG" 2>&1 || true
    SETUP_STATUS=failed
  fi
fi
SETUP_S=$(( $(date +%s) - T0 ))
ARGS=("$OUT" --budget-s "$BUDGET" --elapsed-s "$SETUP_S" --setup-s "$SETUP_S" --setup-log "$SETUP_LOG"
      --setup-status "$SETUP_STATUS")
[ "$REHEARSAL" = 1 ] && ARGS+=(--cpu-rehearsal)
if [ "$SETUP_STATUS" != unusable ]; then
  .venv/bin/python tools/gpu_check.py "${ARGS[@]}" --python "$(pwd)/.venv/bin/python"
  exit 0  # (set -e: a failed check has already exited with its status)
fi
# tools/gpu_check.py needs only the standard library: it reports the failed setup.
"$PY" tools/gpu_check.py "${ARGS[@]}"
