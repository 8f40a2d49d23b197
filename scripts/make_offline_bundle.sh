#!/usr/bin/env bash
# Builds an offline install bundle: on a machine with a package index, downloads every wheel the
# project needs for a target Python (pure-Python wheels, the compiled ones for that Python, wheels
# built here from pure-Python source-only releases, and the re-tagged detectron2 wheel) and writes
# a manifest with sha256 sums. `scripts/setup_env.sh --offline OUT_DIR` installs it with no network.
#
#   bash scripts/make_offline_bundle.sh [--python 3.12] [--with-torch] [--assume-present FILE]
#        [--platform TAG]... [--extra NAME]... [--max-mib N] OUT_DIR
#
#   --python X.Y          target Python (default: the Python running this script)
#   --with-torch          also bundle torch / torchvision and their CUDA libraries (large: GiBs).
#                         Without it the target must already have torch (a cluster module, the GPU
#                         machine's install) and `setup_env.sh --offline ... --system-site-packages`.
#   --assume-present FILE project names (one per line, or the target's `pip freeze`) the target
#                         already has: left out of the bundle. The lent GPU machine's list is
#                         scripts/offline/gpu_machine_packages.txt.
#   --platform TAG        wheel platform tags accepted (default: manylinux2014 and manylinux_2_17
#                         .. _2_28, x86_64: glibc >= 2.28 on the target)
#   --extra NAME          also bundle this entry of requirements.txt (e.g. onnxruntime)
#   --max-mib N           fail if the wheels take more than N MiB
#
# Versions: the pins of requirements.txt, and for everything else the versions installed in the
# venv that runs pip here (this repository's .venv, or BUNDLE_PYTHON=/path/to/venv/bin/python):
# the bundle holds the versions CI tests.
set -euo pipefail
CALLER_DIR=$(pwd)
cd "$(dirname "$0")/.."
# shellcheck source=scripts/detectron2_wheel.sh
source scripts/detectron2_wheel.sh
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac; }

# What the project needs at run time and for its tests (names as in requirements.txt).
RUNTIME=(torch torchvision numpy opencv-python-headless open_clip_torch fvcore iopath pycocotools scipy
         tqdm pytest ninja wheel submitit)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
TARGET_PY="" WITH_TORCH=0 ASSUME="" MAX_MIB=0 OUT="" PLATFORMS=() EXTRAS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) TARGET_PY=${2:?--python needs X.Y}; shift 2 ;;
    --with-torch) WITH_TORCH=1; shift ;;
    --assume-present) ASSUME=${2:?--assume-present needs a file}; shift 2 ;;
    --platform) PLATFORMS+=("${2:?--platform needs a tag}"); shift 2 ;;
    --extra) EXTRAS+=("${2:?--extra needs a name}"); shift 2 ;;
    --max-mib) MAX_MIB=${2:?--max-mib needs a number}; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "[bundle] unknown option $1" >&2; usage ;;
    *) [ -z "$OUT" ] || { echo "[bundle] one OUT_DIR only (got $OUT and $1)" >&2; exit 2; }; OUT=$1; shift ;;
  esac
done
[ -n "$OUT" ] || usage
OUT=$(abspath "${OUT%/}")
if [ -n "$ASSUME" ]; then
  ASSUME=$(abspath "$ASSUME")
  [ -f "$ASSUME" ] || { echo "[bundle] --assume-present: no file $ASSUME" >&2; exit 2; }
fi

# The Python that runs pip here: the project's .venv when present (has pip and wheel).
BPY=${BUNDLE_PYTHON:-}
if [ -z "$BPY" ]; then
  if [ -x .venv/bin/python ]; then BPY=.venv/bin/python; else BPY=python3; fi
