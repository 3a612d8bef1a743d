"""The main job: every main-job method of the registry on long-tailed Fashion-MNIST, end to end, at CPU scale.

Stages (each resumes or is skipped when its output exists, so a killed run continues):
  1. data        long-tailed Fashion-MNIST (ρ = 100, 28 → 32) and the balanced test split, offline;
  2. classifier  ResNet-32 on the long-tailed data: the classifier in CBGAN's loop;
  3. annotator   ResNet-32 on balanced data: labels generated images for the metrics;
  4. methods     each main-job method (same seed, architecture and steps);
  5. report      KL to uniform of the annotator's histogram, FD-annotator, plots and sample grids.

Selection rule, the same for every method: the report evaluates each method's **final** EMA generator
(no checkpoint picked by a metric). ``best.pt`` (lowest FD-annotator against the balanced test split) stays
in each run directory for users who want it; the report does not read it.

``run_seeds`` runs the job for several seeds and writes a table with the mean and spread of each metric.
"""
import json
import math
import os
import statistics
import time

import torch
import torchvision

from .data import get_dataset
from .metrics import inception_available
from .models.classifier import load_classifier
from .train.classifier import train_classifier
from .train.evaluate import Evaluator
from .train.gan import GANTrainer
from .train.methods import get_method, method_names

_CLASSIFIER = dict(loss="drw", epochs=10, width=0.5, depth=32, lr_schedule="cosine", drw_epoch=7, amp="auto")
_ANNOTATOR = dict(loss="ce", epochs=2, width=0.5, depth=32, lr_schedule="cosine", amp="auto")
# The released code's weighting (w = K·(1/N̂)/Σ 1/N̂, bounded by K) with its convex-combination update:
# with the paper's w = 1/N_k a class the generator stops producing gets w ~ 1e4 within a few short cycles
# and the regularizer swamps the GAN loss. Short runs need a short cycle (50 steps). From the first step
# the regularizer made this small generator paint classifier-pleasing stripes before it had learnt any
# garment (λ = 20: annotator confidence 0.53-0.61); starting it at step 500, once shapes exist, with
# λ = 5 gave seed 0 KL 0.16 against the baseline's 0.80 at confidence 0.61 (λ = 2.5: 0.25 / 0.64;
# λ = 5 from step 1000: 0.39 / 0.64). The baseline's KL grows with training (it learns the imbalance).
_GAN = dict(arch="sndcgan", width=0.25, steps=2000, batch_size=64, cycle=50, eval_every=250, ema_start=1000,
            ema_decay=0.999, eval_samples=2000, weighting="official", lam=5.0, cb_start=500)

_CB_SETTINGS = ("lam", "weighting", "cycle", "cb_start")  # only for methods with the CB regularizer
# BAGAN section: Fashion-MNIST with T-shirt/top (class 0) kept at 150 of 6000 images, BAGAN's networks at
# width 0.25 (the released widths take ~18 s a step here), the same steps for the three methods.
_BAGAN = dict(minority_class=0, drop_fraction=0.975, ae_steps=200, eval_samples=2000,
              gan=dict(width=0.25, batch_size=64, steps=400, ckpt_every=100, log_every=50, sample_every=400),
              augment=dict(epochs=3, width=0.25, depth=32, batch_size=128, lr_schedule="cosine"))
BAGAN_METHODS = ("bagan", "acgan", "minority-gan")

PRESETS = {
    "default": dict(about="the recorded main job (docs/main-job, docs/bagan): the cbgan section about 40 minutes on 2 "
                          "CPU cores; the bagan section took 103 minutes a seed at one thread, two seeds side by side", dataset="fashion-mnist", imbalance=100.0,
                    image_size=32, classifier=_CLASSIFIER, annotator=_ANNOTATOR, gan=_GAN, final_samples=5000),
    "quick": dict(about="a first look: the cbgan section about 12 minutes on 2 CPU cores, the bagan section (half the "
                        "steps, 1 classifier epoch) untimed", dataset="fashion-mnist",
                  imbalance=100.0, image_size=32, classifier=dict(_CLASSIFIER, epochs=4, drw_epoch=3),
                  annotator=dict(_ANNOTATOR, epochs=1),
                  gan=dict(_GAN, steps=500, eval_every=250, ema_start=250, cb_start=250), final_samples=2000,
                  bagan=dict(_BAGAN, ae_steps=100, eval_samples=1000, gan=dict(_BAGAN["gan"], steps=200),
                             augment=dict(_BAGAN["augment"], epochs=1))),
    "tiny": dict(about="a smoke test of every stage in about a minute (scikit-learn's digits, tiny networks)",
                 dataset="digits", imbalance=10.0, image_size=32,
                 classifier=dict(_CLASSIFIER, epochs=2, depth=8, drw_epoch=1.5, amp="none"),
                 annotator=dict(_ANNOTATOR, epochs=2, depth=8, amp="none"),
                 gan=dict(_GAN, width=0.125, steps=12, eval_every=6, ema_start=6, eval_samples=100, cycle=4,
                          cb_start=4),
                 final_samples=200,
                 bagan=dict(_BAGAN, ae_steps=3, eval_samples=60,
                            gan=dict(width=0.0625, batch_size=16, steps=3, ckpt_every=2, log_every=1,
                                     sample_every=0),
                            augment=dict(epochs=0.5, width=0.25, depth=8, batch_size=64, lr_schedule="cosine"))),
}
SECTIONS = ("cbgan", "bagan")
BALANCED_ACCURACY_NEEDED = 0.75  # below this the classifier in the loop cannot balance CBGAN (measured)


