"""One evaluator for every GAN run: the loop's periodic evaluation, ``cbgan-ext eval`` and the main job.

It generates n images from a generator (conditional generators get n/K per class, as evenly as n allows),
labels them with the annotator, and compares them with the **balanced test split** of the run's dataset,
whose feature statistics it computes once and caches. Metrics:

* ``histogram``, ``kl``: the annotator's class histogram of the fakes and its KL to uniform (CBGAN);
* ``fd`` (named by ``fd_name``): Fréchet distance on the annotator's penultimate features (FD-annotator);
* ``fid``: clean-fid's FID when its Inception weights are present (``fid="auto"``) or asked for;
* ``label_accuracy`` (conditional runs; also named ``class_consistency``, Softlabel-GAN's term): how often the
  annotator agrees with the class asked for;
* ``intra_fd`` (conditional runs, when the test split's labels are known): per class k, FD-annotator between
  the fakes asked for class k and the test images of class k (a list by class), with its mean and std;
* ``prdc`` (with ``Evaluator(prdc=True)``, as ``cbgan-ext eval`` does for conditional runs: three N x N
  distance matrices, too costly for the loop's periodic evaluations; needs the ``prdc`` package, ``pip
  install .[metrics]``, else ``prdc_skipped`` says why): precision, recall, density and coverage (k = 5) of the fakes
  against the test split in the annotator's feature space, and ``intra_prdc``, their mean over the classes;
* ``class_accuracy`` (conditional runs, and single-class ones): per class, how often the annotator names the
  class the fakes were asked for (BAGAN's "accuracy of generated images");
* ``ssim`` (with ``Evaluator(variability=...)``, as ``cbgan-ext eval`` does for the BAGAN family): per class,
  SSIM of random fake pairs and of real training pairs, and of fakes / reals to their nearest real training
  image (BAGAN's variability measures; torchmetrics' SSIM, Gaussian window 11, σ 1.5);
* ``lpips``, ``intra_lpips`` (``cbgan-ext eval`` and the main job, through ``lpips_scores``): Softlabel-GAN's LPIPS
  diversity over all pairs of 100 fakes, overall and per class, when torchvision's AlexNet weights are present
  (``lpips_skipped`` says why not);
* ``confidence``: the annotator's mean top-class probability on the fakes, next to ``real_confidence`` on the
  test split. Images made to satisfy a classifier rather than to look real can reach a good FD-annotator
  and balance while being unrecognisable; their confidence drops (a check, not a quality metric).
"""
import contextlib
import io

import numpy as np
import torch

from ..metrics import ClassifierFeatures, FeatureStats, class_histogram, frechet_distance, kl_to_uniform

FID_MODES = ("auto", "inception", "annotator")
PRDC_K = 5


def prdc(real_feats, fake_feats, k=PRDC_K):
    """The ``prdc`` package's precision, recall, density, coverage; None when it is not installed."""
    try:
        from prdc import compute_prdc
    except ImportError:
        return None
    if min(len(real_feats), len(fake_feats)) <= k + 1:  # its k-th neighbour excludes the point itself
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the set sizes; `eval` prints JSON
        out = compute_prdc(real_feats, fake_feats, nearest_k=k)
    return {key: float(v) for key, v in out.items()}


def balanced_test_split(dataset_config):
    """The whole test split of the dataset a run was trained on: never the training profile's subset."""
    from ..data import dataset_from_config
    return dataset_from_config(dataset_config, split="test", imbalance_ratio=1.0, profile="exp", n_max=None)


def batched(fn, images, batch=500):
    return np.concatenate([fn(images[i:i + batch]) for i in range(0, images.shape[0], batch)])


@torch.no_grad()
def annotate(annotator, images, batch=500):
    """(argmax labels, max softmax probability) of the annotator, on the CPU."""
    dev = next(annotator.parameters()).device
    probs = [torch.softmax(annotator(images[i:i + batch].to(dev)).float(), 1).max(1)
             for i in range(0, len(images), batch)]
    return torch.cat([p.indices.cpu() for p in probs]), torch.cat([p.values.cpu() for p in probs])


