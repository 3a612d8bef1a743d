#!/bin/bash
# A study beside the recording: the section's seed-0 settings with the official 4 D steps a G step instead of 2
# (800 G steps, so twice the D steps), Softlabel-GAN and DiffAug-GAN, one thread each, one after the other.
# bash ndis4.sh SECTION_SEED_DIR OUT [SEED [METHODS]]  (SECTION_SEED_DIR: that seed's directory of run.sh, for its
# soft-label classifier and annotator; SEED 0 by default; METHODS "softlabel-gan diffaug-gan" by default)
set -euo pipefail
VENV=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin  # the repository's set-up (make setup)
S=$1; D=$2; SEED=${3:-0}; METHODS=${4:-softlabel-gan diffaug-gan}; C=$VENV/cbgan-ext
mkdir -p $D
for m in $METHODS; do
  SOFT=$( [ $m = softlabel-gan ] && echo "--soft-labels $S/softlabel/softlabel_classifier.pt" || true )
  $C train --method $m --dataset fashion-mnist --image-size 32 --profile lognormal --seed $SEED --threads 1 \
     --arch biggan --width 0.125 --batch-size 64 --n-dis 4 --steps 800 --ema-start 400 --ema-decay 0.999 \
     --policy translation,cutout --eval-every 0 --sample-every 400 --ckpt-every 100 --log-every 50 \
     --annotator $S/annotator.pt $SOFT --no-progress --out $D/$m 2>&1 | tail -1
  for g in ema raw; do
    [ -f $D/$m/eval_$g.json ] || { OMP_NUM_THREADS=1 $C eval --run $D/$m --checkpoint last --annotator $S/annotator.pt \
        --n 5000 --fid annotator --seed 2024 --lpips-images 0 --generator $g > $D/$m/eval_$g.json.tmp \
        && mv $D/$m/eval_$g.json.tmp $D/$m/eval_$g.json; }
  done
done
# the table of docs/softlabel/README.md's study, next to the recorded 2-D-step runs of the seed (docs/softlabel/seedS)
[ -f $D/softlabel-gan/eval_raw.json ] && [ -f $D/diffaug-gan/eval_raw.json ] || exit 0
HERE=$(cd "$(dirname "$0")" && pwd)
$VENV/python - "$D" "$HERE/seed$SEED" "$SEED" <<'PY'
import json, sys
from cbgan_ext import pipeline
d, rec, seed = sys.argv[1:]
counts = json.load(open(f"{d}/softlabel-gan/config.json"))["class_counts"]
def row(path):
    e = json.load(open(path))
    return (e["fd"], e["intra_fd_mean"], pipeline._minor_intra_fd({"eval": {"m": e}, "class_counts": counts}, "m"),
            e["class_consistency"])
print(f"| seed {seed} | generator | FD-annotator ↓ softlabel / diffaug | intra-FD mean ↓ | intra-FD, 3 smallest ↓ | class consistency ↑ |")
print("| --- | --- | --- | --- | --- | --- |")
for nd, g, paths in (("2 (recorded)", "EMA", [f"{rec}/eval_{m}.json" for m in ("softlabel-gan", "diffaug-gan")]),
                     ("2 (recorded)", "raw", [f"{rec}/eval_raw_{m}.json" for m in ("softlabel-gan", "diffaug-gan")]),
                     ("4", "EMA", [f"{d}/{m}/eval_ema.json" for m in ("softlabel-gan", "diffaug-gan")]),
                     ("4", "raw", [f"{d}/{m}/eval_raw.json" for m in ("softlabel-gan", "diffaug-gan")])):
    a, b = row(paths[0]), row(paths[1])
    print(f"| n_dis {nd} | {g} | " + " | ".join(f"{x:.2f} / {y:.2f}" if i < 3 else f"{x:.3f} / {y:.3f}"
                                                for i, (x, y) in enumerate(zip(a, b))) + " |")
PY
