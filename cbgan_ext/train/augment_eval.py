"""BAGAN's final test (Mariani et al. 2018, §5.2): restore the balance of the imbalanced training set by adding
minority-class images, train the classifier on it, and measure its accuracy on the minority class(es) of the
balanced test split.

Rows, each a ``train-classifier`` run in ``<out>/<row>/`` (resumable), with the same recipe and seed:

* ``plain``: the imbalanced set as it is;
* ``oversample``: the real minority images repeated up to the majority count (what a user tries first; the
  paper omits it);
* ``mirror``: horizontal mirrors of the real minority images, repeated, up to the majority count (the paper's);
* one row per GAN run (``bagan``, ``acgan``, ``minority-gan``, ...): that many generated images of each
  minority class (EMA generator; quantised to uint8 like every training image).

The classifier's own flip augmentation would make ``mirror`` and ``oversample`` the same: the default recipe
here uses random crops without flips (``augment="crop"``), for every row alike.
"""
import json
import os

import torch

from ..data import dataset_from_config
from . import checkpoint as ckpt
from ..data import dataset_minority_classes
from .gan import load_run


def _to_uint8(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def extra_images(kind, train_set, minority, *, run_dir=None, checkpoint="best", seed=0, device="cpu"):
    """(uint8 images, labels) that bring each minority class up to the largest class's count."""
    target = max(train_set.class_counts)
    xs, ys = [], []
    g = torch.Generator().manual_seed(int(seed) + 777)
    run = load_run(run_dir, checkpoint, device) if kind == "generated" else None
    for k in minority:
        need = target - train_set.class_counts[k]
        if need <= 0:
            continue
        real = train_set.images[train_set.labels == k]
        if kind in ("oversample", "mirror"):
            src = real.flip(-1) if kind == "mirror" else real
            x = src[torch.arange(need) % len(src)]
        else:
            if run.conditional:
                y = torch.full((need,), k, dtype=torch.int64)
            elif run.label == k:
                y = None
            else:
                raise ValueError(f"augment-eval: {run_dir} ({run.method}) generates class {run.label}, not minority "
                                 f"class {k}")
            parts = []
            with torch.no_grad():
                for i in range(0, need, 500):
                    z = torch.randn(min(500, need - i), run.z_dim, generator=g).to(device)
                    out = run.G(z, y[i:i + len(z)].to(device)) if y is not None else run.G(z)
                    parts.append(_to_uint8(out.cpu()))
            x = torch.cat(parts)
        xs.append(x)
        ys.append(torch.full((len(x),), k, dtype=torch.int64))
    if not xs:
        return torch.zeros((0, *train_set.image_shape), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.cat(xs), torch.cat(ys)


def augment_eval(out, runs, *, dataset_config=None, rows=("plain", "oversample", "mirror"), checkpoint="best",
                 seed=0, device="cpu", progress=True, log=None, **classifier_kw):
    """Trains one classifier per row (see the module doc) and returns the results (also ``<out>/results.json``).
    ``runs``: GAN run directories (their dataset config must agree); ``dataset_config`` when there are none.
    The classifier's seed is the dataset's (it also picks the kept images); ``seed`` draws the generated ones."""
    from .classifier import train_classifier
    runs = list(runs or [])
    loaded = {d: load_run(d, checkpoint) for d in runs}
    if dataset_config is None:
        if not loaded:
            raise ValueError("augment-eval: give GAN runs (--run) or a dataset config")
        dataset_config = loaded[runs[0]].config["dataset"]
    for r, run in loaded.items():
        c = run.config
        if c.get("dataset") != dataset_config:
            raise ValueError(f"augment-eval: {r} was trained on another dataset ({c.get('dataset')}) than "
                             f"{dataset_config}")
    minority = dataset_minority_classes(dataset_config)
    if not minority:
        raise ValueError("augment-eval: the dataset has no minority class: it needs the bagan profile "
                         "(--profile bagan --minority-class K --drop-fraction F)")
    os.makedirs(out, exist_ok=True)
    kw = dict(dataset=dataset_config["name"], root=dataset_config.get("root"),
              image_size=dataset_config.get("image_size"),
              imbalance_ratio=dataset_config.get("imbalance_ratio", 1.0), profile="bagan",
              n_max=dataset_config.get("n_max"), seed=dataset_config.get("seed", 0),
              selection=dataset_config.get("selection", "shuffle"), minority_class=dataset_config.get("minority_class"),
              drop_fraction=dataset_config.get("drop_fraction"), device=str(device), augment="crop")
    kw.update(classifier_kw)
    for d, run in loaded.items():  # every run must generate every minority class: checked before any training
        if not run.conditional and any(run.label != k for k in minority):
            raise ValueError(f"augment-eval: {d} ({run.method}) generates only class {run.label}; the minority "
                             f"classes are {list(minority)}")
    plan = [(r, r, None) for r in rows] + [(loaded[d].method, "generated", d) for d in runs]
    names = [p[0] for p in plan]
    if len(set(names)) != len(names):
        raise ValueError(f"augment-eval: two rows share a name {names}: give runs of different methods")
    results = {"minority_classes": list(minority), "classifier": {k: v for k, v in kw.items()}, "rows": {}}
    def drawn(kind, run_dir):
        return {"kind": kind, "run": None if run_dir is None else os.path.abspath(run_dir),
                "checkpoint": checkpoint if run_dir else None, "seed": seed if run_dir else None,
                "run_step": loaded[run_dir].step if run_dir else None}
    for name, kind, run_dir in plan:  # cached draws of other settings are refused before any work
        extra = os.path.join(out, name, "extra.pt")
        if kind != "plain" and os.path.exists(extra):
            old = {k: ckpt.load(extra).get(k) for k in drawn(kind, run_dir)}
            if old != drawn(kind, run_dir):
                raise ValueError(f"augment-eval: {extra} was drawn with other settings ({old}, now "
                                 f"{drawn(kind, run_dir)}): use another --out")
    train_set = dataset_from_config(dataset_config)
    for name, kind, run_dir in plan:
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        extra = None
        if kind != "plain":
            extra = os.path.join(folder, "extra.pt")
            if not os.path.exists(extra):
                x, y = extra_images(kind, train_set, minority, run_dir=run_dir, checkpoint=checkpoint, seed=seed,
                                    device=device)
                ckpt.save_atomic({"images": x, "labels": y, **drawn(kind, run_dir)}, extra)
        path = os.path.join(folder, "classifier.pt")
        rec = train_classifier(path, resume=os.path.exists(path), progress=progress, log=log, extra=extra, **kw)
        per = rec.get("per_class_accuracy") or []
        results["rows"][name] = {
            "kind": kind, "run": run_dir, "checkpoint": checkpoint if run_dir else None,
            "run_step": loaded[run_dir].step if run_dir else None, "seed": seed if run_dir else None,
            "added": 0 if extra is None else int(ckpt.load(extra)["labels"].numel()),
            "minority_accuracy": [per[k] for k in minority] if per else None,
            "accuracy": rec.get("accuracy"), "balanced_accuracy": rec.get("balanced_accuracy"),
            "per_class_accuracy": per, "finished": rec.get("finished")}
        with open(os.path.join(out, "results.json.tmp"), "w") as f:
            json.dump(results, f, indent=1)
        os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))
    return results
