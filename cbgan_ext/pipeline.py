"""The main job: every main-job method of the registry on long-tailed Fashion-MNIST, end to end, at CPU scale.

Stages (each resumes or is skipped when its output exists, so a killed run continues):
  1. data        long-tailed Fashion-MNIST (ρ = 100, 28 → 32) and the balanced test split, offline;
  2. classifier  ResNet-32 on the long-tailed data: the classifier in CBGAN's loop;
  3. annotator   ResNet-32 on balanced data: labels generated images for the metrics;
  4. methods     each main-job method (same seed, architecture and steps);
  5. report      KL to uniform of the annotator's histogram, FD-annotator, plots and sample grids.

Selection rule, the same for every method: the report evaluates each method's **final** EMA generator
(no checkpoint picked by a metric), and nothing is evaluated during training (``eval_every`` 0: a user who
wants ``best.pt``, the lowest FD-annotator checkpoint, trains with ``cbgan-ext train --eval-every N``).

``run_seeds`` runs the job for several seeds and writes a table with the mean and spread of each metric.
"""
import json
import math
import os
import platform
import statistics
import time

import torch
import torchvision

from .data import get_dataset
from .metrics import inception_available
from .models.classifier import load_classifier
from .train import checkpoint as ckpt
from .train.classifier import file_digest, train_classifier
from .train.evaluate import Evaluator
from .train.gan import GANTrainer
from .train.methods import get_method, method_names

# eval_every 0: the test split once, at the end (a test pass each epoch costs about as much as an epoch)
_CLASSIFIER = dict(loss="drw", epochs=10, width=0.5, depth=32, lr_schedule="cosine", drw_epoch=7, amp="auto",
                   eval_every=0)
_ANNOTATOR = dict(loss="ce", epochs=2, width=0.5, depth=32, lr_schedule="cosine", amp="auto", eval_every=0)
# The released code's weighting (bounded by K; the paper's w = 1/N_k explodes for a class the generator stops
# drawing), a short cycle for a short run, and the term from step 500, once G draws shapes (from the first step
# it paints classifier-pleasing stripes before any garment); docs/main-job/README.md says what was tried.
# No evaluation during training: the report reads only the final one.
_GAN = dict(arch="sndcgan", width=0.25, steps=2000, batch_size=64, cycle=50, eval_every=0, sample_every=0,
            ckpt_every=125, ema_start=1000, ema_decay=0.999, eval_samples=2000, weighting="official", lam=5.0,
            cb_start=500)

_CB_SETTINGS = ("lam", "weighting", "cycle", "cb_start")  # only for methods with the CB regularizer
# The BAGAN and Softlabel sections' schedules are chosen for their length here, not the released codes' (which
# spend their learning rates over tens of thousands of steps): docs/bagan/README.md and docs/softlabel/README.md
# say where and why they differ.
# BAGAN section: Fashion-MNIST with T-shirt/top (class 0) kept at 150 of 6000 images, BAGAN's networks at width
# 0.25, the same schedule for BAGAN and ACGAN: batch 128, D's real batches class-balanced, Adam 2e-4 (β1 0.5),
# DiffAugment (translation, cutout) on D's inputs, an EMA of G (0.99 from step 300); BAGAN's autoencoder has its
# own Adam (1e-3, β 0.9 / 0.999); ACGAN's G takes its class as a one-hot beside z.
BAGAN_METHODS = ("bagan", "acgan", "minority-gan")  # the section's methods (the preset picks among them)
# methods: the GANs trained; augment_rows and augment_methods: the augmented classifiers (the real-image rows, then
# one row per method whose generated images rebalance the training set)
_BAGAN = dict(methods=("bagan", "acgan"), augment_rows=("plain", "oversample", "mirror"),
              augment_methods=("bagan",), minority_class=0, drop_fraction=0.975, eval_samples=2000,
              gan=dict(width=0.25, batch_size=128, steps=1000, lr=2e-4, real_sampling="data", class_sampling="data",
                       policy="translation,cutout", ema_start=300, ema_decay=0.99, ae_steps=250, ae_lr=1e-3,
                       ae_beta1=0.9, acgan_g="concat", ckpt_every=100, log_every=50, sample_every=0),
              augment=dict(epochs=1, width=0.25, depth=32, batch_size=128, lr_schedule="cosine"))
# Softlabel section: Softlabel-GAN's offline setting (Fashion-MNIST, lognormal profile, 3208 images, 65-1720 a
# class), BigGAN-32 at width 0.125 (ch 8), the same schedule for both methods, D's reals class-balanced (see
# docs/softlabel/README.md). The soft labels come from a ResNet-32 trained with CE - 0.3 H.
SOFTLABEL_METHODS = ("softlabel-gan", "diffaug-gan", "smooth-gan")
_SOFTLABEL = dict(methods=("softlabel-gan", "diffaug-gan"), profile="lognormal", eval_samples=2000,
                  lpips_images=100,
                  classifier=dict(loss="softlabel-ce", epochs=30, width=0.5, depth=32, lr_schedule="cosine",
                                  amp="auto", eval_every=0),
                  gan=dict(width=0.125, batch_size=64, n_dis=2, steps=1500, ema_start=10 ** 9,
                           real_sampling="balanced", eval_every=0, sample_every=0, ckpt_every=100,
                           log_every=50))

