#!/bin/bash
# The main job's Softlabel section over seeds 0, 1 and 2: bash run.sh DIR
# Each seed ran in its own process with one thread, the three side by side on 2 cores; the annotator of each
# seed is the main job's stage 3 (docs/main-job), copied in so that it is not trained again. The last command
# finds every stage done and writes DIR/summary.md.
set -euo pipefail
D=$1; C=/work/main/.venv/bin/cbgan-ext
for S in 0 1 2; do
  mkdir -p $D/seed$S
  [ -f $D/seed$S/annotator.pt ] || cp /tmp/final5/seed$S/annotator.pt $D/seed$S/
  $C demo --sections softlabel --out $D/seed$S --seed $S --threads 1 > $D/seed$S.log 2>&1 &
done
wait
$C demo --sections softlabel --out $D --seeds 0,1,2 --threads 2
