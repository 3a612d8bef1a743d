#!/bin/bash
# Copy one seed's Softlabel section out of a main-job directory: bash collect.sh RUN_DIR SEED [TIME_REPORT]
# TIME_REPORT: the stderr of `/usr/bin/time -v cbgan-ext demo ...`; its report becomes time.txt
set -euo pipefail
R=$1; S=$2; D=$(dirname "$0")/seed$S
mkdir -p "$D"
cp "$R/report.md" "$R/results.json" "$D/"
for m in softlabel-gan diffaug-gan; do
  cp "$R/softlabel/$m/config.json" "$D/config_$m.json"
  cp "$R/softlabel/$m/eval.json" "$D/eval_$m.json"
  cp "$R/softlabel/samples_$m.png" "$D/"
done
cp "$R/softlabel/intra_fd.png" "$D/"
# the report's links point into the run directory: point them at the copies
sed -i -e 's#(softlabel/#(#g' "$D/report.md"
if [ -n "${3:-}" ]; then sed -n '/Command being timed/,$p' "$3" > "$D/time.txt"; fi
