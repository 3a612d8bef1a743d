"""BAGAN's networks (Mariani et al. 2018), as the released code (IBM/BAGAN ``balancing_gan.py``) defines them,
with a ``width`` multiplier on every channel count for CPU runs.

* Decoder = G: dense 1024 (at every width) → dense 128·r² (ReLU, no bias; r = the size halved until ≤ 8: 7 for
  28, 8 for 32)
  → reshape → per doubling [nearest up ×2 → 5×5 conv, ReLU, no bias] with 256 channels while the map is under
  half the output size, then 128 → 2×2 conv ("same", padded right/bottom as Keras) to the image channels, tanh.
  No batch norm.
* Encoder and D share one trunk design (separate weights): 3×3 convs 32 (stride 2) → 64 → 128 (stride 2) →
  256, then [256 (stride 2) → 256] until the map is r×r; each LeakyReLU(0.3) and dropout 0.3; flattened.
  Encoder head: dense to the latent. D head: ``d_head`` of ``cbgan_ext.models.heads`` ("classes+1": K + 1 logits,
  the last one "fake"; "aux-classifier": ACGAN; "scalar": the single-class GAN). Spectral norm on D is optional
  (off by default, as the paper).
* BAGAN's G samples its latent from class-conditional Gaussians N(μ_c, Σ_c) fitted on the encoder's codes: the
  generator holds them as buffers (``set_class_gaussians``) and ``G(z, y)`` maps z ~ N(0, I) to μ_y + L_y z
  (L_y the Cholesky factor of Σ_y), so sampling, EMA, evaluation and checkpoints treat it like any conditional
  generator. ``decode(latent)`` is the bare decoder (the autoencoder stage).
* ACGAN's G (``num_classes`` > 0 without Gaussians) takes its class as ``class_input``: "multiply" (z times a
  learned class embedding, as Keras' ACGAN example that the released code starts from) or "concat" (z and the
  one-hot class side by side into the first dense layer, as Odena et al.). z ⊙ e_y carries the class only in
  its per-dimension scale, which G must learn to read; the one-hot is in the input's mean from the first step.

Init as Keras: Glorot-normal for G's convs (the released code's), Glorot-uniform elsewhere, zero biases.
"""
import torch
from torch import nn
import torch.nn.functional as F

from ..nn import SNConv2d
from ..nn.upsample_conv import UpsampleConv2d
from .heads import HeadedDiscriminator

LATENT = 100  # the released code's latent_size
LEAKY, DROPOUT = 0.3, 0.3  # Keras' LeakyReLU default slope; the released dropout
DENSE = 1024  # G's first dense layer


def _c(n, width):
    return max(1, int(round(n * width)))


def latent_resolution(image_size):
    """The released code's min_latent_res: the size halved until ≤ 8; the size must be r·2^n."""
    r = int(image_size)
    while r > 8:
        if r % 2:
            break
        r //= 2
    size = r
    while size < image_size:
        size *= 2
    if r < 2 or r > 8 or size != image_size:
        raise ValueError(f"BAGAN: image_size must be r*2^n with 2 <= r <= 8 (28, 32, 64, ...), got {image_size}")
    return r