PRESETS = {
    "default": dict(about="the main job: the cbgan section, BAGAN vs ACGAN, Softlabel-GAN vs DiffAug-GAN",
                    dataset="fashion-mnist", imbalance=100.0,
                    image_size=32, classifier=_CLASSIFIER, annotator=_ANNOTATOR, gan=_GAN, final_samples=5000,
                    bagan=_BAGAN, softlabel=_SOFTLABEL),
    "quick": dict(about="a first look at every stage, shorter everywhere (its numbers are not results)",
                  dataset="fashion-mnist", imbalance=100.0, image_size=32,
                  classifier=dict(_CLASSIFIER, epochs=4, drw_epoch=3), annotator=dict(_ANNOTATOR, epochs=1),
                  gan=dict(_GAN, steps=500, ema_start=250, cb_start=250), final_samples=2000,
                  bagan=dict(_BAGAN, augment_rows=("plain", "oversample"), eval_samples=1000,
                             gan=dict(_BAGAN["gan"], steps=200, ae_steps=100, ema_start=100)),
                  softlabel=dict(_SOFTLABEL, eval_samples=1000, classifier=dict(_SOFTLABEL["classifier"], epochs=5),
                                 gan=dict(_SOFTLABEL["gan"], steps=300))),
    "tiny": dict(about="a smoke test of every stage (scikit-learn's digits, tiny networks)",
                 dataset="digits", imbalance=10.0, image_size=32,
                 classifier=dict(_CLASSIFIER, epochs=2, depth=8, drw_epoch=1.5, amp="none"),
                 annotator=dict(_ANNOTATOR, epochs=2, depth=8, amp="none"),
                 gan=dict(_GAN, width=0.125, steps=12, ckpt_every=3, ema_start=6, eval_samples=100, cycle=4,
                          cb_start=4),
                 final_samples=200,
                 bagan=dict(_BAGAN, methods=BAGAN_METHODS, augment_methods=BAGAN_METHODS, eval_samples=60,
                            gan=dict(_BAGAN["gan"], width=0.0625, batch_size=16, steps=3, ae_steps=3, ema_start=1,
                                     ckpt_every=2, log_every=1),
                            augment=dict(epochs=0.5, width=0.25, depth=8, batch_size=64, lr_schedule="cosine")),
                 softlabel=dict(methods=SOFTLABEL_METHODS, profile="exp", eval_samples=100, lpips_images=4,
                                classifier=dict(_SOFTLABEL["classifier"], epochs=1, depth=8, amp="none"),
                                gan=dict(width=0.0625, batch_size=16, n_dis=1, steps=3, ema_start=1, ema_decay=0.9,
                                         eval_every=0, sample_every=0, ckpt_every=2, log_every=1))),
}
SECTIONS = ("cbgan", "bagan", "softlabel")
BALANCED_ACCURACY_NEEDED = 0.75  # below this the classifier in the loop cannot balance CBGAN (measured)


def main_job_methods():
    return tuple(n for n in method_names() if get_method(n).in_main_job)


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _classifier(path, *, dataset, imbalance, image_size, settings, seed, threads, progress=True, device="cpu"):
    state = ckpt.load(path, what="classifier") if os.path.exists(path) else None
    if state is not None and state.get("finished", False):
        _check_finished_classifier(path, state, dict(dataset=dataset, imbalance_ratio=imbalance,
                                                     image_size=image_size, seed=seed, **settings))
    else:
        train_classifier(path, resume=os.path.exists(path), progress=progress, threads=threads, device=device,
                         dataset=dataset,
                         imbalance_ratio=imbalance, image_size=image_size, seed=seed, **settings)
    return load_classifier(path)


def _check_finished_classifier(path, state, settings):
    """A finished classifier of other settings is refused, naming the keys (a key its checkpoint predates counts
    as its default), as a resume of an unfinished one is."""
    from .train.classifier import RESUME_KEYS, default_config
    from .train.loop import ConfigMismatchError
    want, have = default_config(**settings), state.get("train_config") or {}
    diff = [k for k in (*RESUME_KEYS, "epochs", "drw_epoch") if have.get(k, want[k]) != want[k]]
    if diff:
        what = ", ".join(f"{k}: {have.get(k)!r} there, {want[k]!r} now" for k in diff)
        raise ConfigMismatchError(f"{path} holds a finished classifier of other settings ({what}); use another --out")


def resolve_config(preset="default", *, steps=None, classifier_epochs=None, annotator_epochs=None, gan_width=None,
                   final_samples=None, weighting=None, lam=None, methods=None, sections=None):
    if preset not in PRESETS:
        raise ValueError(f"demo: preset must be one of {tuple(PRESETS)}, got {preset!r}")
    cfg = json.loads(json.dumps(PRESETS[preset]))
    cfg["preset"] = preset
    g = cfg["gan"]
    if steps:
        g["steps"] = int(steps)
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
    cfg.setdefault("softlabel", json.loads(json.dumps(_SOFTLABEL)))
    return cfg


def run(out="runs/demo", *, preset="default", seed=0, threads=None, jobs=1, progress=True, device="cpu",
        **overrides):
    """The main job in ``out`` (resumed when it exists). ``jobs`` > 1 trains the job's independent stages in that
    many worker processes first (each with ``threads // jobs`` threads; ``jobs`` is capped at ``threads``; their
    output in ``out/logs``), then the report pass finds them done. The workers are spawned, so they import the calling
    script: call it under ``if __name__ == "__main__":``. ``device``: where every training and evaluation runs
    (resume a job on the device it started on: its runs' random streams live there)."""
    resolve_config(preset, **overrides)  # settings checked before the folder is made
    if int(jobs) < 1:
        raise ValueError(f"demo: jobs must be >= 1, got {jobs!r}")
    device = torch.device(device)
    device = "cpu" if device.type == "cpu" else str(device)  # torch cannot load what it saves from "cpu:0"
    out = os.path.abspath(out)  # the runs' configs name their annotator and classifier from anywhere
    os.makedirs(out, exist_ok=True)
    lock = ckpt.RunLock(ckpt.lock_path(os.path.join(out, "job")), f"main-job directory {out}").acquire()
    try:
        return _run(out, preset=preset, seed=seed, threads=threads, jobs=int(jobs), progress=progress, device=device,
                    **overrides)
    finally:
        lock.release()


