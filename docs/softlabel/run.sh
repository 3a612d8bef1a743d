#!/bin/bash
# The main job's Softlabel section over seeds 0, 1 and 2, as recorded: bash run.sh DIR
# Each seed ran in its own process with one thread, the three side by side on 2 cores. The annotator of each
# seed is the recorded main job's stage 3 (docs/main-job; /tmp/final5 on the recording machine), copied in so
# that it is not trained again; without it the section trains the same annotator itself (seed S + 1).
set -euo pipefail
VENV=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin  # the repository's set-up (make setup)
D=$1; C=$VENV/cbgan-ext; HERE=$(cd "$(dirname "$0")" && pwd)
for S in 0 1 2; do
  mkdir -p $D/seed$S
  [ -f $D/seed$S/annotator.pt ] || [ ! -f /tmp/final5/seed$S/annotator.pt ] || cp /tmp/final5/seed$S/annotator.pt $D/seed$S/
  $C demo --preset full --sections softlabel --out $D/seed$S --seed $S --threads 1 > $D/seed$S.log 2>&1 &
done
wait
# G as trained (not its EMA) of every run, the same annotator, n and seed as the section's evaluation
for S in 0 1 2; do for m in softlabel-gan diffaug-gan smooth-gan; do R=$D/seed$S/softlabel/$m
  [ -f $R/eval_raw.json ] || OMP_NUM_THREADS=1 $C eval --run $R --checkpoint last --annotator $D/seed$S/annotator.pt \
      --n 5000 --fid annotator --seed 2024 --lpips-images 0 --generator raw > $R/eval_raw.json
done; done
# the main job's own summary over the seeds (from each seed's results.json), then docs/softlabel's tables
$VENV/python -c "import json, sys; from cbgan_ext import pipeline; \
print(pipeline.write_summary(sys.argv[1], {s: json.load(open(f'{sys.argv[1]}/seed{s}/results.json')) for s in (0, 1, 2)}))" $D
$VENV/python $HERE/summarize.py $D $HERE 0,1,2
cp $D/summary.md $HERE/summary.md
