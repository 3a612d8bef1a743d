"""Long-tailed class counts and the deterministic subsets that realise them.

Profiles (K classes, n_max the scale, ρ the imbalance ratio):

* ``"exp"`` (LDAM, Cao et al. 2019; CBGAN): n_k = int(n_max · (1/ρ)^(k/(K−1))), class 0 the largest.
  CIFAR-10 (n_max 5000, ρ 100) gives [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50].
* ``"step"`` (LDAM): the first ⌊K/2⌋ classes keep n_max, the others int(n_max/ρ).
* ``"lognormal"``, ``"chi2"``, ``"pareto"`` (Softlabel-GAN, Katsumata et al. 2024, §5.1): K equal bins over
  [0, 3) of a lognormal (s = 3), [0, 3) of a χ² (3 degrees of freedom) or [1, 4) of a Pareto (shape 2);
  n_k = int(n_max · (F(e_{k+1}) − F(e_k))), then the bins are dealt to the classes in an order permuted by
  ``seed`` (the paper's code uses n_max = 5000 and seed 15: CIFAR-10 then holds 3208 images, 65–1720 a
  class). ρ plays no part: the distribution's shape fixes the imbalance.
* ``"bagan"`` (BAGAN, Mariani et al. 2018, §4): every class keeps n_max except ``minority_class`` (one class
  or several), which keeps int(n_max · (1 − drop_fraction)); without ``drop_fraction`` it keeps int(n_max/ρ)
  (dropping 97.5% is ρ = 40).

The images kept for class k are the first n_k of that class's indices after a shuffle by
``np.random.RandomState(seed)``, classes in order 0..K−1: LDAM's ``IMBALANCECIFAR10`` with
``rand_number=seed`` keeps the same images. ``selection="first"`` keeps the first n_k of each class in
dataset order instead, as the Softlabel-GAN code does, so that its subset is reproduced exactly.
"""
import math

import numpy as np

PROFILES = ("exp", "step", "lognormal", "chi2", "pareto", "bagan")
SOFTLABEL_PROFILES = ("lognormal", "chi2", "pareto")
SOFTLABEL_DEFAULT_N = 5000  # the paper's num_samples
SELECTIONS = ("shuffle", "first")


def _norm_cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _softlabel_cdf(profile, edges):
    """CDF at the bin edges; scipy's when present, else the closed forms (equal to ~1e-15)."""
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn here
        stats = None
    if profile == "lognormal":  # s = 3, scale 1
        if stats is not None:
            return stats.lognorm.cdf(edges, s=3)
        return np.array([0.0 if e <= 0 else _norm_cdf(math.log(e) / 3.0) for e in edges])
    if profile == "chi2":  # df = 3: F(x) = erf(sqrt(x/2)) - sqrt(2x/pi) exp(-x/2)
        if stats is not None:
            return stats.chi2.cdf(edges, df=3)
        return np.array([0.0 if e <= 0 else math.erf(math.sqrt(e / 2)) - math.sqrt(2 * e / math.pi) * math.exp(-e / 2)
                         for e in edges])
    if profile == "pareto":  # shape b = 2, support x >= 1: F(x) = 1 - x^-2
        if stats is not None:
            return stats.pareto.cdf(edges, b=2)
        return np.array([0.0 if e < 1 else 1.0 - e ** -2.0 for e in edges])
    raise AssertionError(profile)


_SOFTLABEL_RANGE = {"lognormal": (0.0, 3.0), "chi2": (0.0, 3.0), "pareto": (1.0, 4.0)}


def minority_classes(minority_class, num_classes, what="minority_class"):
    """The minority classes of the "bagan" profile as a sorted tuple: an int, or several (a list/tuple, or a
    string "3,5"); each in [0, K), no repeats."""
    v = minority_class
    if isinstance(v, str):
        try:
            v = [int(p) for p in v.split(",") if p.strip()]
        except ValueError:
            raise ValueError(f"{what}: minority_class must be class indices like '3' or '3,5', "
                             f"got {minority_class!r}") from None
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    if not items or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) < num_classes
                        for k in items):
        raise ValueError(f"{what}: minority_class must be in [0, {num_classes}) (one class or several), "
                         f"got {minority_class!r}")
    if len(set(int(k) for k in items)) != len(items):
        raise ValueError(f"{what}: minority_class lists a class twice: {minority_class!r}")
    return tuple(sorted(int(k) for k in items))


