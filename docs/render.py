"""Every results table in the README and the studies' pages, rendered from the committed results.json files.

    python docs/render.py           rewrite the tables in place
    python docs/render.py --check   exit 1 naming each table that differs from its files (the tests run this)

A table sits between ``<!-- render NAME -->`` and ``<!-- /render -->`` in a page; edit this script, not the
table. Numbers are rounded once, here.
"""
import glob
import json
import os
import re
import statistics
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
PAGES = ("README.md", "docs/main-job/README.md", "docs/bagan/README.md", "docs/softlabel/README.md")
_BLOCK = re.compile(r"(<!-- render ([\w-]+) -->\n)(.*?)(<!-- /render -->)", re.S)


def _runs(study, key=None):
    runs = {}
    for path in glob.glob(os.path.join(DOCS, study, "seed*", "results.json")):
        with open(path) as f:
            r = json.load(f)
        runs[int(os.path.basename(os.path.dirname(path))[4:])] = r[key] if key else r
    if not runs:
        raise FileNotFoundError(f"no {study}/seed*/results.json under {DOCS}")
    return dict(sorted(runs.items()))


def _stats(vals):
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return statistics.fmean(vals), sd, min(vals), max(vals)


def spread(vals, fmt="{:.3f}", unit=""):
    """mean ± sd (min–max), each number in ``fmt``."""
    m, sd, lo, hi = (fmt.format(v) for v in _stats(vals))
    return f"{m} ± {sd} ({lo}–{hi}){unit}"


def _slash(vals, fmt="{:.3f}"):
    return " / ".join(fmt.format(v) for v in vals)


def _minor(counts, n=3):
    return sorted(range(len(counts)), key=lambda k: (counts[k], k))[:n]


def _minor_intra_fd(section, method):
    intra = section["eval"][method]["intra_fd"]
    return statistics.fmean(intra[k] for k in _minor(section["class_counts"]))


# ---------------------------------------------------------------------------------------------- cbgan section
def cbgan_seeds():
    runs = _runs("main-job")
    head = ("| seed | KL baseline | KL CBGAN | KL ratio (baseline / CBGAN) | FD-annotator baseline | FD-annotator CBGAN"
            " | FD ratio (CBGAN / baseline) | annotator confidence, baseline / CBGAN | classifier bal. acc. |")
    lines = [head, "| --- " * 9 + "|"]
    cols = {k: [] for k in ("klg", "klc", "klr", "fdg", "fdc", "fdr", "cg", "cc", "acc")}
    for s, r in runs.items():
        g, c, ratio = r["results"]["gan"], r["results"]["cbgan"], r["ratios"]["cbgan"]
        row = dict(klg=g["kl"], klc=c["kl"], klr=ratio["kl_ratio"], fdg=g["fd"], fdc=c["fd"], fdr=ratio["fd_ratio"],
                   cg=g["confidence"], cc=c["confidence"],
                   acc=100 * r["classifiers"]["classifier"]["balanced_accuracy"])
        for k, v in row.items():
            cols[k].append(v)
        lines.append(f"| {s} | {row['klg']:.3f} | {row['klc']:.3f} | **{row['klr']:.2f}×** | {row['fdg']:.2f} | "
                     f"{row['fdc']:.2f} | {row['fdr']:.2f} | {row['cg']:.3f} / {row['cc']:.3f} | {row['acc']:.1f}% |")
    two = "{:.2f}"
    lines.append(f"| mean ± sd (range) | {spread(cols['klg'])} | {spread(cols['klc'])} | "
                 f"{spread(cols['klr'], two, '×')} | "
                 f"{spread(cols['fdg'], two)} | {spread(cols['fdc'], two)} | {spread(cols['fdr'], two)} | "
                 f"{statistics.fmean(cols['cg']):.3f} / {statistics.fmean(cols['cc']):.3f} | "
                 f"{spread(cols['acc'], '{:.1f}', '%')} |")
    return "\n".join(lines)


