"""Two regularizers from later long-tailed GAN work, composable with any method of the loop.

* ``GroupSpectralRegularizer`` (gSR; Rangwani et al., ECCV 2022): every class-conditional BatchNorm layer of G
  holds, per class, a gain and a bias vector of C numbers. Each is reshaped to an h × w matrix (h · w = C, h ≤ w
  the closest factors) and its largest singular value σ_max is estimated by power iteration with persistent
  vectors; λ · Σ_layers Σ_c w_c (σ_max(gain_c)² + σ_max(bias_c)²) / (layers · K) joins G's loss. The class
  weights w_c follow the effective number of samples (1 − βⁿ)/(1 − β) of each class, normalised so that they
  average 1 (β = 0: every class weighs 1), as the released code (val-iisc/gSRGAN) does.
* ``LeCamRegularizer`` (Tseng et al., CVPR 2021): EMA anchors of D's mean output on real and on generated
  images; λ · (mean(relu(D(x) − a_fake)²) + mean(relu(a_real − D(G(z)))²)) joins D's loss.

Where this follows the released gSR code and where not: the gain matrix is the learned deviation from a unit
gain (the released layers compute 1 + embedding; ours either 1 + W·y or an embedding initialised to 1, of which
the deviation is taken), power iteration starts from random unit vectors with 10× the iterations on the first
call, normalisation eps 1e-3, σ = uᵀ W v with u, v held fixed (gradient u vᵀ). The released code updates the
bias matrix's left vector from the gain matrix's right vector; here each matrix uses its own vectors, so σ of
the bias matrix is its own largest singular value.
"""
import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def closest_factors(n: int):
    """(h, w) with h · w = n, h ≤ w and h as large as possible: 256 → (16, 16), 96 → (8, 12), 7 → (1, 7)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"closest_factors: n must be >= 1, got {n}")
    h = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return h, n // h


def class_conditional_bn_layers(G: nn.Module) -> List[nn.Module]:
    """G's class-conditional BatchNorm layers, in module order: the modules with a ``class_gain_bias()`` method
    returning (gain deviations from 1 [K, C], biases [K, C]), as the package's two kinds have (a layer of your
    own joins gSR by defining it)."""
    return [m for m in G.modules() if callable(getattr(m, "class_gain_bias", None))]


def effective_number_class_weights(class_counts: Sequence[int], beta: float) -> torch.Tensor:
    """w_c ∝ 1 / ((1 − β^n_c)/(1 − β)), averaging 1 (the released gSR code's class weights); β = 0: all 1."""
    n = torch.tensor([float(c) for c in class_counts], dtype=torch.float64)
    if beta == 0:
        return torch.ones_like(n)
    inv = (1 - beta) / (1 - beta ** n)
    return inv * len(n) / inv.sum()


class GroupSpectralRegularizer(nn.Module):
    """gSR for a generator ``G`` with class-conditional BatchNorm: ``reg = GroupSpectralRegularizer(G, lam=0.5,
    class_counts=counts)``, then ``loss_g = loss_g + reg()`` each G step. ``reg.last_sigmas`` holds the latest
    σ_max per layer ([layers, K] for the gains and for the biases; for plots). Its state (the power-iteration
    vectors) is a ``state_dict``: checkpoint it with G to resume exactly."""

    def __init__(self, G: nn.Module, lam: float, class_counts: Optional[Sequence[int]] = None, beta: float = 0.99,
                 power_iterations: int = 4, seed: int = 0, eps: float = 1e-3):
        super().__init__()
        layers = class_conditional_bn_layers(G)
        if not layers:
            raise ValueError(f"gSR: the generator ({type(G).__name__}) has no class-conditional BatchNorm layer")
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"gSR: lam must be a finite number >= 0, got {lam!r}")
        if not 0 <= beta < 1:
            raise ValueError(f"gSR: beta must be in [0, 1), got {beta!r}")
        if int(power_iterations) < 1:
            raise ValueError(f"gSR: power_iterations must be >= 1, got {power_iterations!r}")
        self._layers = layers  # a plain list: the layers stay G's, not this module's
        self.lam, self.power_iterations, self.eps = float(lam), int(power_iterations), float(eps)
        K = layers[0].class_gain_bias()[0].shape[0]
        if class_counts is not None and len(class_counts) != K:
            raise ValueError(f"gSR: class_counts has {len(class_counts)} classes, the generator {K}")
        w = effective_number_class_weights(class_counts, beta) if class_counts is not None else torch.ones(K)
        ref = layers[0].class_gain_bias()[1]
        self.register_buffer("class_weights", w.to(device=ref.device, dtype=torch.float32))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        g = torch.Generator().manual_seed(int(seed))
        for i, layer in enumerate(layers):
            h, wd = closest_factors(layer.class_gain_bias()[0].shape[1])
            for part in ("gain", "bias"):
                self.register_buffer(f"u{i}_{part}", F.normalize(torch.randn(K, h, generator=g), dim=1).to(ref.device))
                self.register_buffer(f"v{i}_{part}", F.normalize(torch.randn(K, wd, generator=g), dim=1).to(ref.device))
        self.last_sigmas = None

    def _step(self, x, prev):
        """x normalised (eps as released); a class whose matrix is 0 (a fresh layer: unit gains, zero biases)
        keeps its previous vector rather than collapsing to 0 for good."""
        n = x.norm(dim=1, keepdim=True)
        return torch.where(n > 0, x / n.clamp(min=self.eps), prev)

    def sigmas(self):
        """σ_max of every class's gain and bias matrix, ([layers, K], [layers, K]), differentiable in G's weights;
        advances the power iteration (10× the iterations on the first call)."""
        iters = self.power_iterations * (10 if int(self.calls) == 0 else 1)
        out = {"gain": [], "bias": []}
        for i, layer in enumerate(self._layers):
            for part, M in zip(("gain", "bias"), layer.class_gain_bias()):
                u, v = getattr(self, f"u{i}_{part}"), getattr(self, f"v{i}_{part}")
                W = M.reshape(M.shape[0], u.shape[1], v.shape[1])
                with torch.no_grad():  # in W's precision; the vectors are kept in float32
                    Wd, uu, vv = W.detach(), u.to(W.dtype), v.to(W.dtype)
                    for _ in range(iters):
                        vv = self._step(torch.bmm(Wd.transpose(1, 2), uu.unsqueeze(2)).squeeze(2), vv)
                        uu = self._step(torch.bmm(Wd, vv.unsqueeze(2)).squeeze(2), uu)
                    u.copy_(uu)
                    v.copy_(vv)
                out[part].append((uu * torch.bmm(W, vv.unsqueeze(2)).squeeze(2)).sum(1))
        self.calls += 1
        return torch.stack(out["gain"]), torch.stack(out["bias"])

    def forward(self):
        sg, sb = self.sigmas()
        self.last_sigmas = (sg.detach(), sb.detach())
        w = self.class_weights.to(sg.dtype)
        return self.lam * ((sg.pow(2) + sb.pow(2)) * w).sum() / sg.numel()


