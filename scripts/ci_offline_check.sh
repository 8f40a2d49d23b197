#!/usr/bin/env bash
# CI: the offline install, numpy 2 and the GPU check's CPU rehearsal, on a CPU stand-in of the lent
# GPU machine. Needs the project's .venv (scripts/setup_env.sh) and the package index (to build
# the bundle, as a user does on a machine with a registry, and numpy 2 for the stand-in).
#
# 1. bundle: scripts/make_offline_bundle.sh for this Python, leaving out what the GPU machine has
#    (scripts/offline/gpu_machine_packages.txt), --max-mib 40;
# 2. stand-in "GPU machine" Python: a venv holding only the packages of that list that .venv has
#    (linked from .venv: torch, scipy, opencv, ...) plus numpy 2 instead of .venv's numpy 1.26,
#    and none of detectron2 / fvcore / iopath / yacs / omegaconf / hydra / pycocotools / open_clip;
# 3. a clean copy of the working tree (tracked and untracked-not-ignored files, as the device tool
#    sends it) with the bundle as its only install source, where
#    `PYTHON=<stand-in> scripts/gpu_check.sh OUT --cpu-rehearsal` must pass (it installs with
#    `setup_env.sh --offline --system-site-packages`, builds the op, runs every step on numpy 2).
#
#   bash scripts/ci_offline_check.sh [WORK_DIR]     # WORK_DIR kept for inspection when given
#   VENV_PYTHON=/path/.venv/bin/python ...          # the project venv (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VPY=${VENV_PYTHON:-.venv/bin/python}  # the project's venv (another checkout's: VENV_PYTHON=...)
[ -x "$VPY" ] || { echo "[ci_offline] needs $VPY (bash scripts/setup_env.sh)" >&2; exit 1; }
export BUNDLE_PYTHON=$VPY
if [ $# -ge 1 ]; then
  WORK=$(mkdir -p "$1" && cd "$1" && pwd)
else
  WORK=$(mktemp -d -t mta_clip_ci_offline.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
fi
T0=$(date +%s)
LIST=scripts/offline/gpu_machine_packages.txt
PYVER=$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

echo "[ci_offline] 1/3 bundle for Python $PYVER"
rm -rf "$WORK/bundle"
bash scripts/make_offline_bundle.sh --python "$PYVER" --assume-present "$LIST" --max-mib 40 "$WORK/bundle"

echo "[ci_offline] 2/3 stand-in GPU-machine Python (its packages linked from .venv, numpy 2)"
rm -rf "$WORK/gpu_python"
BASE=$("$VPY" -c 'import sys; print(sys.base_prefix)')/bin/python$PYVER
"$BASE" -m venv "$WORK/gpu_python"
# the venv's own setuptools (ensurepip's) would hide the linked one
"$WORK/gpu_python/bin/python" -m pip uninstall -q -y setuptools 2>/dev/null || true
"$VPY" - "$LIST" "$WORK/gpu_python" <<'PYEOF'
import importlib.metadata as md
import os
import sys
import sysconfig

sys.path.insert(0, "tools")
from offline_bundle import canonical, read_name_list

wanted = {canonical(n) for n in read_name_list(sys.argv[1])} - {"numpy", "pip"}
target = sysconfig.get_paths(vars={"base": sys.argv[2], "platbase": sys.argv[2]})["purelib"]
linked = []
for dist in md.distributions():
    name = canonical(dist.metadata["Name"])
    if name not in wanted or not dist.files:
        continue
    site = str(dist.locate_file(""))
    for top in sorted({f.parts[0] for f in dist.files if f.parts and f.parts[0] not in ("..", "__pycache__")}):
        src, dst = os.path.join(site, top), os.path.join(target, top)
        if os.path.exists(src) and not os.path.lexists(dst):
            os.symlink(src, dst)
    linked.append(name)
print(f"[ci_offline] linked {len(linked)} distributions into {target}")
PYEOF
"$WORK/gpu_python/bin/python" -m pip install -q --disable-pip-version-check "numpy>=2,<2.3" \
    2> >(grep -v "WARNING: Location '.*' is ignored" >&2)
"$WORK/gpu_python/bin/python" -c "import numpy, torch, scipy, cv2; print('[ci_offline] stand-in: numpy', numpy.__version__, 'torch', torch.__version__)"
if "$WORK/gpu_python/bin/python" -c "import detectron2" 2>/dev/null; then
  echo "[ci_offline] the stand-in must not have detectron2" >&2; exit 1
fi

echo "[ci_offline] 3/3 gpu_check.sh --cpu-rehearsal in a clean copy of the working tree"
rm -rf "$WORK/tree"
mkdir -p "$WORK/tree"
git ls-files -z -co --exclude-standard | xargs -0 -I{} cp --parents -P {} "$WORK/tree/" 2>/dev/null || \
  { echo "[ci_offline] copying the working tree failed" >&2; exit 1; }
cp -r "$WORK/bundle" "$WORK/tree/offline_bundle"
if ls "$WORK"/tree/mta_clip/_C*.so >/dev/null 2>&1; then echo "[ci_offline] the copy holds a built op" >&2; exit 1; fi
set +e
(cd "$WORK/tree" && PYTHON="$WORK/gpu_python/bin/python" bash scripts/gpu_check.sh "$WORK/out" --cpu-rehearsal)
CODE=$?
set -e
cat "$WORK/out/gpu_check.md" 2>/dev/null || true
"$WORK/gpu_python/bin/python" - "$WORK/out/gpu_check.json" <<'PYEOF'
import json, sys
report = json.load(open(sys.argv[1]))
env = report["environment"] or {}
assert report["ok"], "the rehearsal failed (see the report above)"
assert env["numpy"].startswith("2."), f"expected numpy 2 in the stand-in, got {env['numpy']}"
assert env["op_built"], "the op was not built in the clean copy"
steps = {s["step"]: s["status"] for s in report["steps"]}
assert steps["training"] == "PASS" and steps["op_tests"] == "PASS", steps
print(f"[ci_offline] rehearsal OK on numpy {env['numpy']}: {steps}")
PYEOF
[ "$CODE" = 0 ] || { echo "[ci_offline] gpu_check.sh exited $CODE" >&2; exit 1; }
echo "[ci_offline] OK in $(( $(date +%s) - T0 )) s"
