#!/bin/bash
# One seed's cbgan-section generators evaluated again by `cbgan-ext eval`: the final EMA (the recording's rule;
# it reproduces results.json) and G as trained, with the run's annotator, 5000 samples and seed 2024:
#   bash raw_eval.sh RUN_DIR SEED     (RUN_DIR as written by `cbgan-ext demo --seed SEED`)
set -euo pipefail
VENV=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin  # the repository's set-up (make setup)
R=$1; S=$2; HERE=$(cd "$(dirname "$0")" && pwd)
for m in gan cbgan; do for g in ema raw; do
  OMP_NUM_THREADS=1 "$VENV/cbgan-ext" eval --run "$R/$m" --checkpoint last --annotator "$R/annotator.pt" \
      --n 5000 --fid annotator --seed 2024 --lpips-images 0 --generator $g > "$HERE/seed$S/eval_${m}_$g.json"
done; done
