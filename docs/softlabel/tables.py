"""The Softlabel section's table over the recorded seeds, from seed*/results.json: python docs/softlabel/tables.py"""
import glob
import json
import os

from cbgan_ext.pipeline import _minor_intra_fd, _spread, minor_classes

HERE = os.path.dirname(os.path.abspath(__file__))


def spread(vals):
    return "{:.3f} ± {:.3f} ({:.3f}–{:.3f})".format(*_spread(vals))


def main():
    runs = {}
    for path in sorted(glob.glob(os.path.join(HERE, "seed*", "results.json"))):
        runs[int(os.path.basename(os.path.dirname(path))[4:])] = json.load(open(path))["softlabel"]
    seeds = sorted(runs)
    first = runs[seeds[0]]
    print("| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd (range) |")
    print("| --- |" + " --- |" * (len(seeds) + 1))
    rows = (("class consistency (200 asked for each class) ↑", lambda r, m: r["eval"][m]["class_consistency"]),
            ("FD-annotator ↓", lambda r, m: r["eval"][m]["fd"]),
            ("intra-FD, mean over the classes ↓", lambda r, m: r["eval"][m]["intra_fd_mean"]),
            ("intra-FD, mean over the 3 smallest classes ↓", lambda r, m: _minor_intra_fd(r, m)))
    for label, get in rows:
        print(f"| **{label}** |" + " |" * (len(seeds) + 1))
        for m in first["eval"]:
            vals = [get(runs[s], m) for s in seeds]
            print(f"| {m} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {spread(vals)} |")
    print()
    for s in seeds:
        counts, classes = runs[s]["class_counts"], runs[s]["classes"]
        small = ", ".join(f"{classes[k]} ({counts[k]})" for k in minor_classes(counts))
        acc = runs[s]["soft_label_classifier"]["balanced_accuracy"]
        print(f"- seed {s}: the 3 smallest classes {small}; soft-label classifier balanced accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