class LeCamRegularizer(nn.Module):
    """LeCam regularization of D: ``lecam = LeCamRegularizer(lam=0.3)``, then in each D step
    ``loss_d = loss_d + lecam(d_real, d_fake, step)`` with D's raw outputs. The anchors are EMAs (``decay``) of
    D's mean outputs, taken as they are (decay 0) before ``start``; the term joins D's loss after ``start``,
    as in the released BigGAN code (google/lecam-gan). The anchors are in ``state_dict``."""

    def __init__(self, lam: float, decay: float = 0.9, start: int = 1000):
        super().__init__()
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"LeCam: lam must be a finite number >= 0, got {lam!r}")
        if not 0 <= decay < 1:
            raise ValueError(f"LeCam: decay must be in [0, 1), got {decay!r}")
        self.lam, self.decay, self.start = float(lam), float(decay), int(start)
        self.register_buffer("anchors", torch.zeros(2, dtype=torch.float64))  # EMA of mean D(real), D(fake)

    def forward(self, d_real: torch.Tensor, d_fake: torch.Tensor, step: int) -> torch.Tensor:
        if d_real.dim() < 1 or d_fake.dim() < 1:
            raise ValueError(f"LeCam: D outputs must be [B] or [B, 1], got {tuple(d_real.shape)} and "
                             f"{tuple(d_fake.shape)}")
        decay = self.decay if step >= self.start else 0.0
        with torch.no_grad():
            now = torch.stack([d_real.detach().double().mean(), d_fake.detach().double().mean()])
            self.anchors.mul_(decay).add_(now.to(self.anchors.device), alpha=1 - decay)
        if step <= self.start or self.lam == 0:
            return d_real.new_zeros(())
        a_real, a_fake = self.anchors.to(d_real.dtype)
        return self.lam * (F.relu(d_real - a_fake).pow(2).mean() + F.relu(a_real - d_fake).pow(2).mean())
