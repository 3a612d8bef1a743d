#!/bin/bash
# Copy one seed's BAGAN section out of a main-job directory: bash collect.sh RUN_DIR SEED [TIME_REPORT]
# TIME_REPORT: the stderr of `/usr/bin/time -v cbgan-ext demo ...`; its report becomes time.txt
set -euo pipefail
R=$1; S=$2; D=$(dirname "$0")/seed$S
mkdir -p "$D"
cp "$R/report.md" "$R/results.json" "$D/"
for m in bagan acgan; do
  cp "$R/bagan/$m/config.json" "$D/config_$m.json"
  cp "$R/bagan/$m/eval.json" "$D/eval_$m.json"
  cp "$R/bagan/samples_$m.png" "$D/"
done
cp "$R/bagan/bagan/autoencoder.json" "$D/autoencoder_bagan.json"
cp "$R/bagan/bagan/gaussians.json" "$D/gaussians_bagan.json"
# the report's links point into the run directory: point them at the copies
sed -i -e 's#(bagan/samples_#(samples_#g' "$D/report.md"
if [ -n "${3:-}" ]; then sed -n '/Command being timed/,$p' "$3" > "$D/time.txt"; fi
