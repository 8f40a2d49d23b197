#!/usr/bin/env bash
# Creates .venv in the repository and installs everything the project needs (pinned versions),
# including detectron2 (re-tagged PyPI wheel) and this package in editable mode.
# A second run on a machine where all of it is present finishes in a few seconds.
#
#   bash scripts/setup_env.sh                       # from the package index (pinned versions)
#   bash scripts/setup_env.sh --offline BUNDLE [--system-site-packages]
#
# --offline installs from a bundle made by scripts/make_offline_bundle.sh, with no network
# (`pip --no-index`), after checking every wheel's sha256 against the bundle's manifest; then it
# builds the C++/CUDA op in place (`setup.py build_ext --inplace`: CUDA kernels where a GPU or
# FORCE_CUDA=1 and a toolkit are present; TORCH_CUDA_ARCH_LIST, CUDA_HOME as usual) and puts the
# repository on the venv's path. --system-site-packages lets the venv use the packages of the
# Python that creates it (PYTHON=..., default python3), e.g. a preinstalled torch; when that
# Python is itself a venv, its packages are added too. A bundle built without --with-torch needs it.
set -euo pipefail
CALLER_DIR=$(pwd)
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
# shellcheck source=scripts/detectron2_wheel.sh
source scripts/detectron2_wheel.sh

OFFLINE="" SYSTEM_SITE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --offline) OFFLINE=${2:?--offline needs the bundle folder}; shift 2 ;;
    --system-site-packages) SYSTEM_SITE=1; shift ;;
    *) echo "[setup] unknown argument $1 (usage: setup_env.sh [--offline BUNDLE [--system-site-packages]])" >&2; exit 2 ;;
  esac
done
if [ "$SYSTEM_SITE" = 1 ] && [ -z "$OFFLINE" ]; then
  echo "[setup] --system-site-packages goes with --offline BUNDLE" >&2; exit 2
fi
if [ -n "$OFFLINE" ]; then
  case "$OFFLINE" in /*) ;; *) OFFLINE="$CALLER_DIR/$OFFLINE" ;; esac
  exec bash scripts/setup_env_offline.sh "$OFFLINE" "$SYSTEM_SITE"
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# The stamp records what was installed; if nothing changed and imports work, stop here.
stamp_inputs() { cat requirements.txt setup.py scripts/setup_env.sh scripts/detectron2_wheel.sh; find mta_clip/layers/csrc -type f -print0 2>/dev/null | sort -z | xargs -0r cat; echo "FORCE_CUDA=${FORCE_CUDA:-}"; }
STAMP=$(stamp_inputs | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.mta_clip_stamp" 2>/dev/null)" = "$STAMP" ] \
   && "$VENV/bin/python" -c "import detectron2, open_clip, mta_clip" >/dev/null 2>&1; then
  echo "[setup] .venv is up to date"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
# pip warns about this machine's unused local index folders; hide only that noise.
pip_q() { "$VPY" -m pip "$@" 2> >(grep -v "WARNING: Location '.*' is ignored" >&2); }
pip_q install -q --upgrade "pip>=24" >/dev/null
echo "[setup] installing pinned requirements"
pip_q install -q -r requirements.txt

if ! "$VPY" -c "import detectron2" >/dev/null 2>&1; then
  echo "[setup] installing detectron2 ${D2_VERSION} (re-tagged sal-detectron2 wheel)"
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  build_detectron2_wheel "$VPY" "$WORK"
  pip_q install -q "$WORK/$D2_RETAGGED_NAME"
  # detectron2 declares loose ranges; re-assert our pins in case its dependencies moved any.
  pip_q install -q -r requirements.txt
fi

echo "[setup] installing mta_clip (editable; C++/CUDA op built where available)"
pip_q install -q --no-build-isolation --no-deps -e .
pip_q check
echo "$STAMP" > "$VENV/.mta_clip_stamp"
echo "[setup] done: $VPY"
