#!/bin/bash
# The recorded runs' generators evaluated again by `cbgan-ext eval`, the EMA (the recording's rule) and G as
# trained, with each seed's annotator, 5000 samples and seed 2024: bash raw_eval.sh DIR (DIR/seed<s> as written
# by `cbgan-ext demo --seed s`). The EMA evaluation reproduces the recorded results.json numbers exactly.
set -euo pipefail
VENV=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin  # the repository's set-up (make setup)
D=$1; C=$VENV/cbgan-ext; HERE=$(cd "$(dirname "$0")" && pwd)
for S in 0 1 2; do for m in gan cbgan; do for g in ema raw; do
  R=$D/seed$S/$m
  [ -f $R/eval_$g.json ] || OMP_NUM_THREADS=1 $C eval --run $R --checkpoint last --annotator $D/seed$S/annotator.pt \
      --n 5000 --fid annotator --seed 2024 --lpips-images 0 --generator $g > $R/eval_$g.json
  cp $R/eval_$g.json $HERE/seed$S/eval_${m}_$g.json
done; done; done