def balanced_labels(n, num_classes):
    """n labels, n // K of each class and the rest to the first classes: the per-class split of n."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def generate(G, n, *, z_dim, num_classes=0, conditional=False, generator=None, batch=500, device="cpu"):
    """(images on the CPU, labels or None). z is drawn on the CPU from ``generator``, so the same seed
    gives the same images on any device."""
    G.eval()
    labels = balanced_labels(n, num_classes) if conditional else None
    out = []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        z = torch.randn(m, z_dim, generator=generator).to(device)
        y = None if labels is None else labels[i:i + m].to(device)
        out.append((G(z, y) if conditional else G(z)).cpu())
    return (torch.cat(out) if out else torch.empty(0)), labels


def lpips_scores(G, *, z_dim, num_classes=0, conditional=False, n=100, seed=0, device="cpu"):
    """Softlabel-GAN's LPIPS diversity: the mean LPIPS over all pairs of n generated images (``lpips``, classes as
    ``generate`` spreads them) and, for a conditional G, of n images of each class (``intra_lpips`` by class, its
    mean and std). Without torchvision's AlexNet weights: ``{"lpips_skipped": reason}``, never an error."""
    from ..metrics.lpips import LPIPSDiversity, lpips_unavailable
    reason = lpips_unavailable()
    if reason:
        return {"lpips_skipped": reason}
    lp = LPIPSDiversity(device=device)
    g = torch.Generator().manual_seed(int(seed))
    fakes, _ = generate(G, n, z_dim=z_dim, num_classes=num_classes, conditional=conditional, generator=g,
                        device=device)
    out = {"lpips": lp(fakes), "lpips_images": int(n)}
    if conditional:
        per_class = []
        for k in range(num_classes):
            z = torch.randn(n, z_dim, generator=g).to(device)
            with torch.no_grad():
                per_class.append(lp(G(z, torch.full((n,), k, dtype=torch.int64, device=device)).cpu()))
        out.update(intra_lpips=per_class, intra_lpips_mean=float(np.mean(per_class)),
                   intra_lpips_std=float(np.std(per_class)))
    return out


