#!/bin/bash
# A study beside the recording: does the augmented classifier's recipe change what BAGAN's images do for it?
# bash recipe.sh SEED DIR: BAGAN with the recorded settings (run.sh's), then augment-eval's plain, oversample and
# bagan rows with a second recipe, horizontal flips with the crops and 6 epochs instead of 3 (mirror is left
# out: flips make it the oversample row).
set -euo pipefail
VENV=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin  # the repository's set-up (make setup)
S=$1; D=$2; C=$VENV/cbgan-ext; HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p $D
DATA="--dataset fashion-mnist --image-size 32 --profile bagan --minority-class 0 --drop-fraction 0.975 --imbalance 1 --seed $S --threads 1"
GAN="--width 0.25 --batch-size 64 --steps 400 --log-every 50 --sample-every 400 --ckpt-every 100 --no-progress"
T0=$(date +%s)
$C train --method bagan $DATA $GAN --ae-steps 200 --out $D/bagan 2>&1 | tail -1
# the recording's autoencoder, checked through the class Gaussians fitted from it
$VENV/python - "$D/bagan" "$HERE/seed$S/gaussians_bagan.json" <<'PY'
import glob, json, sys
new = json.load(open(glob.glob(f"{sys.argv[1]}/gaussians*.json")[0]))
old = json.load(open(sys.argv[2]))
same = new["classes"] == old["classes"]
print("class Gaussians as recorded:", same)
sys.exit(0 if same else 1)
PY
echo "bagan done $(( $(date +%s)-T0 ))s"
$C augment-eval --run $D/bagan --rows plain,oversample --checkpoint last --out $D/augment-flip6 --epochs 6 \
   --augment crop-flip --width 0.25 --threads 1 --no-progress 2>&1 | tail -5
echo "all done $(( $(date +%s)-T0 ))s"
