"""SSIM summaries for BAGAN's variability measures, on torchmetrics' SSIM (Wang et al. 2004: Gaussian window
11, σ 1.5, K1 0.01, K2 0.03), images in [−1, 1] (data range 2). torchmetrics is maintained, batched and
torch-only; it is an optional dependency (``pip install .[metrics]``)."""
import torch


def _ssim_fn():
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError as e:
        raise ImportError("SSIM needs torchmetrics (pip install torchmetrics, or pip install .[metrics])") from e
    return structural_similarity_index_measure


def ssim(a, b):
    """Per-pair SSIM of two equally sized batches [N, C, H, W] in [−1, 1]: a tensor [N] (float64)."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim: two batches [N, C, H, W] of one shape expected, got {tuple(a.shape)} {tuple(b.shape)}")
    fn = _ssim_fn()  # float32: float64 is ~12x slower on CPU for a difference far below the spread between pairs
    return fn(a.float(), b.float(), data_range=2.0, reduction="none").double()


def mean_pair_ssim(images, n_pairs, generator=None):
    """Mean SSIM of ``n_pairs`` random pairs of distinct images; None for fewer than 2 images."""
    n = len(images)
    if n < 2:
        return None
    i = torch.randint(0, n, (n_pairs,), generator=generator)
    j = (i + torch.randint(1, n, (n_pairs,), generator=generator)) % n  # never i itself
    return float(ssim(images[i], images[j]).mean())


def nearest_ssim(queries, pool, exclude_self=False, batch=1024):
    """For each query, the highest SSIM to an image of ``pool`` ([Q]); with ``exclude_self`` the queries are
    the first Q images of the pool and each skips itself."""
    best = torch.full((len(queries),), -float("inf"), dtype=torch.float64)
    for q in range(len(queries)):
        for s in range(0, len(pool), batch):
            p = pool[s:s + batch]
            v = ssim(queries[q:q + 1].expand_as(p), p)
            if exclude_self and s <= q < s + len(p):
                v[q - s] = -float("inf")
            best[q] = max(best[q], v.max())
    return best


def mean_nearest_ssim(queries, pool, exclude_self=False):
    if len(queries) == 0 or len(pool) < (2 if exclude_self else 1):
        return None
    return float(nearest_ssim(queries, pool, exclude_self).mean())
