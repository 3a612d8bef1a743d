"""Pure-PyTorch versions of every fused op: the test oracle and the benchmark baseline.

Written the way the papers' released code writes them (eager, unfused), not tuned.
"""
import torch

# ---- class balancing regularizer -----------------------------------------------------------------


def class_balancing_loss(logits, class_weights):
    """CBGAN Eq. 7 as the official code computes it: sum(w * mean(softmax) * log(mean(softmax)))."""
    p = torch.softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=1)
    mean_p = p.mean(dim=0)
    return torch.sum(class_weights.to(mean_p.dtype) * mean_p * torch.log(mean_p))


def argmax_counts(logits):
    return torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1])

# ---- diff augment ----------------------------------------------------------------------------------

# ---- spectral norm ---------------------------------------------------------------------------------

# ---- soft-label projection -------------------------------------------------------------------------


def soft_label_projection(h, class_embedding, y):
    """out_b = Σ_k y_bk ⟨h_b, E_k⟩ as projection discriminators write it: ((y @ E) * h).sum(1) for soft
    labels [B, K] (Softlabel-GAN's bias-free linear map of y), and the embedding gather
    (E[y] * h).sum(1) for hard labels [B] int64 (the cGAN projection)."""
    if not y.is_floating_point():
        return (class_embedding[y] * h).sum(1)
    return ((y @ class_embedding) * h).sum(1)
