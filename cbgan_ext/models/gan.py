"""GAN architectures of the CBGAN supplementary (Tables 2-5), spectrally normalised with cbgan_ext's
fused layers.

* SNDCGAN at 32×32 (Tables 2-3; StudioGAN's DCGAN, which the official code uses).
* SNResGAN at 32×32 (Miyato et al. 2018's CIFAR networks, which the supplementary names for 32×32) and
  at 64×64 (Tables 4-5).

``width`` multiplies every channel count (1.0 = the paper's), so CPU runs can stay small; ``channels``
is 1 or 3.

Conditioning: every network takes it, ``G(z, y=None)`` and ``D(x, y=None)``. With ``num_classes > 0`` the
generator's BatchNorms become conditional (class-dependent gain and bias, Miyato & Koyama 2018) and ``y``
(int64 [B]) is required. Discriminators end in a global sum pooling, expose ``features(x)`` (the pooled
[B, C] vector) and one head chosen by ``d_head``:

* ``"scalar"``: a logit [B] (unconditional; ``y`` is ignored);
* ``"projection"``: ψ(h) + hᵀ V y through :class:`cbgan_ext.nn.ProjectionHead`; ``y`` hard [B] or soft [B, K];
* ``"classes+1"``: K + 1 logits [B, K+1], the last one "fake" (BAGAN);
* ``"aux-classifier"``: (logit [B], class logits [B, K]) (ACGAN).
"""

import torch
from torch import nn
import torch.nn.functional as F

from ..nn import SNConv2d, SNConvTranspose2d
from .heads import HeadedDiscriminator, linear


def _c(n, width):
    return max(1, int(round(n * width)))


