#!/bin/bash
# Copy one seed's recording out of a whole default job's directory into docs/:
#   bash docs/collect.sh RUN_DIR SEED TIME_REPORT STAGE_LOG
# as written by `/usr/bin/time -v cbgan-ext demo --seed SEED --out RUN_DIR > STAGE_LOG 2> TIME_REPORT`.
set -euo pipefail
R=$1; S=$2; T=$3; L=$4; HERE=$(cd "$(dirname "$0")" && pwd); D=$HERE/main-job/seed$S
rm -rf "$D" "$HERE/bagan/seed$S" "$HERE/softlabel/seed$S"
mkdir -p "$D"
cp "$R/report.md" "$R/results.json" "$R/histograms.png" "$R/samples_gan.png" "$R/samples_cbgan.png" "$D/"
sed -n '/Command being timed/,$p' "$T" > "$D/time.txt"
grep -E '^\[[0-9:]+\]' "$L" > "$D/stages.txt"
bash "$HERE/bagan/collect.sh" "$R" "$S"
bash "$HERE/softlabel/collect.sh" "$R" "$S"
# one report a seed, here; its section links point at the sections' folders
rm "$HERE/bagan/seed$S/report.md" "$HERE/softlabel/seed$S/report.md"
sed -i -e "s#(bagan/#(../../bagan/seed$S/#g" -e "s#(softlabel/#(../../softlabel/seed$S/#g" "$D/report.md"
