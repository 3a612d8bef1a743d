#!/bin/bash
# A study beside the recording, seed 0: BAGAN (autoencoder 1000 + adversarial 1600 steps) and ACGAN (1600 steps),
# 4x the recorded steps, otherwise the recorded settings: bash long.sh DIR, DIR a seed-0 directory of run.sh
# (its annotator.pt is reused).
set -euo pipefail
VENV=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin  # the repository's set-up (make setup)
D=$1; C=$VENV/cbgan-ext
T0=$(date +%s)
DATA="--dataset fashion-mnist --image-size 32 --profile bagan --minority-class 0 --drop-fraction 0.975 --imbalance 1 --seed 0 --threads 1"
GAN="--width 0.25 --batch-size 64 --steps 1600 --log-every 100 --sample-every 800 --ckpt-every 200 --no-progress"
$C train --method bagan $DATA $GAN --ae-steps 1000 --out $D/bagan-long 2>&1 | tail -1
echo "bagan-long done $(( $(date +%s)-T0 ))s"
$C train --method acgan $DATA $GAN --out $D/acgan-long 2>&1 | tail -1
echo "acgan-long done $(( $(date +%s)-T0 ))s"
for m in bagan-long acgan-long; do
  [ -f $D/$m/eval.json ] || $C eval --run $D/$m --checkpoint last --annotator $D/annotator.pt --n 2000 --fid annotator > $D/$m/eval.json.tmp && mv $D/$m/eval.json.tmp $D/$m/eval.json
  $C sample --run $D/$m --checkpoint last --n 80 --out $D/grid_$m.png  # a row per class
done
echo "evals done $(( $(date +%s)-T0 ))s"
$C augment-eval --run $D/bagan-long --run $D/acgan-long --rows "" --checkpoint last --out $D/augment-long --epochs 3 --width 0.25 --threads 1 --no-progress 2>&1 | tail -4
echo "all done $(( $(date +%s)-T0 ))s"