def main_job_methods():
    return tuple(n for n in method_names() if get_method(n).in_main_job)


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _classifier(path, *, dataset, imbalance, image_size, settings, seed, threads):
    done = os.path.exists(path) and torch.load(path, map_location="cpu", weights_only=False).get("finished", False)
    if not done:
        train_classifier(path, resume=os.path.exists(path), progress=True, threads=threads, dataset=dataset,
                         imbalance_ratio=imbalance, image_size=image_size, seed=seed, **settings)
    return load_classifier(path)


def resolve_config(preset="default", *, steps=None, classifier_epochs=None, annotator_epochs=None, gan_width=None,
                   final_samples=None, weighting=None, lam=None, methods=None, sections=None):
    if preset not in PRESETS:
        raise ValueError(f"demo: preset must be one of {tuple(PRESETS)}, got {preset!r}")
    cfg = json.loads(json.dumps(PRESETS[preset]))
    cfg["preset"] = preset
    g = cfg["gan"]
    if steps:
        g["steps"] = int(steps)
        g["eval_every"] = max(1, int(steps) // 4)
        g["ema_start"] = int(steps) // 2
    if classifier_epochs:
        cfg["classifier"]["epochs"] = float(classifier_epochs)
        cfg["classifier"]["drw_epoch"] = 0.7 * float(classifier_epochs)
    if annotator_epochs:
        cfg["annotator"]["epochs"] = float(annotator_epochs)
    if gan_width:
        g["width"] = float(gan_width)
    if final_samples:
        cfg["final_samples"] = int(final_samples)
    if weighting:
        g["weighting"] = weighting
    if lam is not None:
        g["lam"] = float(lam)
    cfg["methods"] = list(methods or main_job_methods())
    cfg["sections"] = list(sections or SECTIONS)
    bad = [x for x in cfg["sections"] if x not in SECTIONS]
    if bad:
        raise ValueError(f"demo: sections must be of {SECTIONS}, got {bad}")
    cfg.setdefault("bagan", json.loads(json.dumps(_BAGAN)))
    return cfg


def run(out="runs/demo", *, preset="default", seed=0, threads=None, progress=True, **overrides):
    cfg = resolve_config(preset, **overrides)
    if threads:
        torch.set_num_threads(int(threads))
    os.makedirs(out, exist_ok=True)
    t0 = time.time()

    _log(f"1/5 data: {cfg['dataset']} ρ={cfg['imbalance']:g} at {cfg['image_size']}px (preset {preset}, seed {seed})")
    train = get_dataset(cfg["dataset"], "train", image_size=cfg["image_size"], imbalance_ratio=cfg["imbalance"],
                        seed=seed)
    _log(f"    long-tailed train counts {list(train.class_counts)}")

    _log("2/5 classifier in the loop (long-tailed data)")
    clf = _classifier(os.path.join(out, "classifier.pt"), dataset=cfg["dataset"], imbalance=cfg["imbalance"],
                      image_size=cfg["image_size"], settings=cfg["classifier"], seed=seed, threads=threads)
    _log("3/5 annotator (balanced data)")
    ann = _classifier(os.path.join(out, "annotator.pt"), dataset=cfg["dataset"], imbalance=1.0,
                      image_size=cfg["image_size"], settings=cfg["annotator"], seed=seed + 1, threads=threads)
    acc = {name: {k: m.checkpoint_info.get(k) for k in ("accuracy", "balanced_accuracy", "per_class_accuracy")}
           for name, m in (("classifier", clf), ("annotator", ann))}
    _log(f"    classifier balanced accuracy {acc['classifier']['balanced_accuracy']:.3f}, "
         f"annotator {acc['annotator']['balanced_accuracy']:.3f}")
    if (acc["classifier"]["balanced_accuracy"] or 0) < BALANCED_ACCURACY_NEEDED:
        _log(f"    warning: the classifier in the loop is below {BALANCED_ACCURACY_NEEDED:.0%} balanced accuracy; "
             "CBGAN balances only as well as it classifies")

    g = cfg["gan"]
    evaluator = Evaluator.for_dataset_config(ann, train.config, train.num_classes, n=g["eval_samples"])
    results = {}
    for i, method in enumerate(cfg["methods"] if "cbgan" in cfg["sections"] else ()):
        _log(f"4/5 {method} ({i + 1}/{len(cfg['methods'])})")
        needs_clf = get_method(method).cb_regularizer
        trainer = GANTrainer(train, os.path.join(out, method), method=method, classifier=clf if needs_clf else None,
                             annotator=ann, seed=seed, progress=progress, sample_every=g["eval_every"],
                             ckpt_every=max(1, g["eval_every"] // 2), fid="annotator",
                             **{k: v for k, v in g.items() if k not in _CB_SETTINGS or needs_clf})
        trainer.evaluator = evaluator
        trainer.config.update(annotator=os.path.join(out, "annotator.pt"),
                              classifier=os.path.join(out, "classifier.pt") if needs_clf else None)
        best = trainer.run()
        # the selection rule: the final EMA generator, for every method
        res = evaluator(trainer.ema.model, z_dim=trainer.z_dim, conditional=trainer.method.conditional,
                        n=cfg["final_samples"], seed=2024)
        res.update(step=trainer.step, best_fd_step=None if best is None else best["step"])
        results[method] = res
        fakes = trainer.generate(100, generator=torch.Generator().manual_seed(2024))
        torchvision.utils.save_image(fakes, os.path.join(out, f"samples_{method}.png"), nrow=10, normalize=True,
                                     value_range=(-1, 1))
        _log(f"    {method}: KL {res['kl']:.4f}, FD-annotator {res['fd']:.2f}, histogram {res['histogram']}")

    bagan = None
    if "bagan" in cfg["sections"]:
        bagan = bagan_section(out, cfg, seed, progress)
    _log("5/5 report")
    report = write_report(out, cfg, train, results, acc, time.time() - t0, seed, bagan)
    _log(f"wrote {report}")
    return results


def bagan_section(out, cfg, seed, progress=True):
    """BAGAN vs ACGAN vs the minority-only GAN on the data with the minority class dropped (same seed, networks
    and steps; final EMA generators): the generated images' per-class accuracy (the annotator of stage 3),
    SSIM variability, and the augmented-classifier test (``augment_eval``), in ``out/bagan``."""
    from .train.augment_eval import augment_eval
    from .train.gan import evaluate_run
    b = cfg["bagan"]
    ann_path = os.path.join(out, "annotator.pt")
    data = get_dataset(cfg["dataset"], "train", image_size=cfg["image_size"], profile="bagan", seed=seed,
                       minority_class=b["minority_class"], drop_fraction=b["drop_fraction"])
    _log(f"4b/5 BAGAN section: minority class {b['minority_class']} kept at {data.class_counts[b['minority_class']]} "
         f"of {max(data.class_counts)} images")
    evals, dirs = {}, []
    for method in BAGAN_METHODS:
        d = os.path.join(out, "bagan", method)
        dirs.append(d)
        trainer = GANTrainer(data, d, method=method, seed=seed, progress=progress, ae_steps=b["ae_steps"], **b["gan"])
        trainer.config.update(annotator=ann_path)
        trainer.run()
        path = os.path.join(d, "eval.json")
        if os.path.exists(path):
            with open(path) as f:
                evals[method] = json.load(f)
        else:
            evals[method] = evaluate_run(d, "last", annotator=ann_path, n=b["eval_samples"], fid="annotator")
            with open(path + ".tmp", "w") as f:
                json.dump(evals[method], f)
            os.replace(path + ".tmp", path)
        fakes = trainer.generate(100, generator=torch.Generator().manual_seed(2024))
        torchvision.utils.save_image(fakes, os.path.join(out, "bagan", f"samples_{method}.png"), nrow=10,
                                     normalize=True, value_range=(-1, 1))
        _log(f"    {method}: minority accuracy {evals[method].get('minority_accuracy')}")
    aug = augment_eval(os.path.join(out, "bagan", "augment"), dirs, checkpoint="last", seed=seed, progress=progress,
                       **b["augment"])
    return {"eval": evals, "augment": aug, "class_counts": list(data.class_counts)}


def _bagan_lines(bagan):
    m = bagan["augment"]["minority_classes"]
    lines = ["", f"## BAGAN section (minority class {', '.join(map(str, m))}; training counts {bagan['class_counts']})",
             "", "Generated images (final EMA generators): how often the annotator names the class asked for, and "
             "SSIM of random pairs within a class (lower is more varied; real pairs are the paper's reference).", "",
             "| method | minority accuracy | mean class accuracy | SSIM fake pairs (minority) | SSIM real pairs "
             "(minority) | SSIM fake to nearest real (minority) | SSIM real to nearest real (minority) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    k = m[0]
    for method, r in bagan["eval"].items():
        acc = r.get("class_accuracy") or []
        known = [a for a in acc if a is not None]
        ss = r.get("ssim", {})

        def at(key):
            v = (ss.get(key) or [None] * (k + 1))[k]
            return "n/a" if v is None else f"{v:.3f}"
        lines.append(f"| {method} | {acc[k]:.3f} | {sum(known) / max(len(known), 1):.3f} | {at('fake_pairs')} | "
                     f"{at('real_pairs')} | {at('fake_to_nearest_real')} | {at('real_to_nearest_real')} |")
    lines += ["", "Classifier trained on the training set rebalanced with each source of minority images "
              "(random crops, no flips):", "", "| rows | added images | minority-class test accuracy | "
              "balanced test accuracy |", "| --- | --- | --- | --- |"]
    for name, row in bagan["augment"]["rows"].items():
        acc = row["minority_accuracy"] or [math.nan]
        lines.append(f"| {name} | {row['added']} | {acc[0]:.3f} | {(row['balanced_accuracy'] or math.nan):.3f} |")
    lines += ["", "Samples: " + ", ".join(f"[{x}](bagan/samples_{x}.png)" for x in bagan["eval"])]
    return lines


def _ratios(results):
    """KL and FD of each method relative to the baseline ("gan"): KL ratio = baseline / method (higher is
    more balancing), FD ratio = method / baseline (1.25 = 25% worse)."""
    base = results.get("gan")
    if base is None:
        return {}
    return {m: {"kl_ratio": base["kl"] / max(r["kl"], 1e-12), "fd_ratio": r["fd"] / base["fd"]}
            for m, r in results.items() if m != "gan"}


def write_report(out, cfg, train, results, accuracies, seconds, seed, bagan=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(getattr(train, "classes", range(train.num_classes)))
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(4 * (len(results) + 1), 3.2), sharey=False, squeeze=False)
    axes = axes[0]
    counts = torch.tensor(list(train.class_counts), dtype=torch.float64)
    axes[0].bar(range(len(classes)), (counts / counts.sum()).tolist(), color="gray")
    axes[0].set_title(f"training data (ρ={cfg['imbalance']:g})")
    for j, (ax, (method, res)) in enumerate(zip(axes[1:], results.items())):
        h = torch.tensor(res["histogram"], dtype=torch.float64)
        ax.bar(range(len(classes)), (h / h.sum()).tolist(), color=f"C{j}")
        ax.axhline(1 / len(classes), color="k", ls="--", lw=0.8)
        ax.set_title(f"{method}: KL {res['kl']:.3f}")
    for ax in axes:
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels([str(c)[:7] for c in classes], rotation=70, fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "histograms.png"), dpi=110)
    plt.close(fig)

    g = cfg["gan"]
    fid_note = ("clean-fid's Inception weights were found: FID is available with `cbgan-ext eval`"
                if inception_available() else
                "clean-fid's Inception weights are not available offline, so the Fréchet distance is computed "
                "on the annotator's penultimate features (FD-annotator), against the balanced test split. It is "
                "not comparable with published FIDs.")
    ratios = _ratios(results)
    lines = [f"# cbgan_ext main job on long-tailed {cfg['dataset']} (preset {cfg['preset']}, seed {seed})", "",
             f"ρ = {cfg['imbalance']:g}, training counts {list(train.class_counts)}; {g['arch']} width {g['width']}, "
             f"{g['steps']} steps, batch {g['batch_size']}, CB: {g['weighting']} weighting, λ = {g['lam']} from step "
             f"{g.get('cb_start', 0)}, cycle {g['cycle']} steps; {cfg['final_samples']} samples per method from the final EMA generator (the same "
             f"rule for every method); {seconds / 60:.1f} min in this invocation (finished stages resume).", "",
             "| method | KL(hist ‖ uniform) ↓ | FD-annotator ↓ | KL ratio (baseline / method) | FD ratio "
             "(method / baseline) | annotator confidence |", "| --- | --- | --- | --- | --- | --- |"]
    for method, res in results.items():
        r = ratios.get(method)
        kl_ratio = "" if r is None else "%.2f×" % r["kl_ratio"]
        fd_ratio = "" if r is None else "%.2f" % r["fd_ratio"]
        lines.append(f"| {method} | {res['kl']:.4f} | {res['fd']:.2f} | {kl_ratio} | {fd_ratio} | "
                     f"{res['confidence']:.3f} |")
    real_conf = next(iter(results.values()))["real_confidence"] if results else math.nan
    lines += ["", f"Annotator confidence: its mean top-class probability on the samples ({real_conf:.3f} on the test "
              "split). Samples made to satisfy the classifier in the loop rather than to look real can balance and "
              "reach a good FD-annotator while being unrecognisable; look at the grids below."]
    lines += ["", fid_note, "", "## Classifiers", "",
              "| network | data | accuracy | balanced accuracy |", "| --- | --- | --- | --- |"]
    for name, data in (("classifier", f"long-tailed ρ={cfg['imbalance']:g}"), ("annotator", "balanced")):
        a = accuracies.get(name) or {}
        lines.append(f"| {name} | {data} | {(a.get('accuracy') or math.nan) * 100:.1f}% | "
                     f"{(a.get('balanced_accuracy') or math.nan) * 100:.1f}% |")
    lines += ["", "## Generated class histograms (annotator labels)", "", "![histograms](histograms.png)", "",
              "| class | " + " | ".join(results) + " |", "| --- |" + " --- |" * len(results)]
    for k, c in enumerate(classes):
        lines.append(f"| {c} | " + " | ".join(str(res["histogram"][k]) for res in results.values()) + " |")
    lines += ["", "## Samples", ""] + [f"**{m}**\n\n![{m}](samples_{m}.png)\n" for m in results]
    if bagan is not None:
        lines += _bagan_lines(bagan)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"config": cfg, "seed": seed, "results": results, "ratios": ratios, "classifiers": accuracies,
                   "bagan": bagan, "minutes": seconds / 60}, f, indent=1, default=str)
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _spread(values):
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, sd, min(values), max(values)


