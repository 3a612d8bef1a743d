"""ProjectionHead: a projection discriminator's head for hard or soft labels (Softlabel-GAN, Fig. 3).

    head = ProjectionHead(in_features=512, num_classes=10)
    d_out = head(phi_x, y)          # y: hard labels [B] int64 or soft labels [B, K]

D(x, y) = ψ(φ(x)) + φ(x)ᵀ V y: ψ is a linear layer to one logit, V [L, K] the weight of a bias-free
linear map of the label vector (the paper replaces the cGAN's embedding lookup by it so that a classifier's
softmax can be fed). For a one-hot y both give the same number, and hard labels take the gather path.
"""
from torch import nn

from ..ops import soft_label_projection
from .spectral_norm import SNLinear


class ProjectionHead(nn.Module):
    """The projection discriminator's head (Miyato & Koyama 2018): ψ(h) + Σ_k y_k ⟨h, E_k⟩ for features h
    [B, L] and hard labels [B] or soft labels [B, K] (Softlabel-GAN), on the fused projection op; ψ and E are
    spectrally normalised unless ``spectral_norm=False``."""

    def __init__(self, in_features: int, num_classes: int, spectral_norm: bool = True):
        super().__init__()
        if int(in_features) < 1 or int(num_classes) < 1:
            raise ValueError(f"ProjectionHead: in_features and num_classes must be >= 1, got {in_features} "
                             f"and {num_classes}")
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        self.spectral_norm = bool(spectral_norm)
        linear = SNLinear if self.spectral_norm else nn.Linear
        self.psi = linear(self.in_features, 1)
        self.embed = linear(self.num_classes, self.in_features, bias=False)  # V [L, K]

    def extra_repr(self):
        return f"in_features={self.in_features}, num_classes={self.num_classes}, spectral_norm={self.spectral_norm}"

    @property
    def class_embedding(self):
        """E = Vᵀ [K, L]; spectrally normalised (σ from the current u, v, no power iteration) when the head is."""
        if self.spectral_norm:
            return self.embed.normalized_weight().t()
        return self.embed.weight.t()

    def forward(self, h, y):
        """h [B, in_features]; y hard labels [B] int64 or soft labels [B, num_classes]. Returns [B]."""
        if h.dim() != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"ProjectionHead: h must be [B, {self.in_features}], got {tuple(h.shape)}")
        psi = self.psi(h).squeeze(1)
        # Under autocast ψ(h) and h may be half while V is float32: the fused op wants one dtype.
        # V is read directly (not through embed.forward): run the layer's SN step (power iteration in training).
        V = self.embed.forward_weight() if self.spectral_norm else self.embed.weight
        E = V.t().to(h.dtype)
        if y.is_floating_point():
            y = y.to(h.dtype)
        return psi + soft_label_projection(h, E, y)
