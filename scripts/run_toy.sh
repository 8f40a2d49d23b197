#!/usr/bin/env bash
# The main job on the built-in toy data (CPU is fine): sets up .venv, writes a tiny random CLIP,
# trains MTA-CLIP on the generated toy dataset, evaluates it (mIoU), and writes prediction
# overlays of a few validation images to output/toy_mtaclip/predictions/overlays.
# CONFIG=configs/toy/mask2former_toy.yaml runs the Mask2Former baseline instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
CONFIG=${CONFIG:-configs/toy/mtaclip_toy.yaml}
OUT=$($PY - "$CONFIG" <<'PYEOF'
import sys
from mta_clip.config import setup_cfg
print(setup_cfg(sys.argv[1]).OUTPUT_DIR)
PYEOF
)
if [ ! -f pretrained/tiny_clip_RN50.pt ]; then
  $PY tools/make_tiny_clip.py --arch RN50 --output pretrained/tiny_clip_RN50.pt
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
$PY train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUT"
mkdir -p "$OUT/predictions"
VAL=${DETECTRON2_DATASETS:-datasets}/toy_sem_seg/images/val
mapfile -t VAL_IMAGES < <(ls "$VAL"/*.png | head -n 6)
$PY demo/demo.py --config-file "$CONFIG" --input "${VAL_IMAGES[@]}" --output "$OUT/predictions" \
  --opts MODEL.WEIGHTS "$OUT/model_final.pth"
$PY - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
with open(os.path.join(out, "metrics.json")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
last = [r for r in rows if "sem_seg/mIoU" in r][-1]
print(f"toy val mIoU = {last['sem_seg/mIoU']:.2f}  (pixel acc {last['sem_seg/pACC']:.2f}); "
      f"overlays in {os.path.join(out, 'predictions', 'overlays')}")
PYEOF