def cbgan_holds():
    runs = _runs("main-job")
    kl = [r["ratios"]["cbgan"]["kl_ratio"] for r in runs.values()]
    fd = [r["ratios"]["cbgan"]["fd_ratio"] for r in runs.values()]
    conf = {m: [r["results"][m]["confidence"] for r in runs.values()] for m in ("gan", "cbgan")}
    real = [r["results"]["gan"]["real_confidence"] for r in runs.values()]
    ann = [100 * r["classifiers"]["annotator"]["balanced_accuracy"] for r in runs.values()]
    ok = [k >= 3 and f <= 1.25 for k, f in zip(kl, fd)]
    return "\n".join([
        "**What holds and what does not** (the claim: ≥ 3× lower KL at an FD no worse than 1.25× the baseline's, "
        "on each seed, with recognisable samples):",
        f"- **KL and FD:** CBGAN's KL is {_rng(kl)}× lower than the baseline's, at {_rng(fd)}× its FD-annotator: "
        f"the claim holds on {_count(ok)}.",
        f"- **Annotator confidence** on the generated images: CBGAN {_rng(conf['cbgan'], '{:.3f}')}, the baseline "
        f"{_rng(conf['gan'], '{:.3f}')}, real test images {_rng(real, '{:.3f}')} (the annotator's balanced test "
        f"accuracy {_rng(ann, '{:.1f}')}%).",
    ])


def _cell(vals, fmt="{:.3f}"):
    m, sd = _stats(vals)[:2]
    return f"{_slash(vals, fmt)} ({fmt.format(m)} ± {fmt.format(sd)})"


def cbgan_readme():
    runs = _runs("main-job")
    seeds = list(runs)
    res = {s: r["results"] for s, r in runs.items()}
    lines = ["| seed " + " / ".join(map(str, seeds)) + " (mean ± sd) | baseline (SNDCGAN) | CBGAN |",
             "| --- | --- | --- |"]
    for name, key, fmt in (("KL of the annotator's class histogram to uniform ↓", "kl", "{:.3f}"),
                           ("FD-annotator ↓", "fd", "{:.2f}")):
        lines.append(f"| {name} | " + " | ".join(_cell([res[s][m][key] for s in seeds], fmt) for m in ("gan", "cbgan"))
                     + " |")
    kl = [runs[s]["ratios"]["cbgan"]["kl_ratio"] for s in seeds]
    fd = [runs[s]["ratios"]["cbgan"]["fd_ratio"] for s in seeds]
    lines.append(f"| KL ratio (baseline / CBGAN), FD ratio (CBGAN / baseline) | {_cell(kl, '{:.2f}')}× | "
                 f"{_cell(fd, '{:.2f}')} |")
    return "\n".join(lines)


def _rng(vals, fmt="{:.2f}"):
    lo, hi = fmt.format(min(vals)), fmt.format(max(vals))
    return lo if lo == hi else f"{lo}–{hi}"


def _count(flags):
    n = sum(flags)
    return "every seed" if n == len(flags) else ("no seed" if n == 0 else f"{n} of {len(flags)} seeds")


def _learn(consistencies, bar=0.6):
    """Whether every generator cleared the bar on every seed, in words."""
    return (f"at least {bar} on every seed" if min(consistencies) >= bar else
            f"{sum(c < bar for c in consistencies)} of {len(consistencies)} below {bar}")