class Evaluator:
    """Metrics of generated images against the balanced test split. ``real_images``: float [N, C, H, W] in
    [−1, 1] (the balanced test split); ``annotator``: a classifier with ``features``."""

    def __init__(self, annotator, real_images, num_classes, *, n=10000, seed=4321, fid="auto", device="cpu",
                 real_labels=None, prdc=False, variability=None):
        if fid not in FID_MODES:
            raise ValueError(f"Evaluator: fid must be one of {FID_MODES}, got {fid!r}")
        if int(n) < 2:
            raise ValueError(f"Evaluator: n must be >= 2 generated images, got {n}")
        if real_images.shape[0] < 2:
            raise ValueError(f"Evaluator: the real split needs >= 2 images, got {real_images.shape[0]}")
        if real_labels is not None and len(real_labels) != real_images.shape[0]:
            raise ValueError(f"Evaluator: {len(real_labels)} real labels for {real_images.shape[0]} real images")
        self.annotator = annotator.eval()
        self.real_images, self.num_classes = real_images, int(num_classes)
        self.real_labels = None if real_labels is None else torch.as_tensor(real_labels).cpu()
        self._real_feats = None
        self.prdc = bool(prdc)
        self.variability = variability
        self.n, self.seed, self.fid, self.device = int(n), int(seed), fid, torch.device(device)
        self._real, self._real_inception, self._inception, self._real_conf = None, None, None, None

    @classmethod
    def for_dataset_config(cls, annotator, dataset_config, num_classes, **kw):
        real = balanced_test_split(dataset_config)
        return cls(annotator, real.float_images(), num_classes, real_labels=real.labels, **kw)

    def real_stats(self):
        if self._real is None:
            self._real_feats = batched(ClassifierFeatures(self.annotator), self.real_images)
            self._real = FeatureStats(self._real_feats)
        return self._real

    def intra_fd(self, fake_feats, labels):
        """FD-annotator per class (None where either side has < 2 images), mean and std over the classes."""
        self.real_stats()
        real_y, fake_y = self.real_labels.numpy(), labels.numpy()
        per_class = []
        for k in range(self.num_classes):
            a, b = fake_feats[fake_y == k], self._real_feats[real_y == k]
            per_class.append(frechet_distance(FeatureStats(a), FeatureStats(b)) if min(len(a), len(b)) >= 2 else None)
        known = [v for v in per_class if v is not None]
        return per_class, (float(np.mean(known)) if known else None), (float(np.std(known)) if known else None)

    def intra_prdc(self, fake_feats, labels):
        """PRDC within each class (fakes asked for k against the test images of k), averaged over the classes."""
        real_y, fake_y = self.real_labels.numpy(), labels.numpy()
        per_class = [prdc(self._real_feats[real_y == k], fake_feats[fake_y == k]) for k in range(self.num_classes)]
        known = [p for p in per_class if p is not None]
        return {key: float(np.mean([p[key] for p in known])) for key in known[0]} if known else None

    def _inception_features(self):
        from ..metrics import InceptionFeatures, inception_available
        if self.fid == "annotator" or (self.fid == "auto" and not inception_available()):
            return None
        if self._inception is None:
            self._inception = InceptionFeatures(device=self.device)
            self._real_inception = FeatureStats(batched(self._inception, self.real_images, 100))
        return self._inception

    @torch.no_grad()
    def metrics(self, fakes, labels=None):
        pred, conf = annotate(self.annotator, fakes)
        hist = class_histogram(pred, self.num_classes)
        fake_feats = batched(ClassifierFeatures(self.annotator), fakes)
        fd = frechet_distance(FeatureStats(fake_feats), self.real_stats())
        if self._real_conf is None:
            self._real_conf = float(annotate(self.annotator, self.real_images)[1].double().mean())
        res = {"kl": kl_to_uniform(hist), "fd": fd, "fd_name": "FD-annotator", "histogram": hist.tolist(),
               "n": int(fakes.shape[0]), "confidence": float(conf.double().mean()), "real_confidence": self._real_conf}
        if self.prdc:
            res["prdc"] = prdc(self._real_feats, fake_feats)
            if res["prdc"] is None:
                del res["prdc"]
                res["prdc_skipped"] = "the prdc package is not installed (pip install prdc), or too few images"
        if labels is not None:
            res["label_accuracy"] = res["class_consistency"] = float((pred == labels).double().mean())
            res["class_accuracy"] = [float((pred[labels == k] == k).double().mean()) if bool((labels == k).any())
                                     else None for k in range(self.num_classes)]
            if self.real_labels is not None:
                res["intra_fd"], res["intra_fd_mean"], res["intra_fd_std"] = self.intra_fd(fake_feats, labels)
                if "prdc" in res:
                    res["intra_prdc"] = self.intra_prdc(fake_feats, labels)
        inc = self._inception_features()
        if inc is not None:
            res["fid"] = frechet_distance(FeatureStats(batched(inc, fakes, 100)), self._real_inception)
        return res

    def __call__(self, G, *, z_dim, conditional=False, n=None, seed=None, label=None):
        """``label``: an unconditional G trained on one class (BAGAN's single-class GAN): its fakes are judged
        as that class."""
        g = torch.Generator().manual_seed(self.seed if seed is None else int(seed))
        fakes, labels = generate(G, self.n if n is None else int(n), z_dim=z_dim, num_classes=self.num_classes,
                                 conditional=conditional, generator=g, device=self.device)
        if label is not None:
            labels = torch.full((fakes.shape[0],), int(label), dtype=torch.int64)
        res = self.metrics(fakes, labels)
        if self.variability is not None and labels is not None:
            res["ssim"] = self.ssim_variability(fakes, labels, g)
        return res

    def ssim_variability(self, fakes, labels, generator):
        """BAGAN's variability measures per class (None where a side has too few images): the mean SSIM of
        random pairs of fakes of the class and of real training pairs of the class (the paper's reference), and
        the mean SSIM of fakes to their nearest real training image of the class next to real-to-nearest-other-
        real (for ``nearest_classes`` only, all when None: a search over the pool per query is costly).
        ``self.variability`` = (training images, labels, pairs, nearest queries, pool cap, nearest_classes)."""
        from ..metrics.ssim import mean_pair_ssim, mean_nearest_ssim
        images, train_labels, pairs, queries, pool, nearest_classes = self.variability
        out = {k: [] for k in ("fake_pairs", "real_pairs", "fake_to_nearest_real", "real_to_nearest_real")}
        for k in range(self.num_classes):
            near = nearest_classes is None or k in nearest_classes
            f, r = fakes[labels == k], images[train_labels == k]
            if len(r) > pool:
                r = r[torch.randperm(len(r), generator=generator)[:pool]]
            q_real = r[:queries]
            out["fake_pairs"].append(mean_pair_ssim(f, pairs, generator))
            out["real_pairs"].append(mean_pair_ssim(r, pairs, generator))
            out["fake_to_nearest_real"].append(mean_nearest_ssim(f[:queries], r) if near else None)
            out["real_to_nearest_real"].append(mean_nearest_ssim(q_real, r, exclude_self=True) if near else None)
        for key in list(out):
            known = [v for v in out[key] if v is not None]
            out[key + "_mean"] = float(np.mean(known)) if known else None
        return out