fi
"$BPY" -c "import pip, wheel" 2>/dev/null || { echo "[bundle] $BPY needs pip and wheel (pip install wheel)" >&2; exit 2; }
[ -n "$TARGET_PY" ] || TARGET_PY=$("$BPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ "$TARGET_PY" =~ ^3\.[0-9]+$ ]] || { echo "[bundle] --python must look like 3.12, got $TARGET_PY" >&2; exit 2; }
if [ ${#PLATFORMS[@]} -eq 0 ]; then
  PLATFORMS=(manylinux2014_x86_64)
  for n in $(seq 17 28); do PLATFORMS+=("manylinux_2_${n}_x86_64"); done
fi
PLATFORM_ARGS=()
for p in "${PLATFORMS[@]}"; do PLATFORM_ARGS+=(--platform "$p"); done
TARGET_ARGS=(--only-binary=:all: --python-version "$TARGET_PY" --implementation cp "${PLATFORM_ARGS[@]}")

pip_q() { "$BPY" -m pip "$@" 2> >(grep -v "WARNING: Location '.*' is ignored" >&2); }

WORK=$(mktemp -d -t mta_clip_bundle.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/local"

# Requirements: the runtime entries of requirements.txt with their pins; detectron2 (re-tagged).
: > "$WORK/requirements.in"
for name in "${RUNTIME[@]}" "${EXTRAS[@]}"; do
  line=$(grep -iE "^${name//[-_]/[-_]}([=<>~ ]|$)" requirements.txt | head -n 1 || true)
  [ -n "$line" ] || { echo "[bundle] $name is not in requirements.txt" >&2; exit 2; }
  echo "$line" >> "$WORK/requirements.in"
done
echo "setuptools" >> "$WORK/requirements.in"
echo "sal-detectron2==${D2_VERSION}" >> "$WORK/requirements.in"
# Constraints: requirements.txt pins plus the versions installed in the project venv running pip.
grep -E '^[A-Za-z0-9].*==' requirements.txt > "$WORK/constraints.txt"
if "$BPY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  "$BPY" -m pip freeze --exclude-editable 2>/dev/null \
    | grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' | grep -viE '^(mta[-_]clip|sal[-_]detectron2)==' >> "$WORK/constraints.txt" || true
fi

echo "[bundle] building the re-tagged detectron2 ${D2_VERSION} wheel"
build_detectron2_wheel "$BPY" "$WORK/local"

# Pass 1 (this machine's Python): find releases that exist only as source archives and build
# their wheels here; they must come out pure Python (py3-none-any), usable on any target.
echo "[bundle] resolving (source-only releases)"
pip_q install -q --dry-run --ignore-installed --report "$WORK/native.json" --find-links "$WORK/local" \
    -c "$WORK/constraints.txt" -r "$WORK/requirements.in"
"$BPY" - "$WORK/native.json" > "$WORK/sdists.txt" <<'PYEOF'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    if not item["download_info"]["url"].endswith(".whl"):
        print(f'{item["metadata"]["name"]}=={item["metadata"]["version"]}')
PYEOF
if [ -s "$WORK/sdists.txt" ]; then
  echo "[bundle] building wheels of source-only releases: $(tr '\n' ' ' < "$WORK/sdists.txt")"
  pip_q wheel -q --no-deps -w "$WORK/built" -r "$WORK/sdists.txt"
  for whl in "$WORK"/built/*.whl; do
    case "$whl" in
      *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "$whl" "$WORK/local/" ;;
      *) echo "[bundle] $(basename "$whl") is not pure Python: it has no wheel for Python $TARGET_PY" >&2; exit 1 ;;
    esac
  done
fi

# Pass 2 (the target): resolve for the target Python and platforms, wheels only.
echo "[bundle] resolving for Python $TARGET_PY (${PLATFORMS[0]} ...)"
pip_q install -q --dry-run --ignore-installed --report "$WORK/target.json" --target "$WORK/never" \
    "${TARGET_ARGS[@]}" --find-links "$WORK/local" -c "$WORK/constraints.txt" -r "$WORK/requirements.in"
PLAN_ARGS=()
[ "$WITH_TORCH" = 1 ] && PLAN_ARGS+=(--with-torch)
[ -n "$ASSUME" ] && PLAN_ARGS+=(--assume-present "$ASSUME")
"$BPY" tools/offline_bundle.py plan "$WORK/target.json" "${PLAN_ARGS[@]}" > "$WORK/plan.json"
"$BPY" - "$WORK/plan.json" > "$WORK/download.txt" <<'PYEOF'
import json, sys
for item in json.load(open(sys.argv[1]))["bundle"]:
    print(f'{item["name"]}=={item["version"]}')
PYEOF

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp/wheels"
echo "[bundle] downloading $(wc -l < "$WORK/download.txt") wheels"
pip_q download -q --no-deps "${TARGET_ARGS[@]}" --find-links "$WORK/local" -d "$OUT.tmp/wheels" -r "$WORK/download.txt"
MANIFEST_ARGS=(--python "$TARGET_PY" --left-out "$WORK/plan.json" --max-mib "$MAX_MIB")
for p in "${PLATFORMS[@]}"; do MANIFEST_ARGS+=(--platform "$p"); done
[ "$WITH_TORCH" = 1 ] && MANIFEST_ARGS+=(--with-torch)
"$BPY" tools/offline_bundle.py manifest "$OUT.tmp" "${MANIFEST_ARGS[@]}"
# Replace OUT only once the new bundle is whole.
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "[bundle] done: $OUT ($(du -sh "$OUT" | cut -f1)); install with: bash scripts/setup_env.sh --offline $OUT"