def subset_counts(split_counts, imbalance_ratio=1.0, profile="exp", n_max=None, *, seed=0, minority_class=0,
                  drop_fraction=None):
    """The per-class counts a long-tailed subset of a split with ``split_counts`` images a class keeps, or None
    when the whole split is used (ratio 1 with "exp"/"step" and no ``n_max``). ``n_max`` defaults to the
    smallest class (5000, the paper's, for the Softlabel-GAN profiles)."""
    if imbalance_ratio == 1.0 and profile in ("exp", "step") and n_max is None:
        return None
    if n_max is None:
        n_max = SOFTLABEL_DEFAULT_N if profile in SOFTLABEL_PROFILES else int(min(split_counts))
    return long_tailed_counts(n_max, len(split_counts), imbalance_ratio, profile, seed=seed,
                              minority_class=minority_class, drop_fraction=drop_fraction)


def long_tailed_counts(n_max, num_classes, imbalance_ratio=1.0, profile="exp", *, seed=0, minority_class=0,
                       drop_fraction=None):
    """Samples per class (a list of K ints) for a long-tailed profile; see the module docstring."""
    if isinstance(n_max, bool) or int(n_max) != n_max or n_max < 1:
        raise ValueError(f"long_tailed_counts: n_max must be a positive integer, got {n_max!r}")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"long_tailed_counts: num_classes must be a positive integer, got {num_classes!r}")
    n_max, K = int(n_max), int(num_classes)
    rho = float(imbalance_ratio)
    if not rho >= 1.0 or math.isinf(rho):  # also rejects NaN
        raise ValueError(f"long_tailed_counts: imbalance_ratio must be a finite number >= 1 "
                         f"(largest class / smallest class), got {imbalance_ratio!r}")
    if profile not in PROFILES:
        raise ValueError(f"long_tailed_counts: unknown profile {profile!r}; choose one of {PROFILES}")

    if profile == "exp":
        if K == 1:
            counts = [n_max]
        else:
            # LDAM's get_img_num_per_cls, term for term, so float rounding matches the published counts.
            imb_factor = 1.0 / rho
            counts = [int(n_max * imb_factor ** (k / (K - 1.0))) for k in range(K)]
    elif profile == "step":
        counts = [n_max] * (K // 2) + [int(n_max * (1.0 / rho))] * (K - K // 2)
    elif profile in SOFTLABEL_PROFILES:
        lo, hi = _SOFTLABEL_RANGE[profile]
        cdf = np.asarray(_softlabel_cdf(profile, np.linspace(lo, hi, K + 1)), dtype=np.float64)
        bins = (n_max * np.diff(cdf)).astype(np.int64)
        order = np.random.RandomState(seed).choice(np.arange(K), K, replace=False)
        counts = [int(c) for c in bins[order]]
    else:  # bagan
        minority = minority_classes(minority_class, K, "long_tailed_counts")
        if drop_fraction is None:
            keep = int(n_max / rho + 1e-9)
        else:
            if isinstance(drop_fraction, bool) or not isinstance(drop_fraction, (int, float)) \
                    or not 0.0 <= float(drop_fraction) < 1.0:
                raise ValueError(f"long_tailed_counts: drop_fraction must be in [0, 1), got {drop_fraction!r}")
            keep = int(n_max * (1.0 - float(drop_fraction)) + 1e-9)  # 6000 * 0.025 must give 150, not 149
        counts = [n_max] * K
        for k in minority:
            counts[k] = keep
    empty = [k for k, c in enumerate(counts) if c < 1]
    if empty:
        raise ValueError(f"long_tailed_counts: profile {profile!r} with n_max={n_max}, K={K}, imbalance_ratio={rho} "
                         f"leaves classes {empty} with no samples ({counts}); raise n_max or lower the imbalance")
    return counts


def long_tailed_indices(labels, counts, seed=0, selection="shuffle"):
    """Indices into ``labels`` keeping counts[k] samples of class k (LDAM's selection, or with
    ``selection="first"`` the first ones in dataset order; see the module doc).

    Returned class by class (class 0's indices first). Raises when a class has fewer samples than asked.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"long_tailed_indices: selection must be one of {SELECTIONS}, got {selection!r}")
    labels = np.asarray(labels)
    rs = np.random.RandomState(seed)
    out = []
    for k, n in enumerate(counts):
        idx = np.where(labels == k)[0]
        if n > len(idx):
            raise ValueError(f"long_tailed_indices: class {k} has {len(idx)} samples but {n} were requested; "
                             f"lower n_max (or the profile's scale) to at most what every class holds")
        if selection == "shuffle":
            rs.shuffle(idx)
        out.append(idx[:n])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def dataset_minority_classes(dataset_config):
    """The minority classes a dataset's config names: those of the "bagan" profile, none for the others."""
    c = dataset_config or {}
    return minority_classes(c.get("minority_class", 0), 10 ** 9) if c.get("profile") == "bagan" else ()
