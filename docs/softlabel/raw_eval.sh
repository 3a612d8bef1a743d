#!/bin/bash
# The recorded Softlabel-section generators as trained (not their EMA), evaluated by `cbgan-ext eval` as the
# section evaluates its EMA (each seed's annotator, 2000 samples, seed 2024): bash raw_eval.sh DIR0 DIR1 DIR2,
# the main-job directories of seeds 0, 1, 2. Writes seed<s>/eval_<method>_raw.json here.
set -euo pipefail
VENV=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin  # the repository's set-up (make setup)
HERE=$(cd "$(dirname "$0")" && pwd)
S=0
for D in "$@"; do
  for m in softlabel-gan diffaug-gan; do
    OMP_NUM_THREADS=1 "$VENV/cbgan-ext" eval --run "$D/softlabel/$m" --checkpoint last --annotator "$D/annotator.pt" \
        --n 2000 --fid annotator --seed 2024 --lpips-images 0 --generator raw > "$HERE/seed$S/eval_${m}_raw.json"
  done
  S=$((S + 1))
done
