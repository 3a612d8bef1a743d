"""docs/bagan from the recorded run directories: per seed and mean/spread."""
import json, os, shutil, statistics, sys
import torch, torchvision
sys.path.insert(0, "/work/main")
from cbgan_ext.train.gan import load_run
from cbgan_ext import pipeline

SRC, DST = sys.argv[1], sys.argv[2]
seeds = [int(s) for s in sys.argv[3].split(",")]
methods = ["bagan", "acgan", "minority-gan"]
os.makedirs(DST, exist_ok=True)
rows, aug = {}, {}
for s in seeds:
    d = f"{SRC}/seed{s}"
    o = f"{DST}/seed{s}"
    os.makedirs(o, exist_ok=True)
    for m in methods + (["bagan-ae1000"] if os.path.exists(f"{d}/bagan-ae1000/eval.json") else []):
        ev = json.load(open(f"{d}/{m}/eval.json"))
        rows.setdefault(m, {})[s] = ev
        shutil.copy(f"{d}/{m}/eval.json", f"{o}/eval_{m}.json")
        shutil.copy(f"{d}/{m}/config.json", f"{o}/config_{m}.json")
        if os.path.exists(f"{d}/{m}/gaussians.json"):
            shutil.copy(f"{d}/{m}/gaussians.json", f"{o}/gaussians_{m}.json")
        run = load_run(f"{d}/{m}", "last")
        g = torch.Generator().manual_seed(2024)
        n = 80
        with torch.no_grad():
            z = torch.randn(n, run.z_dim, generator=g)
            x = run.G(z, torch.arange(10).repeat_interleave(8)) if run.conditional else run.G(z)
        torchvision.utils.save_image(x, f"{o}/samples_{m}.png", nrow=8, normalize=True, value_range=(-1, 1))
    for name in ("augment", "augment-ae1000"):
        if os.path.exists(f"{d}/{name}/results.json"):
            r = json.load(open(f"{d}/{name}/results.json"))
            shutil.copy(f"{d}/{name}/results.json", f"{o}/{name}_results.json")
            for row, v in r["rows"].items():
                aug.setdefault(row if name == "augment" else row + "-ae1000", {})[s] = v
    shutil.copy(f"{d}/annotator.pt.metrics.jsonl", f"{o}/annotator.metrics.jsonl")


def spread(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    return "{:.3f} ± {:.3f} ({:.3f}–{:.3f})".format(*pipeline._spread(vals))  # the main job's summary statistics


def ssim_at(ev, key, k=0):
    v = ev.get("ssim", {}).get(key)
    return None if not v else v[k]


lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd (range) |",
         "| --- |" + " --- |" * (len(seeds) + 1)]
for label, fn in (("generated T-shirt/top labelled T-shirt/top (annotator)", lambda e: e["class_accuracy"][0]),
                  ("mean per-class accuracy of generated images (all 10 classes)",
                   lambda e: None if None in e["class_accuracy"] else sum(e["class_accuracy"]) / len(e["class_accuracy"])),
                  ("SSIM of generated T-shirt pairs", lambda e: ssim_at(e, "fake_pairs")),
                  ("SSIM of real T-shirt pairs (reference)", lambda e: ssim_at(e, "real_pairs")),
                  ("SSIM generated T-shirt to nearest real", lambda e: ssim_at(e, "fake_to_nearest_real")),
                  ("SSIM real T-shirt to nearest other real", lambda e: ssim_at(e, "real_to_nearest_real")),
                  ("FD-annotator (all classes, vs balanced test)", lambda e: e["fd"]),
                  ("intra-FD of generated T-shirts (vs the T-shirt test images)",
                   lambda e: (e.get("intra_fd") or [None])[0])):
    lines.append(f"| **{label}** | | |" + " |" * (len(seeds) - 1))
    for m, per in rows.items():
        vals = [fn(per[s]) if s in per else None for s in seeds]
        lines.append(f"| {m} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in vals) + f" | {spread(vals)} |")
lines += ["", "| classifier trained on | added images | " + " | ".join(f"T-shirt test accuracy, seed {s}" for s in seeds)
          + " | mean ± sd (range) | balanced accuracy (mean) |", "| --- | --- |" + " --- |" * (len(seeds) + 2)]
for row, per in aug.items():
    vals = [per[s]["minority_accuracy"][0] if s in per else None for s in seeds]
    bal = [per[s]["balanced_accuracy"] for s in seeds if s in per]
    added = next(iter(per.values()))["added"]
    lines.append(f"| {row} | {added} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in vals)
                 + f" | {spread(vals)} | {statistics.fmean(bal):.3f} |")
open(f"{DST}/tables.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