def default_jobs():
    """Worker processes for ``demo`` when not given: two where two CPU cores are available (two one-thread trainings
    side by side do more work than one two-thread training), else one."""
    return 2 if available_cores() >= 2 else 1


def available_cores():
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run(out, *, preset, seed, threads, jobs, progress, device="cpu", **overrides):
    cfg = resolve_config(preset, **overrides)
    cfg["device"] = device  # read by every stage, in this process and the workers
    if threads:
        torch.set_num_threads(int(threads))
    os.makedirs(out, exist_ok=True)
    t0 = time.time()

    _log(f"1/5 data: {cfg['dataset']} at {cfg['image_size']}px (preset {preset}, seed {seed}, sections "
         f"{', '.join(cfg['sections'])})")
    jobs = min(jobs, int(threads)) if threads else jobs  # --threads is the whole job's
    if jobs > 1:
        run_stages(_stages(out, cfg, seed), jobs=jobs, threads=max(1, torch.get_num_threads() // jobs),
                   log_dir=os.path.join(out, "logs"))
    train = _cbgan_data(cfg, seed)
    cbgan = "cbgan" in cfg["sections"]
    clf = None
    if cbgan:
        _log(f"    long-tailed (ρ={cfg['imbalance']:g}) train counts {list(train.class_counts)}")
        _log("2/5 classifier in the loop (long-tailed data)")
        clf = _loop_classifier(out, cfg, seed, threads)
    _log("3/5 annotator (balanced data)")
    ann = _annotator(out, cfg, seed, threads)
    acc = {name: {k: m.checkpoint_info.get(k) for k in ("accuracy", "balanced_accuracy", "per_class_accuracy")}
           for name, m in (("classifier", clf), ("annotator", ann)) if m is not None}
    _log("    " + ", ".join(f"{k} balanced accuracy {v['balanced_accuracy']:.3f}" for k, v in acc.items()))
    if clf is not None and (acc["classifier"]["balanced_accuracy"] or 0) < BALANCED_ACCURACY_NEEDED:
        _log(f"    warning: the classifier in the loop is below {BALANCED_ACCURACY_NEEDED:.0%} balanced accuracy; "
             "CBGAN balances only as well as it classifies")

    evaluator = None
    if cbgan:
        evaluator = Evaluator.for_dataset_config(ann, train.config, train.num_classes, n=cfg["gan"]["eval_samples"],
                                                 device=_device(cfg))
    results = {}
    for i, method in enumerate(cfg["methods"] if cbgan else ()):
        _log(f"4/5 {method} ({i + 1}/{len(cfg['methods'])})")
        results[method] = res = cbgan_method(out, cfg, seed, method, progress, train=train, clf=clf, ann=ann,
                                             evaluator=evaluator)
        _log(f"    {method}: KL {res['kl']:.4f}, FD-annotator {res['fd']:.2f}, histogram {res['histogram']}")

    bagan = softlabel = None
    if "bagan" in cfg["sections"]:
        bagan = bagan_section(out, cfg, seed, progress)
    if "softlabel" in cfg["sections"]:
        softlabel = softlabel_section(out, cfg, seed, threads, progress)
    _log("5/5 report")
    report = write_report(out, cfg, train, results, acc, time.time() - t0, seed, bagan, softlabel)
    _log(f"wrote {report}")
    return results


# ---- the job's units: each trains what is missing (resuming), evaluates what is not cached, and returns its
# result; the serial pass and the worker processes call the same functions.

def _device(cfg):
    return cfg.get("device", "cpu")


def _cbgan_data(cfg, seed):
    return get_dataset(cfg["dataset"], "train", image_size=cfg["image_size"], imbalance_ratio=cfg["imbalance"],
                       seed=seed)


def _loop_classifier(out, cfg, seed, threads=None, progress=True):
    return _classifier(os.path.join(out, "classifier.pt"), dataset=cfg["dataset"], imbalance=cfg["imbalance"],
                       image_size=cfg["image_size"], settings=cfg["classifier"], seed=seed, threads=threads,
                       progress=progress, device=_device(cfg))


def _annotator(out, cfg, seed, threads=None, progress=True):
    return _classifier(os.path.join(out, "annotator.pt"), dataset=cfg["dataset"], imbalance=1.0,
                       image_size=cfg["image_size"], settings=cfg["annotator"], seed=seed + 1, threads=threads,
                       progress=progress, device=_device(cfg))


def cbgan_method(out, cfg, seed, method, progress=True, *, train=None, clf=None, ann=None, evaluator=None):
    """One method of the cbgan section: trained (the classifier in the loop for methods with the CB regularizer),
    its final EMA generator evaluated on ``final_samples`` images (cached in its run directory), its grid saved."""
    g = cfg["gan"]
    train = train if train is not None else _cbgan_data(cfg, seed)
    needs_clf = get_method(method).cb_regularizer
    if needs_clf and clf is None:
        clf = load_classifier(os.path.join(out, "classifier.pt"))
    ann = ann if ann is not None else load_classifier(os.path.join(out, "annotator.pt"))
    if evaluator is None:
        evaluator = Evaluator.for_dataset_config(ann, train.config, train.num_classes, n=g["eval_samples"],
                                                 device=_device(cfg))
    trainer = GANTrainer(train, os.path.join(out, method), method=method, classifier=clf if needs_clf else None,
                         annotator=ann, seed=seed, progress=progress, fid="annotator", device=_device(cfg),
                         **{k: v for k, v in g.items() if k not in _CB_SETTINGS or needs_clf})
    trainer.evaluator = evaluator
    trainer.config.update(annotator=os.path.join(out, "annotator.pt"),
                          classifier=os.path.join(out, "classifier.pt") if needs_clf else None)
    trainer.run()
    ann_path = os.path.join(out, "annotator.pt")

    def final():  # the selection rule: the final EMA generator, for every method
        res = evaluator(trainer.ema.model, z_dim=trainer.z_dim, conditional=trainer.method.conditional,
                        n=cfg["final_samples"], seed=2024)
        return dict(res, step=trainer.step)
    key = dict(step=trainer.step, annotator_sha256=file_digest(ann_path), n=cfg["final_samples"], seed=2024,
               evaluator_n=g["eval_samples"])
    res = _cached_eval(os.path.join(out, method, "final_eval.json"), key, final)
    res.pop("eval_key", None)
    _sample_grid(trainer, os.path.join(out, f"samples_{method}.png"))
    return res


def bagan_section(out, cfg, seed, progress=True):
    """BAGAN vs ACGAN vs the minority-only GAN on the data with the minority class dropped (same seed, networks
    and steps; final generators): the generated images' per-class accuracy (the annotator of stage 3), SSIM
    variability, and the augmented-classifier test (``augment_eval``), in ``out/bagan``."""
    b = cfg["bagan"]
    data = _bagan_data(cfg, seed)
    _log(f"4b/5 BAGAN section: minority class {b['minority_class']} kept at {data.class_counts[b['minority_class']]} "
         f"of {max(data.class_counts)} images")
    evals = {}
    for method in b["methods"]:
        evals[method] = bagan_method(out, cfg, seed, method, progress, data=data)
        _log(f"    {method}: minority accuracy {evals[method].get('minority_accuracy')}")
    aug = bagan_augment(out, cfg, seed, progress)
    return {"eval": evals, "augment": aug, "class_counts": list(data.class_counts)}


def _bagan_data(cfg, seed):
    b = cfg["bagan"]
    return get_dataset(cfg["dataset"], "train", image_size=cfg["image_size"], profile="bagan", seed=seed,
                       minority_class=b["minority_class"], drop_fraction=b["drop_fraction"])


def bagan_method(out, cfg, seed, method, progress=True, data=None):
    """One GAN of the BAGAN section: trained, evaluated (cached in its run directory), its grid saved."""
    from .train.gan import evaluate_run
    b = cfg["bagan"]
    ann_path = os.path.join(out, "annotator.pt")
    d = os.path.join(out, "bagan", method)
    data = data if data is not None else _bagan_data(cfg, seed)
    trainer = GANTrainer(data, d, method=method, seed=seed, progress=progress, device=_device(cfg),
                         **bagan_gan_settings(b, method))
    trainer.config.update(annotator=ann_path)
    trainer.run()
    key = dict(step=trainer.step, annotator_sha256=file_digest(ann_path), n=b["eval_samples"])
    res = _cached_eval(os.path.join(d, "eval.json"), key, lambda: evaluate_run(
        d, "last", annotator=ann_path, n=b["eval_samples"], fid="annotator", lpips_images=0, device=_device(cfg)))
    _sample_grid(trainer, os.path.join(out, "bagan", f"samples_{method}.png"))
    return res


def bagan_augment(out, cfg, seed, progress=True):
    """The augmented-classifier test on the BAGAN section's data (its GANs trained first)."""
    from .train.augment_eval import augment_eval
    b = cfg["bagan"]
    dirs = [os.path.join(out, "bagan", m) for m in b["methods"] if m in b["augment_methods"]]
    return augment_eval(os.path.join(out, "bagan", "augment"), dirs, checkpoint="last", seed=seed, progress=progress,
                        rows=tuple(b["augment_rows"]), device=_device(cfg), **b["augment"])


def bagan_gan_settings(b, method):
    """The BAGAN section's GAN settings for ``method``, less those it does not read (the autoencoder's for
    methods without that stage, ACGAN's for the others)."""
    from .train.options import unused_options
    unused = set(unused_options(get_method(method), b["gan"], cb_reg=False))
    return {k: v for k, v in b["gan"].items() if k not in unused}


def _bagan_lines(bagan):
    m = bagan["augment"]["minority_classes"]
    lines = ["", f"## BAGAN section (minority class {', '.join(map(str, m))}; training counts {bagan['class_counts']})",
             "", "Generated images (final EMA generators): how often the annotator names the class asked for, and "
             "SSIM of random pairs within a class (lower is more varied; real pairs are the paper's reference).", "",
             "| method | minority accuracy | mean class accuracy | intra-FD (minority, vs its test images) | "
             "SSIM fake pairs (minority) | SSIM real pairs (minority) | SSIM fake to nearest real (minority) | "
             "SSIM real to nearest real (minority) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    k = m[0]
    for method, r in bagan["eval"].items():
        acc = r.get("class_accuracy") or []
        known = [a for a in acc if a is not None]
        ss = r.get("ssim", {})

        def at(key):
            v = (ss.get(key) or [None] * (k + 1))[k]
            return "n/a" if v is None else f"{v:.3f}"
        lines.append(f"| {method} | {acc[k]:.3f} | {sum(known) / max(len(known), 1):.3f} | "
                     f"{_fmt(_intra_fd_at(r, k))} | {at('fake_pairs')} | "
                     f"{at('real_pairs')} | {at('fake_to_nearest_real')} | {at('real_to_nearest_real')} |")
    lines += ["", "Classifier trained on the training set rebalanced with each source of minority images "
              "(random crops, no flips):", "", "| rows | added images | minority-class test accuracy | "
              "balanced test accuracy |", "| --- | --- | --- | --- |"]
    for name, row in bagan["augment"]["rows"].items():
        acc = row["minority_accuracy"] or [math.nan]
        lines.append(f"| {name} | {row['added']} | {acc[0]:.3f} | {(row['balanced_accuracy'] or math.nan):.3f} |")
    lines += ["", "Samples: " + ", ".join(f"[{x}](bagan/samples_{x}.png)" for x in bagan["eval"])]
    return lines


def softlabel_section(out, cfg, seed, threads=None, progress=True):
    """Softlabel-GAN vs DiffAug-GAN vs Smooth-GAN (same seed, networks and steps; final generators, the EMA where
    one is kept) on the section's profile, in ``out/softlabel``: FD-annotator, intra-FD per class, PRDC and
    intra-PRDC, class consistency (all with the annotator of stage 3), LPIPS and intra-LPIPS when their weights
    exist, and a bar chart of intra-FD per class sorted by training count."""
    sl = cfg["softlabel"]
    d = os.path.join(out, "softlabel")
    data = _softlabel_data(cfg, seed)
    _log(f"4c/5 Softlabel section: {sl['profile']} profile, training counts {list(data.class_counts)}")
    clf = softlabel_classifier(out, cfg, seed, threads)
    clf_acc = {k: clf.checkpoint_info.get(k) for k in ("accuracy", "balanced_accuracy", "per_class_accuracy")}
    _log(f"    soft-label classifier balanced accuracy {clf_acc['balanced_accuracy']:.3f}")
    evals = {}
    for method in sl["methods"]:
        evals[method] = r = softlabel_method(out, cfg, seed, method, progress, data=data)
        _log(f"    {method}: FD-annotator {_fmt(r['fd'])}, intra-FD {_fmt(r.get('intra_fd_mean'))} ± "
             f"{_fmt(r.get('intra_fd_std'))}, class consistency {_fmt(r.get('class_consistency'), 3)}")
    classes = list(getattr(data, "classes", range(data.num_classes)))
    plot_intra_fd(os.path.join(d, "intra_fd.png"), evals, list(data.class_counts), classes)
    return {"eval": evals, "class_counts": list(data.class_counts), "classes": [str(c) for c in classes],
            "soft_label_classifier": clf_acc, "settings": sl}


def _softlabel_data_kw(cfg, seed):
    sl = cfg["softlabel"]
    kw = dict(profile=sl["profile"], image_size=cfg["image_size"], seed=seed)
    if sl["profile"] == "exp":
        kw["imbalance_ratio"] = cfg["imbalance"]
    return kw


def _softlabel_data(cfg, seed):
    return get_dataset(cfg["dataset"], "train", **_softlabel_data_kw(cfg, seed))


def softlabel_classifier(out, cfg, seed, threads=None, progress=True):
    """The Softlabel section's classifier (its soft labels label the training images)."""
    sl, kw = cfg["softlabel"], _softlabel_data_kw(cfg, seed)
    os.makedirs(os.path.join(out, "softlabel"), exist_ok=True)
    return _classifier(os.path.join(out, "softlabel", "softlabel_classifier.pt"), dataset=cfg["dataset"],
                       imbalance=kw.get("imbalance_ratio", 1.0), image_size=cfg["image_size"],
                       settings=dict(sl["classifier"], profile=sl["profile"]), seed=seed, threads=threads,
                       progress=progress, device=_device(cfg))


def softlabel_method(out, cfg, seed, method, progress=True, data=None):
    """One GAN of the Softlabel section: trained (on the classifier's soft labels where the method uses them),
    evaluated (cached in its run directory), its grid saved."""
    from .train.classifier import soft_labels
    sl = cfg["softlabel"]
    d = os.path.join(out, "softlabel")
    md = os.path.join(d, method)
    clf_path = os.path.join(d, "softlabel_classifier.pt")
    ann_path = os.path.join(out, "annotator.pt")
    data = data if data is not None else _softlabel_data(cfg, seed)
    needs = get_method(method).needs_soft_labels
    trainer = GANTrainer(data, md, method=method, seed=seed, progress=progress, device=_device(cfg),
                         soft_labels=soft_labels(clf_path, data, device=_device(cfg)) if needs else None, **sl["gan"])
    trainer.config.update(annotator=ann_path, soft_labels=clf_path if needs else None)
    trainer.run()
    key = dict(step=trainer.step, annotator_sha256=file_digest(ann_path), n=sl["eval_samples"],
               lpips_images=sl["lpips_images"])
    res = _cached_eval(os.path.join(md, "eval.json"), key, lambda: _softlabel_eval(md, ann_path, sl, _device(cfg)))
    _sample_grid(trainer, os.path.join(d, f"samples_{method}.png"))
    return res


def _sample_grid(trainer, path):
    """100 samples of the final generator, seed 2024, 10 a row (column k: class k for conditional methods)."""
    fakes = trainer.generate(100, generator=torch.Generator().manual_seed(2024))
    torchvision.utils.save_image(fakes, path, nrow=10, normalize=True, value_range=(-1, 1))


# ---- worker processes

def _stages(out, cfg, seed):
    """The job's units as (name, needs, function, args), longest chains first: ``run_stages`` starts the first
    whose needs are done."""
    secs, st = cfg["sections"], []
    st.append(("annotator", (), _annotator, (out, cfg, seed, None, False)))
    if "softlabel" in secs:
        st.append(("softlabel/classifier", (), softlabel_classifier, (out, cfg, seed, None, False)))
    if "cbgan" in secs:
        st.append(("classifier", (), _loop_classifier, (out, cfg, seed, None, False)))
    if "softlabel" in secs:
        for m in cfg["softlabel"]["methods"]:
            needs = ("annotator",) + (("softlabel/classifier",) if get_method(m).needs_soft_labels else ())
            st.append((f"softlabel/{m}", needs, softlabel_method, (out, cfg, seed, m, False)))
    if "cbgan" in secs:
        for m in cfg["methods"]:
            needs = ("annotator",) + (("classifier",) if get_method(m).cb_regularizer else ())
            st.append((m, needs, cbgan_method, (out, cfg, seed, m, False)))
    if "bagan" in secs:
        b = cfg["bagan"]
        for m in b["methods"]:
            st.append((f"bagan/{m}", ("annotator",), bagan_method, (out, cfg, seed, m, False)))
        st.append(("bagan/augment", tuple(f"bagan/{m}" for m in b["methods"] if m in b["augment_methods"]),
                   bagan_augment, (out, cfg, seed, False)))
    return st


def run_stages(stages, *, jobs, threads=1, log_dir):
    """Runs ``stages`` ((name, needs, function, args), in priority order) in up to ``jobs`` worker processes of
    ``threads`` threads each, every stage's output in ``log_dir/<name>.log``. A failed stage stops the others (their
    runs resume) and raises, naming the stage and its log."""
    import multiprocessing as mp
    import multiprocessing.connection
    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    os.makedirs(log_dir, exist_ok=True)
    pending, done, running = list(stages), set(), {}
    try:
        while pending or running:
            for stage in list(pending):
                name, needs = stage[0], stage[1]
                if len(running) >= jobs:
                    break
                if all(n in done for n in needs):
                    log = os.path.join(log_dir, name.replace("/", "_") + ".log")
                    p = ctx.Process(target=_stage_main, args=(stage[2], stage[3], threads, log, os.getpid()),
                                    daemon=True)
                    p.start()
                    running[name] = (p, log, time.time())
                    pending.remove(stage)
                    _log(f"    started {name} ({threads} thread{'s' if threads > 1 else ''}; log {log})")
            if not running:
                raise RuntimeError("demo: stages wait for stages that never run: "
                                   + ", ".join(f"{s[0]} needs {', '.join(s[1])}" for s in pending))
            finished = mp.connection.wait([p.sentinel for p, _, _ in running.values()])
            for name, (p, log, t) in list(running.items()):
                if p.sentinel not in finished:
                    continue
                p.join()
                del running[name]
                if p.exitcode != 0:
                    raise RuntimeError(f"demo: stage {name} failed ({_last_line(log)}); its log: {log}")
                done.add(name)
                _log(f"    done {name} in {(time.time() - t) / 60:.1f} min")
    finally:
        for p, _, _ in running.values():  # a failure or an interrupt: the others' runs resume next time
            p.terminate()
            p.join()


def _stage_main(fn, args, threads, log, parent):
    _die_with_parent(parent)
    with open(log, "a") as f:  # C++ and tqdm output too: the descriptors, not sys.stdout
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    torch.set_num_threads(threads)
    fn(*args)


def _die_with_parent(parent):
    """A worker whose job is killed (SIGTERM, SIGKILL: no ``finally`` runs there) stops too, instead of training on
    while holding its run's lock (Linux; elsewhere a no-op)."""
    import signal
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def _last_line(path):
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


def _fmt(v, digits=2):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _cached_eval(path, key, compute):
    """The metrics in ``path`` when they were computed for ``key`` (the run's step, the annotator's digest, the
    sample counts), else computed again and stored: a replaced annotator or an extended run is never reported
    with old numbers."""
    if os.path.exists(path):
        with open(path) as f:
            res = json.load(f)
        if res.get("eval_key") == key:
            return res
    res = dict(compute(), eval_key=key)
    with open(path + ".tmp", "w") as f:
        json.dump(res, f)
    os.replace(path + ".tmp", path)
    return res


def _softlabel_eval(run_dir, ann_path, sl, device="cpu"):
    from .train.gan import evaluate_run
    return evaluate_run(run_dir, "last", annotator=ann_path, n=sl["eval_samples"], fid="annotator", seed=2024,
                        lpips_images=sl["lpips_images"], device=device)


def plot_intra_fd(path, evals, class_counts, classes):
    """Intra-FD per class for each method, classes sorted by training count (largest first): the paper's Fig. 8 view."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    order = by_count(class_counts)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(order), 3.4))
    width = 0.8 / max(len(evals), 1)
    for j, (method, r) in enumerate(evals.items()):
        vals = [_intra_fd_at(r, k) for k in order]
        ax.bar([i + (j - (len(evals) - 1) / 2) * width for i in range(len(order))],
               [math.nan if v is None else v for v in vals], width, label=method, color=f"C{j}")
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([f"{str(classes[k])[:9]}\n{class_counts[k]}" for k in order], fontsize=7)
    ax.set_ylabel("intra-FD (annotator) ↓")
    ax.set_title("intra-FD per class, by training count")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def by_count(class_counts):
    """Class indices, most training images first."""
    return sorted(range(len(class_counts)), key=lambda k: -class_counts[k])


def minor_classes(class_counts, n=3):
    """The n classes with the fewest training images."""
    return sorted(range(len(class_counts)), key=lambda k: class_counts[k])[:n]


def _intra_fd_at(res, k):
    """Intra-FD of class k in an evaluation, None when unknown."""
    return (res.get("intra_fd") or [None] * (k + 1))[k]


def _minor_intra_fd(sl, method):
    """Mean intra-FD over the 3 smallest classes; NaN unless all three are known (methods are compared on the
    same classes)."""
    fds = [_intra_fd_at(sl["eval"][method], k) for k in minor_classes(sl["class_counts"])]
    return math.nan if None in fds else statistics.fmean(fds)


def _softlabel_lines(sl):
    counts, classes, ev = sl["class_counts"], sl["classes"], sl["eval"]
    g = sl["settings"]["gan"]
    a, n_eval = sl["soft_label_classifier"], sl["settings"]["eval_samples"]
    lines = ["", f"## Softlabel section ({sl['settings']['profile']} profile; training counts {counts})", "",
             f"BigGAN-32 at width {g['width']}, {g['steps']} G steps with {g['n_dis']} D steps each, batch "
             f"{g['batch_size']}, " + (f"EMA {g['ema_decay']} from step {g['ema_start']}; the final EMA generator"
                                       if g.get("ema_start", 0) < g["steps"] else "no EMA; the final generator")
             + f" of each method, {n_eval} samples ({n_eval // len(counts)} a class). Soft labels: a ResNet trained "
             f"with CE − 0.3·H, balanced test accuracy {(a.get('balanced_accuracy') or math.nan) * 100:.1f}%.", "",
             "| method | FD-annotator ↓ | intra-FD ↓ (mean ± sd over classes) | intra-FD, 3 smallest classes ↓ | "
             "class consistency ↑ | precision | recall | density | coverage | intra-P / R / D / C | LPIPS ↑ | "
             "intra-LPIPS ↑ |", "| --- |" + " --- |" * 11]
    for m, r in ev.items():
        p, ip = r.get("prdc") or {}, r.get("intra_prdc") or {}

        def f(d, k):
            return "n/a" if d.get(k) is None else f"{d[k]:.3f}"
        lp = "skipped" if "lpips" not in r else f"{r['lpips']:.3f}"
        ilp = "skipped" if "intra_lpips_mean" not in r else f"{r['intra_lpips_mean']:.3f} ± {r['intra_lpips_std']:.3f}"
        prdc_keys = ("precision", "recall", "density", "coverage")
        lines.append(f"| {m} | {_fmt(r['fd'])} | {_fmt(r.get('intra_fd_mean'))} ± {_fmt(r.get('intra_fd_std'))} | "
                     f"{_fmt(_minor_intra_fd(sl, m))} | {_fmt(r.get('class_consistency'), 3)} | "
                     + " | ".join(f(p, k) for k in prdc_keys) + f" | {' / '.join(f(ip, k) for k in prdc_keys)} "
                     f"| {lp} | {ilp} |")
    skipped = next((r["lpips_skipped"] for r in ev.values() if "lpips_skipped" in r), None)
    if skipped:
        lines += ["", skipped + "."]
    lines += ["", "Intra-FD per class (classes by training count):", "", "![intra-FD](softlabel/intra_fd.png)", "",
              "| class | training images | " + " | ".join(ev) + " |", "| --- | --- |" + " --- |" * len(ev)]
    for k in by_count(counts):
        lines.append(f"| {classes[k]} | {counts[k]} | " + " | ".join(_fmt(_intra_fd_at(r, k)) for r in ev.values())
                     + " |")
    lines += ["", "Samples (column k: class k): " + ", ".join(f"[{m}](softlabel/samples_{m}.png)" for m in ev)]
    return lines


def _ratios(results):
    """KL and FD of each method relative to the baseline ("gan"): KL ratio = baseline / method (higher is
    more balancing), FD ratio = method / baseline (1.25 = 25% worse)."""
    base = results.get("gan")
    if base is None:
        return {}
    return {m: {"kl_ratio": base["kl"] / max(r["kl"], 1e-12), "fd_ratio": r["fd"] / base["fd"]}
            for m, r in results.items() if m != "gan"}


def write_report(out, cfg, train, results, accuracies, seconds, seed, bagan=None, softlabel=None):
    classes = list(getattr(train, "classes", range(train.num_classes)))
    if results:
        _histogram_figure(out, cfg, train, results, classes)
    fid_note = ("clean-fid's Inception weights were found: FID is available with `cbgan-ext eval`"
                if inception_available() else
                "clean-fid's Inception weights are not available offline, so the Fréchet distance is computed "
                "on the annotator's penultimate features (FD-annotator), against the balanced test split. It is "
                "not comparable with published FIDs.")
    ratios = _ratios(results)
    machine = machine_info(cfg.get("device", "cpu"))
    lines = [f"# cbgan_ext main job on {cfg['dataset']} (preset {cfg['preset']}, seed {seed}, sections "
             f"{', '.join(cfg['sections'])})", "",
             f"{seconds / 60:.1f} min in this invocation (finished stages resume). Machine: {machine['cpu']} "
             f"({', '.join(machine['cpu_flags']) or machine['cpu_capability']}, {machine['cores']} cores), torch "
             f"{machine['torch']}"
             + (f", {machine['gpu']}" if machine.get("gpu") else "") + "."]
    if results:
        lines += _cbgan_lines(cfg, train, results, ratios, classes)
    lines += ["", fid_note, "", "## Classifiers", "",
              "| network | data | accuracy | balanced accuracy |", "| --- | --- | --- | --- |"]
    for name, data in (("classifier", f"long-tailed ρ={cfg['imbalance']:g}"), ("annotator", "balanced")):
        if name not in accuracies:
            continue
        a = accuracies[name]
        lines.append(f"| {name} | {data} | {(a.get('accuracy') or math.nan) * 100:.1f}% | "
                     f"{(a.get('balanced_accuracy') or math.nan) * 100:.1f}% |")
    if bagan is not None:
        lines += _bagan_lines(bagan)
    if softlabel is not None:
        lines += _softlabel_lines(softlabel)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"config": cfg, "seed": seed, "results": results, "ratios": ratios, "classifiers": accuracies,
                   "bagan": bagan, "softlabel": softlabel, "minutes": seconds / 60, "machine": machine}, f, indent=1,
                  default=str)
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def machine_info(device="cpu"):
    """What the digits came from: they move with the CPU's vector units (AVX2 or AVX-512, and with AMX or
    AVX-512 BF16 the classifiers train in bf16 under amp="auto"), the core count and the torch build."""
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in text if line.startswith("model name")), cpu)
        have = next((line.split(":", 1)[1].split() for line in text if line.startswith("flags")), [])
        flags = [x for x in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if x in have]
    except OSError:
        pass
    cores = available_cores()
    info = {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_flags": flags,
            "cores": cores, "torch": torch.__version__}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _histogram_figure(out, cfg, train, results, classes):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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


def _cbgan_lines(cfg, train, results, ratios, classes):
    g = cfg["gan"]
    lines = ["", f"## CBGAN section (long-tailed, ρ = {cfg['imbalance']:g})", "",
             f"ρ = {cfg['imbalance']:g}, training counts {list(train.class_counts)}; {g['arch']} width {g['width']}, "
             f"{g['steps']} steps, batch {g['batch_size']}, CB: {g['weighting']} weighting, λ = {g['lam']} from step "
             f"{g.get('cb_start', 0)}, cycle {g['cycle']} steps; {cfg['final_samples']} samples per method from the "
             "final EMA generator (the same rule for every method).", "",
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
    lines += ["", "### Generated class histograms (annotator labels)", "", "![histograms](histograms.png)", "",
              "| class | " + " | ".join(results) + " |", "| --- |" + " --- |" * len(results)]
    for k, c in enumerate(classes):
        lines.append(f"| {c} | " + " | ".join(str(res["histogram"][k]) for res in results.values()) + " |")
    lines += ["", "### Samples", ""] + [f"**{m}**\n\n![{m}](samples_{m}.png)\n" for m in results]
    return lines


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
    # the methods every seed ran (seeds of one section may come from whole jobs and from that section alone)
    methods = [m for m in first["results"] if all(m in (per_seed[s]["results"] or {}) for s in seeds)]
    rows = []
    for m in methods:
        for key, label in (("kl", "KL ↓"), ("fd", "FD-annotator ↓"), ("confidence", "annotator confidence")):
            rows.append((f"{m} {label}", [per_seed[s]["results"][m][key] for s in seeds]))
        if all(m in (per_seed[s]["ratios"] or {}) for s in seeds):
            rows.append((f"{m} KL ratio (gan / {m})", [per_seed[s]["ratios"][m]["kl_ratio"] for s in seeds]))
            rows.append((f"{m} FD ratio ({m} / gan)", [per_seed[s]["ratios"][m]["fd_ratio"] for s in seeds]))
    if all(per_seed[s].get("bagan") for s in seeds):
        for m in first["bagan"]["eval"]:
            rows.append((f"BAGAN section: {m} class consistency",
                         [per_seed[s]["bagan"]["eval"][m].get("class_consistency") for s in seeds]))
            rows.append((f"BAGAN section: {m} generated minority accuracy",
                         [per_seed[s]["bagan"]["eval"][m]["minority_accuracy"][0] for s in seeds]))
        for row in first["bagan"]["augment"]["rows"]:
            rows.append((f"BAGAN section: classifier minority accuracy, {row}",
                         [per_seed[s]["bagan"]["augment"]["rows"][row]["minority_accuracy"][0] for s in seeds]))
    if all(per_seed[s].get("softlabel") for s in seeds):
        for m in first["softlabel"]["eval"]:
            for key, label in (("fd", "FD-annotator ↓"), ("intra_fd_mean", "intra-FD mean ↓"),
                               ("class_consistency", "class consistency ↑"), ("lpips", "LPIPS ↑"),
                               ("intra_lpips_mean", "intra-LPIPS ↑")):
                vals = [per_seed[s]["softlabel"]["eval"][m].get(key) for s in seeds]
                if None not in vals:
                    rows.append((f"Softlabel section: {m} {label}", vals))
            rows.append((f"Softlabel section: {m} intra-FD of the 3 smallest classes ↓",
                         [_minor_intra_fd(per_seed[s]["softlabel"], m) for s in seeds]))
        rows.append(("Softlabel section: soft-label classifier balanced accuracy",
                     [per_seed[s]["softlabel"]["soft_label_classifier"]["balanced_accuracy"] for s in seeds]))
    for name in ("classifier", "annotator"):
        if all(name in per_seed[s]["classifiers"] for s in seeds):
            rows.append((f"{name} balanced accuracy", [per_seed[s]["classifiers"][name]["balanced_accuracy"]
                                                       for s in seeds]))
    rows = [(label, vals) for label, vals in rows if not any(v is None or math.isnan(v) for v in vals)]
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
