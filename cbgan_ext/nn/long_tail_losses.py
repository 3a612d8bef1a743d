"""Classifier losses for long-tailed training.

* ``"ce"``: cross-entropy.
* ``"drw"``: cross-entropy with deferred re-weighting (Cao et al. 2019 §3.3): from ``drw_epoch`` on, class k is
  weighted by the inverse effective number (1 − β)/(1 − β^{n_k}) (Cui et al. 2019), β = 0.9999, normalised
  to sum to K; torch's weighted mean divides by the summed weights of the batch, as the released code does.
* ``"ldam-drw"``: LDAM (Cao et al. 2019, Eq. 13): cosine logits z, margin Δ_y ∝ n_y^{−1/4} (largest 0.5)
  taken off the true class, s·(z − Δ_y e_y) into (re-weighted after ``drw_epoch``) cross-entropy, s = 30.
  The model's cosine head already multiplies by s (``CifarResNet(normed_linear=True, logit_scale=30)``, so
  its softmax at inference is the one trained), hence this loss receives s·z and subtracts s·Δ_y.
* ``"softlabel-ce"``: Softlabel-GAN's classifier objective CE − 0.3·H(softmax(z)) (Katsumata et al. 2024
  §4.2): the entropy bonus keeps the soft labels from collapsing to one-hot.
"""
import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "drw", "ldam-drw", "softlabel-ce")


def effective_number_weights(class_counts, beta=0.9999):
    """(1 − β)/(1 − β^{n_k}), scaled to sum to K (Cui et al. 2019, as LDAM-DRW's train.py)."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    if n.dim() != 1 or (n <= 0).any():
        raise ValueError(f"effective_number_weights: class_counts must be positive, got {class_counts}")
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w / w.sum() * len(n)).to(torch.float32)


def ldam_margins(class_counts, max_margin=0.5):
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    m = 1.0 / n.pow(0.25)
    return (m * (max_margin / m.max())).to(torch.float32)


class LongTailLoss(nn.Module):
    """One of ``LOSSES``; call ``set_epoch(e)`` each epoch so DRW switches its weights on at ``drw_epoch``."""

    def __init__(self, kind, class_counts, drw_epoch=None, beta=0.9999, max_margin=0.5, scale=30.0,
                 entropy_weight=0.3):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"LongTailLoss: unknown loss {kind!r}; choose one of {LOSSES}")
        if kind in ("drw", "ldam-drw") and drw_epoch is None:
            raise ValueError(f"LongTailLoss: {kind} needs drw_epoch (the epoch re-weighting starts)")
        self.kind = kind
        self.drw_epoch = drw_epoch
        self.scale = float(scale)
        self.entropy_weight = float(entropy_weight)
        self.register_buffer("drw_weights", effective_number_weights(class_counts, beta))
        self.register_buffer("margins", ldam_margins(class_counts, max_margin))
        self.register_buffer("active_weights", torch.ones_like(self.drw_weights))
        self.reweighting = False

    def set_epoch(self, epoch):
        self.reweighting = self.kind in ("drw", "ldam-drw") and epoch >= self.drw_epoch
        self.active_weights.copy_(self.drw_weights if self.reweighting else torch.ones_like(self.drw_weights))

    def forward(self, logits, target):
        weight = self.active_weights if self.reweighting else None
        if self.kind == "ldam-drw":
            margin = self.margins.to(logits.dtype)[target]
            logits = logits - F.one_hot(target, logits.shape[1]).to(logits.dtype) * (self.scale * margin)[:, None]
            return F.cross_entropy(logits, target, weight=weight)
        loss = F.cross_entropy(logits, target, weight=weight)
        if self.kind == "softlabel-ce":
            logp = F.log_softmax(logits, dim=1)
            entropy = -(logp.exp() * logp).sum(1).mean()
            loss = loss - self.entropy_weight * entropy
        return loss

    def extra_repr(self):
        return f"kind={self.kind!r}, drw_epoch={self.drw_epoch}, reweighting={self.reweighting}"