def glance_holds():
    """What holds of each paper's claim, in words, from the same files as the tables."""
    out = []
    cb = _runs("main-job")
    kl = [r["ratios"]["cbgan"]["kl_ratio"] for r in cb.values()]
    fd = [r["ratios"]["cbgan"]["fd_ratio"] for r in cb.values()]
    ok = [k >= 3 and f <= 1.25 for k, f in zip(kl, fd)]
    out.append(f"- **CBGAN** (claim: a more balanced class mix at no worse FD; here ≥ 3× lower KL at FD ≤ 1.25× "
               f"the baseline's): {_rng(kl)}× lower KL at {_rng(fd)}× the baseline's FD-annotator; holds on "
               f"{_count(ok)}.")
    bg = _runs("bagan", "bagan")
    k = next(iter(bg.values()))["augment"]["minority_classes"][0]
    name = _class_name("bagan", k)
    cons = {m: [r["eval"][m]["class_consistency"] for r in bg.values()] for m in ("bagan", "acgan")}
    mino = {m: [r["eval"][m]["class_accuracy"][k] for r in bg.values()] for m in ("bagan", "acgan")}
    lead = [b - a for b, a in zip(mino["bagan"], mino["acgan"])]
    aug = {row: [r["augment"]["rows"][row]["minority_accuracy"][0] for r in bg.values()]
           for row in ("plain", "oversample", "bagan")}
    beats_plain = [b > p for b, p in zip(aug["bagan"], aug["plain"])]
    beats_over = [b > o for b, o in zip(aug["bagan"], aug["oversample"])]
    out.append(f"- **BAGAN** (claim: its minority images are recognised more often than ACGAN's and help a "
               f"classifier): class consistency {_rng(cons['bagan'], '{:.3f}')} and "
               f"{_rng(cons['acgan'], '{:.3f}')} ({_learn(cons['bagan'] + cons['acgan'])}); BAGAN's {name} images "
               f"are labelled {name} "
               f"{_rng(mino['bagan'], '{:.3f}')} of the time, ACGAN's {_rng(mino['acgan'], '{:.3f}')}: a lead of "
               f"0.2 or more on {_count([d >= 0.2 for d in lead])}. BAGAN's images raise the classifier's {name} "
               f"accuracy above the plain classifier's on {_count(beats_plain)} ({_rng(aug['plain'], '{:.3f}')} → "
               f"{_rng(aug['bagan'], '{:.3f}')}) and beat oversampling ({_rng(aug['oversample'], '{:.3f}')}) on "
               f"{_count(beats_over)}.")
    sl = _runs("softlabel", "softlabel")
    cons = {m: [r["eval"][m]["class_consistency"] for r in sl.values()] for m in ("softlabel-gan", "diffaug-gan")}
    fd_win = [r["eval"]["softlabel-gan"]["fd"] < r["eval"]["diffaug-gan"]["fd"] for r in sl.values()]
    intra_win = [r["eval"]["softlabel-gan"]["intra_fd_mean"] < r["eval"]["diffaug-gan"]["intra_fd_mean"]
                 for r in sl.values()]
    minor_win = [_minor_intra_fd(r, "softlabel-gan") < _minor_intra_fd(r, "diffaug-gan") for r in sl.values()]
    out.append(f"- **Softlabel-GAN** (claim: lower FD and intra-FD than DiffAug-GAN): class consistency "
               f"{_rng(cons['softlabel-gan'], '{:.3f}')} and {_rng(cons['diffaug-gan'], '{:.3f}')} "
               f"({_learn(cons['softlabel-gan'] + cons['diffaug-gan'])}); "
               f"Softlabel-GAN has the lower FD-annotator on {_count(fd_win)}, the lower mean intra-FD on "
               f"{_count(intra_win)} and the lower intra-FD of the 3 smallest classes on {_count(minor_win)}.")
    return "\n".join(out)


def _job_times():
    """{seed: (cpu s, wall s, peak GiB, machine, what else ran)} of the whole default job, from
    main-job/seed*/time.txt and main-job/timing.json."""
    with open(os.path.join(DOCS, "main-job", "timing.json")) as f:
        beside = json.load(f)["beside"]
    got = {}
    for s, r in _runs("main-job").items():
        cpu, wall, rss = _time_file(os.path.join(DOCS, "main-job", f"seed{s}", "time.txt"))
        got[s] = (cpu, wall, rss, r["machine"], beside[str(s)])
    return got


def _machine(m):
    return f"{m['cores']}-core {m['cpu']} ({', '.join(m['cpu_flags'])})"