def run_seeds(out, seeds, **kw):
    """The main job once per seed (``out/seed<s>``), then ``out/summary.md``: every metric per seed, with mean,
    standard deviation and range."""
    per_seed = {}
    for s in seeds:
        run(os.path.join(out, f"seed{s}"), seed=s, **kw)
        with open(os.path.join(out, f"seed{s}", "results.json")) as f:
            per_seed[s] = json.load(f)
    return write_summary(out, per_seed)


def write_summary(out, per_seed):
    seeds = list(per_seed)
    first = per_seed[seeds[0]]
    methods = list(first["results"])
    rows = []
    for m in methods:
        for key, label in (("kl", "KL ↓"), ("fd", "FD-annotator ↓"), ("confidence", "annotator confidence")):
            rows.append((f"{m} {label}", [per_seed[s]["results"][m][key] for s in seeds]))
        if m in first["ratios"]:
            rows.append((f"{m} KL ratio (gan / {m})", [per_seed[s]["ratios"][m]["kl_ratio"] for s in seeds]))
            rows.append((f"{m} FD ratio ({m} / gan)", [per_seed[s]["ratios"][m]["fd_ratio"] for s in seeds]))
    if all(per_seed[s].get("bagan") for s in seeds):
        for m in first["bagan"]["eval"]:
            rows.append((f"BAGAN section: {m} generated minority accuracy",
                         [per_seed[s]["bagan"]["eval"][m]["minority_accuracy"][0] for s in seeds]))
        for row in first["bagan"]["augment"]["rows"]:
            rows.append((f"BAGAN section: classifier minority accuracy, {row}",
                         [per_seed[s]["bagan"]["augment"]["rows"][row]["minority_accuracy"][0] for s in seeds]))
    for name in ("classifier", "annotator"):
        rows.append((f"{name} balanced accuracy", [per_seed[s]["classifiers"][name]["balanced_accuracy"]
                                                   for s in seeds]))
    lines = [f"# Main job over seeds {', '.join(map(str, seeds))} (preset {first['config']['preset']})", "",
             "| quantity | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd | min – max |",
             "| --- |" + " --- |" * (len(seeds) + 3)]
    for label, vals in rows:
        mean, sd, lo, hi = _spread(vals)
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {mean:.3f} | {sd:.3f} | "
                     f"{lo:.3f} – {hi:.3f} |")
    path = os.path.join(out, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"seeds": seeds, "rows": {label: vals for label, vals in rows}}, f, indent=1)
    return path