def _conv(sn, *args, **kw):
    return SNConv2d(*args, **kw) if sn else nn.Conv2d(*args, **kw)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm2d without affine parameters, then a per-class gain and bias (γ_y initialised to 1, β_y to 0)."""

    def __init__(self, num_features, num_classes):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x, y):
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]

    def class_gain_bias(self):
        """(each class's gain deviation from 1, its bias), [K, C] each, differentiable (for gSR)."""
        return self.gain.weight - 1.0, self.bias.weight


def _bn(num_features, num_classes):
    return ConditionalBatchNorm2d(num_features, num_classes) if num_classes else nn.BatchNorm2d(num_features)


def _norm(bn, x, y):
    return bn(x, y) if isinstance(bn, ConditionalBatchNorm2d) else bn(x)


def _check_condition(module, y, batch):
    if module.num_classes:
        if y is None:
            raise ValueError(f"{type(module).__name__}: this conditional generator needs class labels y [B] int64")
        if y.dtype != torch.int64 or y.shape != (batch,):
            raise ValueError(f"{type(module).__name__}: y must be int64 [{batch}], got {y.dtype} {tuple(y.shape)}")
    elif y is not None:
        raise ValueError(f"{type(module).__name__}: unconditional generator (num_classes=0) given labels y")


# ---- SNDCGAN (Tables 2-3) ----------------------------------------------------------------------------


class DCGANGenerator(nn.Module):
    """FC(z, 4·4·512) → 3 × [TCONV(4, 2), BN, LReLU(0.1)] → CONV(3, 1) → tanh (Table 2)."""

    def __init__(self, z_dim=128, channels=3, width=1.0, spectral_norm=False, num_classes=0):
        super().__init__()
        dims = [_c(512, width), _c(256, width), _c(128, width), _c(64, width)]
        self.z_dim, self.dims, self.num_classes = z_dim, dims, int(num_classes)
        self.linear = linear(spectral_norm, z_dim, dims[0] * 16)
        blocks = []
        for cin, cout in zip(dims[:-1], dims[1:]):
            tconv = (SNConvTranspose2d if spectral_norm else nn.ConvTranspose2d)(cin, cout, 4, 2, 1)
            blocks += [tconv, _bn(cout, self.num_classes), nn.LeakyReLU(0.1, inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.out = _conv(spectral_norm, dims[-1], channels, 3, 1, 1)

    def forward(self, z, y=None):
        _check_condition(self, y, z.shape[0])
        h = self.linear(z).view(z.shape[0], self.dims[0], 4, 4)
        for m in self.blocks:
            h = _norm(m, h, y)
        return torch.tanh(self.out(h))


class DCGANDiscriminator(HeadedDiscriminator):
    """3 × [CONV(3, 1), LReLU, CONV(4, 2), LReLU] → CONV(3, 1), LReLU → global sum pool → FC (Table 3)."""

    def __init__(self, channels=3, width=1.0, spectral_norm=True, d_head="scalar", num_classes=0):
        super().__init__()
        ins = [channels, _c(64, width), _c(128, width)]
        outs = [_c(64, width), _c(128, width), _c(256, width)]
        layers = []
        for cin, cout in zip(ins, outs):
            layers += [_conv(spectral_norm, cin, cout, 3, 1, 1), nn.LeakyReLU(0.1, inplace=True),
                       _conv(spectral_norm, cout, cout, 4, 2, 1), nn.LeakyReLU(0.1, inplace=True)]
        layers += [_conv(spectral_norm, outs[-1], _c(512, width), 3, 1, 1), nn.LeakyReLU(0.1, inplace=True)]
        self.body = nn.Sequential(*layers)
        self._make_head(spectral_norm, _c(512, width), d_head, num_classes)

    def features(self, x):
        return self.body(x).sum(dim=(2, 3))


# ---- SNResGAN (Tables 4-5; Miyato et al. at 32×32) ---------------------------------------------------


class GenBlock(nn.Module):
    """Gulrajani et al.: BN, ReLU, up ×2, CONV3, BN, ReLU, CONV3; shortcut up ×2, CONV1."""

    def __init__(self, cin, cout, sn=False, num_classes=0):
        super().__init__()
        self.bn1, self.bn2 = _bn(cin, num_classes), _bn(cout, num_classes)
        self.conv1 = _conv(sn, cin, cout, 3, 1, 1)
        self.conv2 = _conv(sn, cout, cout, 3, 1, 1)
        self.shortcut = _conv(sn, cin, cout, 1, 1, 0)

    def forward(self, x, y=None):
        h = F.interpolate(F.relu(_norm(self.bn1, x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(_norm(self.bn2, self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DisBlock(nn.Module):
    """ReLU, CONV3, ReLU, CONV3, (avg-pool); shortcut CONV1, (avg-pool). The first block (optimized=True)
    starts without the ReLU and pools its shortcut before the 1×1 conv, as Miyato et al."""

    def __init__(self, cin, cout, downsample=True, optimized=False, sn=True):
        super().__init__()
        self.downsample, self.optimized = downsample, optimized
        self.conv1 = _conv(sn, cin, cout, 3, 1, 1)
        self.conv2 = _conv(sn, cout, cout, 3, 1, 1)
        self.shortcut = _conv(sn, cin, cout, 1, 1, 0) if (cin != cout or downsample) else None

    def forward(self, x):
        h = x if self.optimized else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.optimized:
            s = self.shortcut(F.avg_pool2d(s, 2))
        elif self.shortcut is not None:
            s = self.shortcut(s)
            if self.downsample:
                s = F.avg_pool2d(s, 2)
        return h + s


class ResNetGenerator(nn.Module):
    """64×64: FC(z, 4·4·1024) → GEN_BLOCK ×4 (1024→512→256→128→64) → BN, ReLU, CONV3 → tanh (Table 4).
    32×32: FC(z, 4·4·256) → GEN_BLOCK(256, 256) ×3 → BN, ReLU, CONV3 → tanh (Miyato et al.)."""

    def __init__(self, z_dim=128, channels=3, image_size=32, width=1.0, spectral_norm=False, num_classes=0):
        super().__init__()
        if image_size == 64:
            dims = [_c(c, width) for c in (1024, 512, 256, 128, 64)]
        elif image_size == 32:
            dims = [_c(256, width)] * 4
        else:
            raise ValueError(f"ResNetGenerator: image_size must be 32 or 64, got {image_size}")
        self.z_dim, self.dims, self.num_classes = z_dim, dims, int(num_classes)
        self.linear = linear(spectral_norm, z_dim, dims[0] * 16)
        self.blocks = nn.Sequential(*[GenBlock(a, b, spectral_norm, self.num_classes)
                                      for a, b in zip(dims[:-1], dims[1:])])
        self.bn = _bn(dims[-1], self.num_classes)
        self.out = _conv(spectral_norm, dims[-1], channels, 3, 1, 1)

    def forward(self, z, y=None):
        _check_condition(self, y, z.shape[0])
        h = self.linear(z).view(z.shape[0], self.dims[0], 4, 4)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.out(F.relu(_norm(self.bn, h, y))))


class ResNetDiscriminator(HeadedDiscriminator):
    """64×64: DIS_BLOCK (3→64→128→256→512, down) + (512→1024, no down), ReLU, GSP, FC (Table 5).
    32×32: DIS_BLOCK(3, 128, down) + (128, 128, down) + 2 × (128, 128), ReLU, GSP, FC (Miyato et al.)."""

    def __init__(self, channels=3, image_size=32, width=1.0, spectral_norm=True, d_head="scalar", num_classes=0):
        super().__init__()
        if image_size == 64:
            dims = [_c(c, width) for c in (64, 128, 256, 512, 1024)]
            downs = [True, True, True, True, False]
        elif image_size == 32:
            dims = [_c(128, width)] * 4
            downs = [True, True, False, False]
        else:
            raise ValueError(f"ResNetDiscriminator: image_size must be 32 or 64, got {image_size}")
        blocks, cin = [], channels
        for i, (cout, down) in enumerate(zip(dims, downs)):
            blocks.append(DisBlock(cin, cout, down, optimized=(i == 0), sn=spectral_norm))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self._make_head(spectral_norm, dims[-1], d_head, num_classes)

    def features(self, x):
        return F.relu(self.blocks(x)).sum(dim=(2, 3))


ARCHITECTURES = ("sndcgan", "snresgan", "biggan", "bagan")


def init_orthogonal_(model):
    """StudioGAN's "ortho" initialisation (the official CBGAN code's): orthogonal conv/linear weights, zero
    biases. PyTorch's default init lets the SN discriminator overpower the generator within ~50 steps."""
    for m in model.modules():
        w = getattr(m, "weight_orig", None)
        if w is None and isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            w = m.weight
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            nn.init.orthogonal_(w)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return model