def main_job_time():
    alone = {s: t for s, t in _job_times().items() if t[4] == "nothing"}
    walls = [t[1] / 60 for t in alone.values()]
    machines = {_machine(t[3]) for t in alone.values()}
    return ("Timed: the `default` job (`cbgan-ext demo --seed S`) from an empty directory with nothing else running "
            f"took **{_rng(walls, '{:.1f}')} min** wall clock (seeds {', '.join(map(str, alone))}; at most "
            f"{max(t[0] for t in alone.values()) / 60:.0f} CPU-minutes and {max(t[2] for t in alone.values()):.1f} "
            f"GiB; `/usr/bin/time -v`) on a {' / '.join(sorted(machines))}. Minutes move with the CPU: expect "
            "longer on one without AVX-512 ([docs/main-job](docs/main-job/README.md)).")


def job_times():
    lines = ["| seed | wall clock | CPU, user + system | peak memory | machine | also running |",
             "| --- | --- | --- | --- | --- | --- |"]
    for s, (cpu, wall, rss, m, beside) in _job_times().items():
        lines.append(f"| {s} | {wall / 60:.1f} min | {cpu / 60:.1f} min | {rss:.1f} GiB | {_machine(m)} | {beside} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- BAGAN section
def _bagan_rows(first):
    k = first["augment"]["minority_classes"][0]
    return (("class consistency (all classes, 200 asked for each)", lambda r: r["class_consistency"]),
            (f"minority (class {k}) images labelled as it", lambda r: r["class_accuracy"][k]),
            ("FD-annotator (all classes)", lambda r: r["fd"]),
            ("intra-FD of the minority class", lambda r: r["intra_fd"][k]),
            ("SSIM of minority fake pairs (real pairs: next row)", lambda r: r["ssim"]["fake_pairs"][k]),
            ("SSIM of minority real pairs", lambda r: r["ssim"]["real_pairs"][k]))


def _per_seed_table(runs, rows):
    seeds = list(runs)
    first = runs[seeds[0]]
    lines = ["| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd (range) |",
             "| --- |" + " --- |" * (len(seeds) + 1)]
    for label, get in rows:
        lines.append(f"| **{label}** |" + " |" * (len(seeds) + 1))
        for m in first["eval"]:
            vals = [get(runs[s], m) for s in seeds]
            lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {spread(vals)} |")
    return lines


def bagan_seeds():
    runs = _runs("bagan", "bagan")
    rows = [(label, lambda r, m, get=get: get(r["eval"][m])) for label, get in _bagan_rows(next(iter(runs.values())))]
    return "\n".join(_per_seed_table(runs, rows))


def bagan_augment():
    runs = _runs("bagan", "bagan")
    seeds, first = list(runs), next(iter(runs.values()))
    lines = ["| classifier trained on | added images | " + " | ".join(f"minority accuracy, seed {s}" for s in seeds)
             + " | mean ± sd (range) | balanced accuracy (mean) |", "| --- |" * 1 + " --- |" * (len(seeds) + 3)]
    for row, info in first["augment"]["rows"].items():
        vals = [runs[s]["augment"]["rows"][row]["minority_accuracy"][0] for s in seeds]
        bal = statistics.fmean(runs[s]["augment"]["rows"][row]["balanced_accuracy"] for s in seeds)
        lines.append(f"| {row} | {info['added']} | " + " | ".join(f"{v:.3f}" for v in vals)
                     + f" | {spread(vals)} | {bal:.3f} |")
    return "\n".join(lines)


def _class_name(study, k):
    from cbgan_ext.data.sources import FASHION_MNIST_CLASSES
    dataset = next(iter(_runs(study).values()))["config"]["dataset"]
    return FASHION_MNIST_CLASSES[k] if dataset == "fashion-mnist" else f"class {k}"


def bagan_readme():
    runs = _runs("bagan", "bagan")
    seeds, first = list(runs), next(iter(runs.values()))
    k = first["augment"]["minority_classes"][0]
    name_k = _class_name("bagan", k)
    label = {"bagan": "BAGAN", "acgan": "ACGAN", "minority-gan": "minority-only GAN"}
    methods = list(first["eval"])
    lines = ["| seed " + " / ".join(map(str, seeds)) + " (mean ± sd) | " + " | ".join(label.get(m, m) for m in methods)
             + " |", "| --- |" + " --- |" * len(methods)]
    for name, get in (("class consistency (annotator's label = the class asked for)", lambda r: r["class_consistency"]),
                      (f"minority ({name_k}) images labelled {name_k}", lambda r: r["class_accuracy"][k]),
                      ("FD-annotator", lambda r: r["fd"])):
        cells = [_cell([get(runs[s]["eval"][m]) for s in seeds]) for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"| classifier trained with | {name_k} test accuracy, seed "
              + " / ".join(map(str, seeds)) + " (mean ± sd) |", "| --- | --- |"]
    for row in first["augment"]["rows"]:
        lines.append(f"| {row} | {_cell([runs[s]['augment']['rows'][row]['minority_accuracy'][0] for s in seeds])} |")
    return "\n".join(lines)


def bagan_holds():
    """The page's "what holds" in words, every number from seed*/results.json."""
    runs = _runs("bagan", "bagan")
    seeds = list(runs)
    first = runs[seeds[0]]
    k = first["augment"]["minority_classes"][0]
    name = _class_name("bagan", k)
    ev = {s: r["eval"] for s, r in runs.items()}

    def per(get, fmt="{:.3f}"):
        return " / ".join(fmt.format(get(s)) for s in seeds)

    def rng(get, fmt="{:.2f}"):
        return _rng([get(s) for s in seeds], fmt)

    cons = [ev[s][m]["class_consistency"] for s in seeds for m in ("bagan", "acgan")]
    weakest = []
    for s in seeds:
        acc = ev[s]["acgan"]["class_accuracy"]
        j = min(range(len(acc)), key=acc.__getitem__)
        weakest.append(f"{_class_name('bagan', j)} {acc[j]:.2f} on seed {s}")
    lead = [ev[s]["bagan"]["class_accuracy"][k] - ev[s]["acgan"]["class_accuracy"][k] for s in seeds]
    aug = {row: [runs[s]["augment"]["rows"][row]["minority_accuracy"][0] for s in seeds]
           for row in first["augment"]["rows"]}
    least = _learn(cons)
    head = "Both methods learn their classes" if min(cons) >= 0.6 else "Class consistency"
    lines = [f"**What holds and what does not** (seeds {' / '.join(map(str, seeds))}):",
             f"- **{head}:** class consistency BAGAN "
             f"{per(lambda s: ev[s]['bagan']['class_consistency'])}, ACGAN "
             f"{per(lambda s: ev[s]['acgan']['class_consistency'])} ({least}); the grids "
             "(`seed*/samples_*.png`, column k is class k) show the asked-for garments. ACGAN's weakest class: "
             + ", ".join(weakest) + " (per class: `seed*/eval_acgan.json`).",
             f"- **Variety within a class:** SSIM of generated {name} pairs BAGAN "
             f"{rng(lambda s: ev[s]['bagan']['ssim']['fake_pairs'][k])}, ACGAN "
             f"{rng(lambda s: ev[s]['acgan']['ssim']['fake_pairs'][k])}, real pairs "
             f"{rng(lambda s: ev[s]['bagan']['ssim']['real_pairs'][k])} (higher: more alike).",
             f"- **Closeness to the data:** FD-annotator BAGAN {per(lambda s: ev[s]['bagan']['fd'], '{:.2f}')} against "
             f"ACGAN {per(lambda s: ev[s]['acgan']['fd'], '{:.2f}')}.",
             "- **Minority images labelled as the minority class:** BAGAN "
             f"{per(lambda s: ev[s]['bagan']['class_accuracy'][k])}, "
             f"ACGAN {per(lambda s: ev[s]['acgan']['class_accuracy'][k])}: BAGAN at least 0.6 on "
             f"{_count([ev[s]['bagan']['class_accuracy'][k] >= 0.6 for s in seeds])}, 0.2 or more above ACGAN on "
             f"{_count([d >= 0.2 for d in lead])}.",
             f"- **Augmented classifier** ({name} test accuracy): plain {_slash(aug['plain'])}, with BAGAN's images "
             f"{_slash(aug['bagan'])} (above plain on {_count([b > p for b, p in zip(aug['bagan'], aug['plain'])])}); "
             f"oversampling the real ones {_slash(aug['oversample'])}"
             + (f", mirroring them {_slash(aug['mirror'])}" if "mirror" in aug else "")
             + f"; BAGAN above oversampling on {_count([b > o for b, o in zip(aug['bagan'], aug['oversample'])])}."]
    return "\n".join(lines)


def _changes(c):
    words = []
    if c.get("policy") == "":
        words.append("no DiffAugment")
    if c.get("ema_start", 0) >= 10 ** 9:
        words.append("no EMA")
    for key, say in (("acgan_g", {"multiply": "G takes z ⊙ class embedding"}),
                     ("acgan_aux", {"real+fake": "D's class term on reals and fakes"}),
                     ("d_sn", {True: "spectral norm on D"}),
                     ("real_sampling", {"data": "real batches in data order",
                                        "balanced": "real batches class-balanced"}),
                     ("class_sampling", {"uniform": "fakes' classes uniform"}),
                     ("d_class_sampling", {"data": "D's fakes' classes as in the data"})):
        if key in c:
            words.append(say[c[key]])
    return ", ".join(words) or "none"


def acgan_trial():
    with open(os.path.join(DOCS, "bagan", "acgan_trial.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    gen = {"raw": "G as trained", "ema": "EMA"}
    lines = ["| seed | method | changed from the section's settings | steps | generator | class consistency | "
             "T-shirt | FD-annotator |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['method']} | {_changes(r['changes'])} | {r['steps']} | "
                     f"{gen[r['generator']]} | {r['class_consistency']:.3f} | {r['tshirt']:.3f} | {r['fd']:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ Softlabel section
_SL_ROWS = (("class consistency (200 asked for each class) ↑", lambda r, m: r["eval"][m]["class_consistency"]),
            ("FD-annotator ↓", lambda r, m: r["eval"][m]["fd"]),
            ("intra-FD, mean over the classes ↓", lambda r, m: r["eval"][m]["intra_fd_mean"]),
            ("intra-FD, mean over the 3 smallest classes ↓", _minor_intra_fd))


def softlabel_seeds():
    runs, full = _runs("softlabel", "softlabel"), _runs("softlabel")
    lines = _per_seed_table(runs, _SL_ROWS) + [""]
    for s, r in runs.items():
        small = ", ".join(f"{r['classes'][k]} ({r['class_counts'][k]})" for k in _minor(r["class_counts"]))
        acc = r["soft_label_classifier"]["balanced_accuracy"]
        ann = full[s]["classifiers"]["annotator"]["balanced_accuracy"]
        lines.append(f"- seed {s}: the 3 smallest classes {small}; balanced test accuracy of the soft-label "
                     f"classifier {acc:.3f}, of the annotator {ann:.3f}")
    return "\n".join(lines)


def softlabel_readme():
    runs = _runs("softlabel", "softlabel")
    seeds, first = list(runs), next(iter(runs.values()))
    label = {"softlabel-gan": "Softlabel-GAN", "diffaug-gan": "DiffAug-GAN", "smooth-gan": "Smooth-GAN"}
    methods = list(first["eval"])
    lines = ["| seed " + " / ".join(map(str, seeds)) + " (mean ± sd) | " + " | ".join(label.get(m, m) for m in methods)
             + " |", "| --- |" + " --- |" * len(methods)]
    for name, get in _SL_ROWS:
        cells = [_cell([get(runs[s], m) for s in seeds]) for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def softlabel_holds():
    """The page's "what holds" in words, every number from seed*/results.json."""
    runs = _runs("softlabel", "softlabel")
    seeds = list(runs)
    sl, da = "softlabel-gan", "diffaug-gan"
    ev = {s: r["eval"] for s, r in runs.items()}

    def per(get, fmt="{:.2f}"):
        return " / ".join(fmt.format(get(s)) for s in seeds)

    cons = {m: [ev[s][m]["class_consistency"] for s in seeds] for m in (sl, da)}
    least = _learn(cons[sl] + cons[da])
    head = "Both methods learn their classes" if min(cons[sl] + cons[da]) >= 0.6 else "Class consistency"
    lines = [f"**What holds and what does not** (seeds {' / '.join(map(str, seeds))}):",
             f"- **{head}:** class consistency "
             f"{per(lambda s: ev[s][sl]['class_consistency'], '{:.3f}')} for Softlabel-GAN and "
             f"{per(lambda s: ev[s][da]['class_consistency'], '{:.3f}')} for DiffAug-GAN ({least}; chance 0.10, the "
             "annotator itself about 0.89 on real test images). The grids (`seed*/samples_*.png`, column k is class "
             "k) show the asked-for garments."]
    for name, get in (("FD-annotator", lambda s, m: ev[s][m]["fd"]),
                      ("Mean intra-FD", lambda s, m: ev[s][m]["intra_fd_mean"]),
                      ("Intra-FD of the 3 smallest classes", lambda s, m: _minor_intra_fd(runs[s], m))):
        wins = [get(s, sl) < get(s, da) for s in seeds]
        lines.append(f"- **{name}:** Softlabel-GAN {per(lambda s: get(s, sl))} against DiffAug-GAN "
                     f"{per(lambda s: get(s, da))}: Softlabel-GAN lower on {_count(wins)}.")
    big, small = [], []
    for s in seeds:
        r = runs[s]
        counts = r["class_counts"]
        kb, ks = max(range(len(counts)), key=counts.__getitem__), min(range(len(counts)), key=counts.__getitem__)
        big.append(f"{r['classes'][kb]} ({counts[kb]} images): consistency {ev[s][sl]['class_accuracy'][kb]:.2f} "
                   f"against {ev[s][da]['class_accuracy'][kb]:.2f}, intra-FD {ev[s][sl]['intra_fd'][kb]:.1f} against "
                   f"{ev[s][da]['intra_fd'][kb]:.1f}")
        small.append((r["classes"][ks], counts[ks], ev[s][sl]["intra_fd"][ks], ev[s][da]["intra_fd"][ks]))
    lines.append("- **The largest class**, Softlabel-GAN against DiffAug-GAN: " + "; ".join(big) + ".")
    lines.append("- **The smallest class**, intra-FD Softlabel-GAN against DiffAug-GAN: "
                 + "; ".join(f"{n} ({c} images) {a:.2f} against {b:.2f}" for n, c, a, b in small)
                 + f": Softlabel-GAN lower on {_count([a < b for _, _, a, b in small])}.")
    return "\n".join(lines)


def softlabel_ema_trial():
    """The earlier recording's final EMA against G as trained, from ema_trial.jsonl (why the section keeps no EMA)."""
    with open(os.path.join(DOCS, "softlabel", "ema_trial.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    pairs = {}
    for r in rows:
        pairs.setdefault((r["seed"], r["method"]), {})[r["generator"]] = r
    lines = ["| seed | method | class consistency, EMA / as trained | FD-annotator, EMA / as trained | "
             "mean intra-FD, EMA / as trained |", "| --- | --- | --- | --- | --- |"]
    for (s, m), p in pairs.items():
        e, raw = p["ema"], p["raw"]
        lines.append(f"| {s} | {m} | {e['class_consistency']:.3f} / {raw['class_consistency']:.3f} | "
                     f"{e['fd']:.2f} / {raw['fd']:.2f} | {e['intra_fd_mean']:.2f} / {raw['intra_fd_mean']:.2f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- timings
def _time_file(path):
    """User + system CPU seconds, wall seconds and peak memory (GiB) from a GNU time -v report."""
    got = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.strip().rpartition(": ")
            got[key] = value
    h_m_s = [float(x) for x in got["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":")]
    wall = sum(v * 60 ** i for i, v in enumerate(reversed(h_m_s)))
    cpu = float(got["User time (seconds)"]) + float(got["System time (seconds)"])
    return cpu, wall, float(got["Maximum resident set size (kbytes)"]) / 2 ** 20


TABLES = {"cbgan-seeds": cbgan_seeds, "cbgan-holds": cbgan_holds,
          "cbgan-readme": cbgan_readme, "glance-holds": glance_holds,
          "main-job-time": main_job_time, "bagan-seeds": bagan_seeds, "bagan-augment": bagan_augment,
          "bagan-readme": bagan_readme, "bagan-holds": bagan_holds, "acgan-trial": acgan_trial,
          "softlabel-seeds": softlabel_seeds,
          "softlabel-readme": softlabel_readme, "softlabel-holds": softlabel_holds,
          "softlabel-ema-trial": softlabel_ema_trial,
          "job-times": job_times}


def render(text):
    """``text`` with every table block re-rendered; raises KeyError naming an unknown table."""
    def one(m):
        name = m.group(2)
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r} (known: {', '.join(TABLES)})")
        return m.group(1) + TABLES[name]() + "\n" + m.group(4)
    return _BLOCK.sub(one, text)


def stale(root=ROOT):
    """(page, table) pairs whose text differs from their files' rendering."""
    out = []
    for page in PAGES:
        with open(os.path.join(root, page)) as f:
            text = f.read()
        for m in _BLOCK.finditer(text):
            if m.group(2) not in TABLES or m.group(3) != TABLES[m.group(2)]() + "\n":
                out.append((page, m.group(2)))
    return out


# ------------------------------------------------------------------------------ numbers outside the tables
# The bars the claims are stated with (issue texts, not measurements).
CLAIM_NUMBERS = {"0.6", "0.2", "1.25", "0.1", "0.10"}
_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")
_NOT_PROSE = re.compile(r"<!-- render [\w-]+ -->.*?<!-- /render -->|```.*?```|`[^`\n]*`|\]\([^)]*\)", re.S)


def _prose(page, text):
    """The text a reader takes numbers from: without tables rendered from files, code and link targets; of the
    README only the main job's and the results' sections (the rest quotes versions and settings)."""
    if page == "README.md":
        text = text[text.index("## Main job"):text.index("## Tests and benchmarks")]
    return _NOT_PROSE.sub(" ", text)


def _numbers_in(value, out):
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        out.add(float(value))
    elif isinstance(value, dict):
        for v in value.values():
            _numbers_in(v, out)
    elif isinstance(value, list):
        for v in value:
            _numbers_in(v, out)


def backed_spellings(root=ROOT, under="docs"):
    """Every way the numbers of the files under ``under`` can be written with 0-4 decimals (and as percentages)."""
    values = set()
    for path in glob.glob(os.path.join(root, under, "**", "*.json*"), recursive=True):
        with open(path) as f:
            lines = f.read().splitlines() if path.endswith(".jsonl") else [f.read()]
        for line in lines:
            if line.strip():
                _numbers_in(json.loads(line), values)
    for path in glob.glob(os.path.join(root, under, "**", "time.txt"), recursive=True):
        with open(path) as f:
            values.update(float(x) for x in re.findall(r"\d+\.\d+|\d+", f.read()))
    return {f"{k * v:.{d}f}" for v in values for k in (1, 100) for d in range(5)} | CLAIM_NUMBERS


def unbacked(root=ROOT):
    """(page, number) for each decimal number in the pages' prose that no committed file holds (a study page's
    own folder's files; for the README, all of docs/)."""
    out = []
    for page in PAGES:
        ok = backed_spellings(root, os.path.dirname(page) or "docs")
        with open(os.path.join(root, page)) as f:
            text = _prose(page, f.read())
        out += [(page, n) for n in _DECIMAL.findall(text) if n not in ok]
    return out


def main(argv):
    if argv == ["--check"]:
        bad = stale()
        for page, name in bad:
            print(f"{page}: table {name!r} differs from its files (python docs/render.py rewrites it)")
        loose = unbacked()
        for page, number in loose:
            print(f"{page}: {number} is in no committed file (render it from one, or drop it)")
        return 1 if bad or loose else 0
    if argv:
        print(__doc__)
        return 2
    for page in PAGES:
        path = os.path.join(ROOT, page)
        with open(path) as f:
            text = f.read()
        new = render(text)
        if new != text:
            with open(path, "w") as f:
                f.write(new)
            print(f"rewrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
