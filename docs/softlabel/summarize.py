"""docs/softlabel from the main job's Softlabel-section directories: python summarize.py SRC DST SEEDS.

SRC/seed<s>/softlabel/<method>/eval.json (written by `cbgan-ext demo --sections softlabel`) are read as they are;
per seed: the section's report lines, the intra-FD chart and sample grids; over the seeds: mean, spread and the
claim's per-seed checks. Methods missing in a seed are reported as missing, never filled in.
"""
import json
import os
import shutil
import sys

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from cbgan_ext import pipeline  # noqa: E402
from cbgan_ext.models.classifier import load_classifier  # noqa: E402
from cbgan_ext.train.gan import load_run  # noqa: E402

SRC, DST = sys.argv[1], sys.argv[2]
seeds = [int(s) for s in sys.argv[3].split(",")]
methods = list(pipeline.SOFTLABEL_METHODS)
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
per_seed = {}
for s in seeds:
    d, o = f"{SRC}/seed{s}/softlabel", f"{DST}/seed{s}"
    os.makedirs(o, exist_ok=True)
    ev, raw, counts = {}, {}, None
    for m in methods:
        if not os.path.exists(f"{d}/{m}/eval.json"):
            continue
        ev[m] = json.load(open(f"{d}/{m}/eval.json"))
        shutil.copy(f"{d}/{m}/eval.json", f"{o}/eval_{m}.json")
        if os.path.exists(f"{d}/{m}/eval_raw.json"):  # `cbgan-ext eval --generator raw`, see README.md
            raw[m] = json.load(open(f"{d}/{m}/eval_raw.json"))
            shutil.copy(f"{d}/{m}/eval_raw.json", f"{o}/eval_raw_{m}.json")
        shutil.copy(f"{d}/{m}/config.json", f"{o}/config_{m}.json")
        counts = json.load(open(f"{d}/{m}/config.json"))["class_counts"]
        run = load_run(f"{d}/{m}", "last")
        with torch.no_grad():  # column k: class k, as the section's grids
            x = run.G(torch.randn(100, run.z_dim, generator=torch.Generator().manual_seed(2024)), torch.arange(100) % 10)
        torchvision.utils.save_image(x, f"{o}/samples_{m}.png", nrow=10, normalize=True, value_range=(-1, 1))
    clf = load_classifier(f"{d}/softlabel_classifier.pt").checkpoint_info
    shutil.copy(f"{d}/softlabel_classifier.pt.metrics.jsonl", f"{o}/softlabel_classifier.metrics.jsonl")
    sl = {"eval": ev, "raw": raw, "class_counts": counts, "classes": CLASSES, "settings": pipeline._SOFTLABEL,
          "soft_label_classifier": {k: clf.get(k) for k in ("accuracy", "balanced_accuracy", "per_class_accuracy")}}
    pipeline.plot_intra_fd(f"{o}/intra_fd.png", ev, counts, CLASSES)
    lines = pipeline._softlabel_lines(sl)
    lines = [ln.replace("softlabel/intra_fd.png", "intra_fd.png").replace("(softlabel/samples_", "(samples_")
             for ln in lines]
    open(f"{o}/report.md", "w").write(f"# Seed {s}\n" + "\n".join(lines) + "\n")
    per_seed[s] = sl


def spread(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    return "{:.3f} ± {:.3f} ({:.3f}–{:.3f})".format(*pipeline._spread(vals))  # the main job's summary statistics


def get(s, m, fn, which="eval"):
    e = per_seed[s][which].get(m)
    return None if e is None else fn(e, per_seed[s])


QUANTITIES = [("FD-annotator ↓", lambda e, sl: e["fd"]),
              ("intra-FD, mean over classes ↓", lambda e, sl: e["intra_fd_mean"]),
              ("intra-FD, std over classes ↓", lambda e, sl: e["intra_fd_std"]),
              ("intra-FD, 3 smallest classes ↓",
               lambda e, sl: pipeline._minor_intra_fd({"eval": {"m": e}, "class_counts": sl["class_counts"]}, "m")),
              ("class consistency ↑", lambda e, sl: e["class_consistency"]),
              ("precision ↑", lambda e, sl: e["prdc"]["precision"]),
              ("recall ↑", lambda e, sl: e["prdc"]["recall"]),
              ("density ↑", lambda e, sl: e["prdc"]["density"]),
              ("coverage ↑", lambda e, sl: e["prdc"]["coverage"]),
              ("intra-recall ↑", lambda e, sl: e["intra_prdc"]["recall"]),
              ("intra-coverage ↑", lambda e, sl: e["intra_prdc"]["coverage"])]


def tables(which):
    lines = ["| quantity / method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd (range) |",
             "| --- |" + " --- |" * (len(seeds) + 1)]
    for label, fn in QUANTITIES:
        lines.append(f"| **{label}** |" + " |" * (len(seeds) + 1))
        for m in methods:
            vals = [get(s, m, fn, which) for s in seeds]
            lines.append(f"| {m} | " + " | ".join("missing" if v is None else f"{v:.3f}" for v in vals)
                         + f" | {spread(vals)} |")
    lines += ["", "Claim checks, Softlabel-GAN against DiffAug-GAN, per seed (✓ where it holds):", "",
              "| check | " + " | ".join(f"seed {s}" for s in seeds) + " |", "| --- |" + " --- |" * len(seeds)]
    for label, fn, better in (("FD-annotator lower", lambda e, sl: e["fd"], min),
                              ("intra-FD mean no worse", lambda e, sl: e["intra_fd_mean"], min),
                              ("intra-FD of the 3 smallest classes no worse", QUANTITIES[3][1], min),
                              ("class consistency no worse", lambda e, sl: e["class_consistency"], max)):
        cells = []
        for s in seeds:
            a, b = get(s, "softlabel-gan", fn, which), get(s, "diffaug-gan", fn, which)
            if a is None or b is None:
                cells.append("missing")
            else:
                ok = a < b if label.startswith("FD") else (a <= b if better is min else a >= b)
                cells.append(f"{'✓' if ok else '✗'} {a:.2f} vs {b:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


lines = tables("eval")
lines += ["", "| soft-label classifier | " + " | ".join(f"seed {s}" for s in seeds) + " |",
          "| --- |" + " --- |" * len(seeds),
          "| balanced test accuracy | " + " | ".join(
              f"{per_seed[s]['soft_label_classifier']['balanced_accuracy']:.3f}" for s in seeds) + " |",
          "| training counts by class | " + " | ".join(str(per_seed[s]["class_counts"]) for s in seeds) + " |"]
if any(per_seed[s]["raw"] for s in seeds):
    lines += ["", "## G as trained (`cbgan-ext eval --generator raw`), the same runs, annotator, n and seed", ""]
    lines += tables("raw")
open(f"{DST}/tables.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
