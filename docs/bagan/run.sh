#!/bin/bash
# BAGAN section, one seed: bash run.sh SEED DIR
set -euo pipefail
VENV=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin  # the repository's set-up (make setup)
S=$1; D=$2; C=$VENV/cbgan-ext
mkdir -p $D
DATA="--dataset fashion-mnist --image-size 32 --profile bagan --minority-class 0 --drop-fraction 0.975 --imbalance 1 --seed $S --threads 1"
GAN="--width 0.25 --batch-size 64 --steps 400 --log-every 50 --sample-every 400 --ckpt-every 100 --no-progress"
T0=$(date +%s)
[ -f $D/annotator.pt ] || $C train-classifier --dataset fashion-mnist --image-size 32 --imbalance 1 --seed $((S+1)) --threads 1 \
   --loss ce --epochs 2 --width 0.5 --depth 32 --lr-schedule cosine --out $D/annotator.pt --no-progress $( [ -f $D/annotator.pt ] && echo --resume ) 2>&1 | tail -2
echo "annotator done $(( $(date +%s)-T0 ))s"
$C train --method bagan $DATA $GAN --ae-steps 200 --out $D/bagan 2>&1 | tail -1
echo "bagan done $(( $(date +%s)-T0 ))s"
$C train --method acgan $DATA $GAN --out $D/acgan 2>&1 | tail -1
echo "acgan done $(( $(date +%s)-T0 ))s"
$C train --method minority-gan $DATA $GAN --out $D/minority-gan 2>&1 | tail -1
echo "minority-gan done $(( $(date +%s)-T0 ))s"
for m in bagan acgan minority-gan; do
  [ -f $D/$m/eval.json ] || $C eval --run $D/$m --checkpoint last --annotator $D/annotator.pt --n 2000 --fid annotator > $D/$m/eval.json.tmp && mv $D/$m/eval.json.tmp $D/$m/eval.json
done
echo "evals done $(( $(date +%s)-T0 ))s"
$C augment-eval --run $D/bagan --run $D/acgan --run $D/minority-gan --checkpoint last --out $D/augment --epochs 3 --width 0.25 --threads 1 --no-progress 2>&1 | tail -8
echo "all done $(( $(date +%s)-T0 ))s"
