"""Class balance of generated samples, as the CBGAN code measures it."""
import numpy as np
import torch

KL_EPS = 1e-5  # the CBGAN code's epsilon, added to both distributions before the log


def class_histogram(labels, num_classes):
    """Counts per class [K] (int64) of a 1-D tensor of labels."""
    labels = torch.as_tensor(labels).reshape(-1).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"class_histogram: labels must be in [0, {num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return torch.bincount(labels.cpu(), minlength=num_classes)


def kl_to_uniform(hist):
    """KL(P || U) in nats of the normalised histogram P and the uniform U over its classes, with the CBGAN
    code's eps = 1e-5 added to both (weight_regularizer.KL): 0 for a perfectly balanced histogram."""
    p = np.asarray(torch.as_tensor(hist, dtype=torch.float64).cpu(), dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or p.sum() <= 0:
        raise ValueError(f"kl_to_uniform: expected a non-empty 1-D histogram with a positive total, got {p!r}")
    p = p / p.sum() + KL_EPS
    q = np.full_like(p, 1.0 / p.size) + KL_EPS
    return float(np.sum(p * np.log(p / q)))