class BAGANGenerator(nn.Module):
    """The decoder. ``gaussians=True``: BAGAN (latent from the class Gaussians); ``num_classes`` > 0 without
    them: ACGAN (its class by ``class_input``, "multiply" or "concat"); neither: the unconditional single-class
    GAN."""

    def __init__(self, z_dim=LATENT, channels=1, image_size=32, width=1.0, num_classes=0, gaussians=False,
                 class_input="multiply"):
        super().__init__()
        if class_input not in ("multiply", "concat"):
            raise ValueError(f"BAGANGenerator: class_input must be 'multiply' or 'concat', got {class_input!r}")
        r = latent_resolution(image_size)
        self.z_dim, self.r, self.num_classes = int(z_dim), r, int(num_classes)
        self.gaussians = bool(gaussians)
        self.concat = class_input == "concat" and self.num_classes > 0 and not self.gaussians
        if self.gaussians and self.num_classes < 1:
            raise ValueError("BAGANGenerator: class Gaussians need num_classes >= 1")
        c0 = _c(128, width)
        self.c0 = c0
        # The released 1024 units at every width: the layer is cheap, so the width multiplier (for speed) leaves it.
        z_in = z_dim + (self.num_classes if self.concat else 0)
        self.dense = nn.Sequential(nn.Linear(z_in, DENSE, bias=False), nn.ReLU(inplace=True),
                                   nn.Linear(DENSE, c0 * r * r, bias=False), nn.ReLU(inplace=True))
        layers, res, cin = [], r, c0
        while res < image_size:
            cout = _c(256, width) if res < image_size / 2 else _c(128, width)
            # nearest ×2 then 5×5 conv as one module (2.8× fewer multiply-adds); the Identity keeps the
            # parameter names of the released layout (upsample, conv, ReLU)
            layers += [nn.Identity(), UpsampleConv2d(cin, cout, 5, bias=False), nn.ReLU(inplace=True)]
            res, cin = res * 2, cout
        self.blocks = nn.Sequential(*layers)
        self.out = nn.Conv2d(cin, channels, 2, 1, 0, bias=False)
        if self.gaussians:
            self.register_buffer("class_mean", torch.zeros(self.num_classes, self.z_dim))
            self.register_buffer("class_chol", torch.eye(self.z_dim).repeat(self.num_classes, 1, 1))
        elif self.num_classes and not self.concat:
            self.embed = nn.Embedding(self.num_classes, self.z_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
        if not self.gaussians and self.num_classes and not self.concat:
            nn.init.xavier_normal_(self.embed.weight)

    @torch.no_grad()
    def set_class_gaussians(self, means, chols):
        """means [K, z], Cholesky factors [K, z, z] of the class covariances."""
        self.class_mean.copy_(means)
        self.class_chol.copy_(chols)

    def decode(self, latent):
        h = self.dense(latent).view(latent.shape[0], self.c0, self.r, self.r)
        h = self.blocks(h)
        return torch.tanh(self.out(F.pad(h, (0, 1, 0, 1))))

    def forward(self, z, y=None):
        if self.num_classes:
            if y is None or y.dtype != torch.int64 or y.shape != (z.shape[0],):
                got = None if y is None else (y.dtype, tuple(y.shape))
                raise ValueError(f"BAGANGenerator: this conditional generator needs labels y int64 [{z.shape[0]}], "
                                 f"got {got}")
            if self.gaussians:
                z = self.class_mean[y] + torch.bmm(self.class_chol[y], z.unsqueeze(-1)).squeeze(-1)
            elif self.concat:
                z = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], 1)
            else:
                z = z * self.embed(y)
        elif y is not None:
            raise ValueError("BAGANGenerator: unconditional generator (num_classes=0) given labels y")
        return self.decode(z)


class BAGANTrunk(nn.Module):
    """The convolutional trunk shared by the encoder and D (separate weights), flattened."""

    def __init__(self, channels=1, image_size=32, width=1.0, spectral_norm=False):
        super().__init__()
        r = latent_resolution(image_size)
        conv = SNConv2d if spectral_norm else nn.Conv2d
        plan = [(_c(32, width), 2), (_c(64, width), 1), (_c(128, width), 2), (_c(256, width), 1)]
        res = -(-image_size // 4)
        while res > r:
            plan += [(_c(256, width), 2), (_c(256, width), 1)]
            res = -(-res // 2)
        layers, cin = [], channels
        for cout, stride in plan:
            layers += [conv(cin, cout, 3, stride, 1), nn.LeakyReLU(LEAKY, inplace=True), nn.Dropout(DROPOUT)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.feature_dim = cin * res * res
        for m in self.modules():
            w = getattr(m, "weight_orig", None)
            if w is None and isinstance(m, nn.Conv2d):
                w = m.weight
            if isinstance(w, torch.Tensor):
                nn.init.xavier_uniform_(w)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.body(x).flatten(1)


class BAGANEncoder(nn.Module):
    """The autoencoder's encoder E: trunk → dense to the latent (linear)."""

    def __init__(self, channels=1, image_size=32, width=1.0, z_dim=LATENT, spectral_norm=False):
        super().__init__()
        self.trunk = BAGANTrunk(channels, image_size, width, spectral_norm)
        self.linear = nn.Linear(self.trunk.feature_dim, z_dim)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return self.linear(self.trunk(x))


class BAGANDiscriminator(HeadedDiscriminator):
    """The trunk, then ``d_head``; ``trunk`` takes the encoder's weights (BAGAN's initialisation)."""

    def __init__(self, channels=1, image_size=32, width=1.0, spectral_norm=False, d_head="classes+1", num_classes=0):
        super().__init__()
        self.trunk = BAGANTrunk(channels, image_size, width, spectral_norm)
        self._make_head(spectral_norm, self.trunk.feature_dim, d_head, num_classes)
        for m in (getattr(self, "linear", None), getattr(self, "aux", None)):
            if m is not None:
                nn.init.xavier_uniform_(getattr(m, "weight_orig", m.weight))
                nn.init.zeros_(m.bias)

    def features(self, x):
        return self.trunk(x)


__all__ = ["BAGANGenerator", "BAGANEncoder", "BAGANTrunk", "BAGANDiscriminator", "latent_resolution"]
