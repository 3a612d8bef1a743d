"""The BAGAN section's tables over the recorded seeds, from seed*/results.json: python docs/bagan/tables.py"""
import glob
import json
import os
import statistics

from cbgan_ext.pipeline import _spread

HERE = os.path.dirname(os.path.abspath(__file__))


def spread(vals):
    return "{:.3f} ± {:.3f} ({:.3f}–{:.3f})".format(*_spread(vals))


def main():
    runs = {}
    for path in sorted(glob.glob(os.path.join(HERE, "seed*", "results.json"))):
        runs[int(os.path.basename(os.path.dirname(path))[4:])] = json.load(open(path))["bagan"]
    seeds = sorted(runs)
    first = runs[seeds[0]]
    k = first["augment"]["minority_classes"][0]
    head = "| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd (range) |"
    rule = "| --- |" + " --- |" * (len(seeds) + 1)
    print(head + "\n" + rule)
    rows = (("class consistency (all classes, 200 asked for each)", lambda r: r["class_consistency"]),
            (f"minority (class {k}) images labelled as it", lambda r: r["class_accuracy"][k]),
            ("FD-annotator (all classes)", lambda r: r["fd"]),
            (f"intra-FD of the minority class", lambda r: r["intra_fd"][k]),
            ("SSIM of minority fake pairs (real pairs: next row)", lambda r: r["ssim"]["fake_pairs"][k]),
            ("SSIM of minority real pairs", lambda r: r["ssim"]["real_pairs"][k]))
    for label, get in rows:
        print(f"| **{label}** |" + " |" * (len(seeds) + 1))
        for m in first["eval"]:
            vals = [get(runs[s]["eval"][m]) for s in seeds]
            print(f"| {m} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {spread(vals)} |")
    print()
    print("| classifier trained on | added images | " + " | ".join(f"minority accuracy, seed {s}" for s in seeds)
          + " | mean ± sd (range) | balanced accuracy (mean) |")
    print("| --- | --- |" + " --- |" * (len(seeds) + 2))
    for row in first["augment"]["rows"]:
        vals = [runs[s]["augment"]["rows"][row]["minority_accuracy"][0] for s in seeds]
        bal = statistics.fmean(runs[s]["augment"]["rows"][row]["balanced_accuracy"] for s in seeds)
        print(f"| {row} | {first['augment']['rows'][row]['added']} | " + " | ".join(f"{v:.3f}" for v in vals)
              + f" | {spread(vals)} | {bal:.3f} |")


if __name__ == "__main__":
    main()
