#!/usr/bin/env bash
# Creates .venv in the repository and installs everything the project needs (pinned versions),
# including detectron2 (re-tagged PyPI wheel) and this package in editable mode.
# A second run on a machine where all of it is present finishes in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

D2_VERSION=0.7.2
D2_WHEEL=sal_detectron2-${D2_VERSION}-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
D2_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561

# The stamp records what was installed; if nothing changed and imports work, stop here.
stamp_inputs() { cat requirements.txt setup.py scripts/setup_env.sh; find mta_clip/layers/csrc -type f -print0 2>/dev/null | sort -z | xargs -0r cat; echo "FORCE_CUDA=${FORCE_CUDA:-}"; }
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
  pip_q download -q --no-deps --only-binary=:all: --python-version 3.10 \
      -d "$WORK" "sal-detectron2==${D2_VERSION}"
  WHL=$(ls "$WORK"/sal_detectron2-*.whl)
  echo "${D2_SHA256}  ${WHL}" | sha256sum -c --quiet - || { echo "[setup] sha256 mismatch for $WHL" >&2; exit 1; }
  "$VPY" -m wheel unpack -d "$WORK/unpacked" "$WHL" >/dev/null
  PKGDIR=$(ls -d "$WORK"/unpacked/*/)
  rm -f "$PKGDIR"/detectron2/_C*.so
  sed -i 's/^Tag: .*/Tag: py3-none-any/' "$PKGDIR"/*.dist-info/WHEEL
  mkdir -p "$WORK/out"
  "$VPY" -m wheel pack -d "$WORK/out" "$PKGDIR" >/dev/null
  pip_q install -q "$WORK"/out/*.whl
  # detectron2 declares loose ranges; re-assert our pins in case its dependencies moved any.
  pip_q install -q -r requirements.txt
fi

echo "[setup] installing mta_clip (editable; C++/CUDA op built where available)"
pip_q install -q --no-build-isolation --no-deps -e .
pip_q check
echo "$STAMP" > "$VENV/.mta_clip_stamp"
echo "[setup] done: $VPY"
