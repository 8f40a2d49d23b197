# Sourced by scripts/setup_env.sh and scripts/make_offline_bundle.sh (not run on its own).
#
# detectron2 has no official PyPI release; `sal-detectron2` republishes it as a wheel tagged cp310
# whose compiled `detectron2/_C*.so` matches neither our Python nor our torch. Nothing semantic
# segmentation needs uses `_C`, so the wheel is downloaded (sha256 checked), the library removed,
# the tag set to py3-none-any and the wheel packed again: one wheel for every Python >= 3.8.
# Its `numpy<2` requirement is dropped as well: this project runs on numpy 1.26 and 2.x (the one
# Detectron2 function that fails on numpy 2, the evaluator's label loader, is replaced by
# mta_clip.evaluation; scripts/ci_offline_check.sh checks a numpy 2 install).

D2_VERSION=0.7.2
D2_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
D2_RETAGGED_NAME=sal_detectron2-${D2_VERSION}-py3-none-any.whl

# build_detectron2_wheel PYTHON OUT_DIR: writes OUT_DIR/$D2_RETAGGED_NAME. PYTHON needs pip and the
# `wheel` package; the download comes from the configured package index.
build_detectron2_wheel() (  # a subshell: its EXIT trap removes the work folder
  set -euo pipefail
  local py=$1 out=$2 work whl pkgdir
  work=$(mktemp -d -t mta_clip_d2.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
      -d "$work" "sal-detectron2==${D2_VERSION}" \
      2> >(grep -v "WARNING: Location '.*' is ignored" >&2)
  whl=$(ls "$work"/sal_detectron2-*.whl)
  if ! echo "${D2_SHA256}  ${whl}" | sha256sum -c --quiet - >/dev/null 2>&1; then
    echo "[detectron2_wheel] sha256 mismatch for $whl (expected ${D2_SHA256})" >&2
    exit 1
  fi
  "$py" -m wheel unpack -d "$work/unpacked" "$whl" >/dev/null
  pkgdir=$(ls -d "$work"/unpacked/*/)
  rm -f "$pkgdir"/detectron2/_C*.so
  sed -i 's/^Tag: .*/Tag: py3-none-any/' "$pkgdir"/*.dist-info/WHEEL
  sed -i 's/^Requires-Dist: numpy<2$/Requires-Dist: numpy/' "$pkgdir"/*.dist-info/METADATA
  mkdir -p "$out" "$work/out"
  "$py" -m wheel pack -d "$work/out" "$pkgdir" >/dev/null
  mv "$work"/out/*.whl "$out/$D2_RETAGGED_NAME"
)
