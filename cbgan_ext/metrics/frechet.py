"""Fréchet distances between feature statistics of real and generated images.

* ``InceptionFeatures``: clean-fid's Inception network ("clean" mode: PIL bicubic resize to 299), i.e.
  the standard FID, when its weights file is available locally (clean-fid's own download location,
  ``/tmp/inception-2015-12-05.pt``, or ``$CBGAN_INCEPTION_DIR``). With internet, clean-fid downloads it.
* ``ClassifierFeatures``: the penultimate features of a classifier we trained (the annotator). Offline
  this is what we report, under the name "FD-<name>" (e.g. FD-annotator), never as "FID": the numbers
  are not comparable with published FIDs.

The distance itself is clean-fid's ``frechet_distance``; where SciPy no longer takes the ``disp`` argument
that clean-fid passes to ``sqrtm``, the same formula through SciPy directly.
"""
import os

import numpy as np
import torch

from cleanfid.fid import frechet_distance as _cleanfid_frechet

INCEPTION_FILE = "inception-2015-12-05.pt"


def frechet_distance(stats_a, stats_b):
    try:
        return float(_cleanfid_frechet(stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma))
    except TypeError as e:  # clean-fid calls sqrtm(..., disp=False), which newer SciPy removed
        if "disp" not in str(e):
            raise
        return _frechet_scipy(stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma)


def _frechet_scipy(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """clean-fid's formula and its singular-product fallback, with SciPy's current ``sqrtm``."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"frechet_distance: feature sizes differ: {mu1.shape} vs {mu2.shape}")
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class FeatureStats:
    """Mean and covariance of a feature set (float64)."""

    def __init__(self, feats):
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise ValueError(f"FeatureStats: need [N >= 2, D] features, got shape {feats.shape}")
        self.n = feats.shape[0]
        self.mu = feats.mean(axis=0)
        self.sigma = np.cov(feats, rowvar=False)

    def state_dict(self):
        return {"n": self.n, "mu": self.mu, "sigma": self.sigma}

    @classmethod
    def from_state_dict(cls, d):
        s = cls.__new__(cls)
        s.n, s.mu, s.sigma = d["n"], d["mu"], d["sigma"]
        return s


def _inception_dirs():
    dirs = [os.environ.get("CBGAN_INCEPTION_DIR"), "/tmp", os.path.expanduser("~/.cache/cbgan_ext")]
    return [d for d in dirs if d]


def inception_available():
    """The folder holding clean-fid's Inception weights, or None."""
    for d in _inception_dirs():
        if os.path.exists(os.path.join(d, INCEPTION_FILE)):
            return d
    return None


class InceptionFeatures:
    """clean-fid's Inception-v3 pool features (2048-d) of images in [-1, 1]."""

    name = "FID"

    def __init__(self, device="cpu", download=False):
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer
        path = inception_available()
        if path is None and not download:
            raise FileNotFoundError(
                f"InceptionFeatures: {INCEPTION_FILE} not found in {_inception_dirs()}; put clean-fid's "
                "Inception weights there (or set CBGAN_INCEPTION_DIR), or pass download=True when online")
        self.device = torch.device(device)
        self.model = InceptionV3W(path or "/tmp", download=path is None).to(self.device).eval()
        self.resize = build_resizer("clean")

    @torch.no_grad()
    def __call__(self, images):
        x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        arr = x.permute(0, 2, 3, 1).cpu().numpy()
        resized = np.stack([self.resize(a) for a in arr])
        t = torch.from_numpy(resized).permute(0, 3, 1, 2).float().to(self.device)
        return self.model(t).cpu().numpy()


class ClassifierFeatures:
    """Penultimate features of a trained classifier (its ``features(x)``), for an offline Fréchet
    distance named FD-<name>."""

    def __init__(self, classifier, name="annotator", image_size=None):
        self.classifier = classifier.eval()
        self.name = f"FD-{name}"
        self.image_size = image_size

    @torch.no_grad()
    def __call__(self, images):
        dev = next(self.classifier.parameters()).device
        x = images.to(dev)
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = torch.nn.functional.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return self.classifier.features(x).double().cpu().numpy()
