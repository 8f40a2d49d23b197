#!/usr/bin/env bash
# `bash scripts/setup_env.sh --offline BUNDLE [--system-site-packages]` runs this (see there).
# Installs .venv from BUNDLE with no network, builds the op in place, puts the repository on the
# venv's path. Arguments: BUNDLE (absolute) and SYSTEM_SITE (1 or 0).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
BUNDLE=$1
SYSTEM_SITE=$2
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || { echo "[setup] no Python '$PY' (set PYTHON=...)" >&2; exit 1; }
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

echo "[setup] offline install from $BUNDLE with $PY (Python $PYVER)"
"$PY" tools/offline_bundle.py verify "$BUNDLE" --python-version "$PYVER"

if [ ! -x "$VENV/bin/python" ]; then
  VENV_ARGS=()
  [ "$SYSTEM_SITE" = 1 ] && VENV_ARGS+=(--system-site-packages)
  echo "[setup] creating $VENV${VENV_ARGS:+ (${VENV_ARGS[*]})}"
  if ! "$PY" -m venv "${VENV_ARGS[@]}" "$VENV" 2>"$VENV.err"; then
    # e.g. a system Python without ensurepip: a venv without pip, filled by PYTHON's pip below
    cat "$VENV.err" >&2
    rm -rf "$VENV"
    echo "[setup] retrying without pip in the venv (PYTHON's pip installs into it)"
    "$PY" -m venv --without-pip "${VENV_ARGS[@]}" "$VENV"
  fi
  rm -f "$VENV.err"
fi
VPY="$VENV/bin/python"
if "$VPY" -m pip --version >/dev/null 2>&1; then PIP=("$VPY" -m pip); else PIP=("$PY" -m pip --python "$VPY"); fi
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ "$SYSTEM_SITE" = 1 ]; then
  # `venv --system-site-packages` exposes the *base* installation's packages. When PYTHON is
  # itself a venv (e.g. /opt/torch/.venv/bin/python3 holding torch), add that venv's site folders
  # after ours (site.addsitedir also runs their .pth files).
  "$PY" - "$SITE/_mta_clip_parent_env.pth" <<'PYEOF'
import site, sys
dirs = [d for d in site.getsitepackages() if d.startswith(sys.prefix)] if sys.prefix != sys.base_prefix else []
with open(sys.argv[1], "w") as f:
    f.write("".join(f"import site; site.addsitedir({d!r})\n" for d in dirs))
print(f"[setup] packages of {sys.prefix} visible in the venv" if dirs else "[setup] base installation's packages visible in the venv")
PYEOF
fi

echo "[setup] installing $(wc -l < "$BUNDLE/requirements.txt") wheels (pip --no-index)"
"${PIP[@]}" install -q --no-index --no-cache-dir --disable-pip-version-check --find-links "$BUNDLE/wheels" \
    -r "$BUNDLE/requirements.txt"

# The repository on the venv's path (what an editable install does), the op built in place.
echo "$ROOT" > "$SITE/mta_clip_source.pth"
echo "[setup] building mta_clip._C in place (FORCE_CUDA=${FORCE_CUDA:-0} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-auto})"
START=$(date +%s)
"$VPY" setup.py -q build_ext --inplace
"$VPY" - <<'PYEOF'
import detectron2, numpy, open_clip, torch

import mta_clip
from mta_clip.layers import ms_deform_attn_op_available

print(f"[setup] torch {torch.__version__} (CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}), "
      f"numpy {numpy.__version__}, detectron2 {detectron2.__version__}, open_clip {open_clip.__version__}; "
      f"mta_clip from {mta_clip.__path__[0]}; compiled op: CPU {ms_deform_attn_op_available('cpu')}"
      + (f", CUDA {ms_deform_attn_op_available('cuda')}" if torch.cuda.is_available() else ""))
PYEOF
echo "[setup] done in $(( $(date +%s) - START )) s after the install: $VPY"
