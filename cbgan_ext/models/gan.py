"""GAN architectures of the CBGAN supplementary (Tables 2-5), spectrally normalised with cbgan_ext's
fused layers.

* SNDCGAN at 32×32 (Tables 2-3; StudioGAN's DCGAN, which the official code uses).
* SNResGAN at 32×32 (Miyato et al. 2018's CIFAR networks, which the supplementary names for 32×32) and
  at 64×64 (Tables 4-5).

``width`` multiplies every channel count (1.0 = the paper's), so CPU runs can stay small; ``channels``
is 1 or 3. Discriminators end in a global sum pooling and return a logit [B] (unconditional); they expose
``features(x)`` (the pooled [B, C] vector) for projection heads.
"""
import torch
from torch import nn
import torch.nn.functional as F

from ..nn import SNConv2d, SNConvTranspose2d, SNLinear


def _c(n, width):
    return max(1, int(round(n * width)))


def _conv(sn, *args, **kw):
    return SNConv2d(*args, **kw) if sn else nn.Conv2d(*args, **kw)


def _linear(sn, *args, **kw):
    return SNLinear(*args, **kw) if sn else nn.Linear(*args, **kw)


# ---- SNDCGAN (Tables 2-3) ----------------------------------------------------------------------------


class DCGANGenerator(nn.Module):
    """FC(z, 4·4·512) → 3 × [TCONV(4, 2), BN, LReLU(0.1)] → CONV(3, 1) → tanh (Table 2)."""

    def __init__(self, z_dim=128, channels=3, width=1.0, spectral_norm=False):
        super().__init__()
        dims = [_c(512, width), _c(256, width), _c(128, width), _c(64, width)]
        self.z_dim, self.dims = z_dim, dims
        self.linear = _linear(spectral_norm, z_dim, dims[0] * 16)
        blocks = []
        for cin, cout in zip(dims[:-1], dims[1:]):
            tconv = (SNConvTranspose2d if spectral_norm else nn.ConvTranspose2d)(cin, cout, 4, 2, 1)
            blocks += [tconv, nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.out = _conv(spectral_norm, dims[-1], channels, 3, 1, 1)

    def forward(self, z):
        h = self.linear(z).view(z.shape[0], self.dims[0], 4, 4)
        return torch.tanh(self.out(self.blocks(h)))


class DCGANDiscriminator(nn.Module):
    """3 × [CONV(3, 1), LReLU, CONV(4, 2), LReLU] → CONV(3, 1), LReLU → global sum pool → FC (Table 3)."""

    def __init__(self, channels=3, width=1.0, spectral_norm=True):
        super().__init__()
        ins = [channels, _c(64, width), _c(128, width)]
        outs = [_c(64, width), _c(128, width), _c(256, width)]
        layers = []
        for cin, cout in zip(ins, outs):
            layers += [_conv(spectral_norm, cin, cout, 3, 1, 1), nn.LeakyReLU(0.1, inplace=True),
                       _conv(spectral_norm, cout, cout, 4, 2, 1), nn.LeakyReLU(0.1, inplace=True)]
        layers += [_conv(spectral_norm, outs[-1], _c(512, width), 3, 1, 1), nn.LeakyReLU(0.1, inplace=True)]
        self.body = nn.Sequential(*layers)
        self.feature_dim = _c(512, width)
        self.linear = _linear(spectral_norm, self.feature_dim, 1)

    def features(self, x):
        return self.body(x).sum(dim=(2, 3))

    def forward(self, x):
        return self.linear(self.features(x)).squeeze(1)


# ---- SNResGAN (Tables 4-5; Miyato et al. at 32×32) ---------------------------------------------------


class GenBlock(nn.Module):
    """Gulrajani et al.: BN, ReLU, up ×2, CONV3, BN, ReLU, CONV3; shortcut up ×2, CONV1."""

    def __init__(self, cin, cout, sn=False):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = _conv(sn, cin, cout, 3, 1, 1)
        self.conv2 = _conv(sn, cout, cout, 3, 1, 1)
        self.shortcut = _conv(sn, cin, cout, 1, 1, 0)

    def forward(self, x):
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
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

    def __init__(self, z_dim=128, channels=3, image_size=32, width=1.0, spectral_norm=False):
        super().__init__()
        if image_size == 64:
            dims = [_c(c, width) for c in (1024, 512, 256, 128, 64)]
        elif image_size == 32:
            dims = [_c(256, width)] * 4
        else:
            raise ValueError(f"ResNetGenerator: image_size must be 32 or 64, got {image_size}")
        self.z_dim, self.dims = z_dim, dims
        self.linear = _linear(spectral_norm, z_dim, dims[0] * 16)
        self.blocks = nn.Sequential(*[GenBlock(a, b, spectral_norm) for a, b in zip(dims[:-1], dims[1:])])
        self.bn = nn.BatchNorm2d(dims[-1])
        self.out = _conv(spectral_norm, dims[-1], channels, 3, 1, 1)

    def forward(self, z):
        h = self.blocks(self.linear(z).view(z.shape[0], self.dims[0], 4, 4))
        return torch.tanh(self.out(F.relu(self.bn(h))))


class ResNetDiscriminator(nn.Module):
    """64×64: DIS_BLOCK (3→64→128→256→512, down) + (512→1024, no down), ReLU, GSP, FC (Table 5).
    32×32: DIS_BLOCK(3, 128, down) + (128, 128, down) + 2 × (128, 128), ReLU, GSP, FC (Miyato et al.)."""

    def __init__(self, channels=3, image_size=32, width=1.0, spectral_norm=True):
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
        self.feature_dim = dims[-1]
        self.linear = _linear(spectral_norm, dims[-1], 1)

    def features(self, x):
        return F.relu(self.blocks(x)).sum(dim=(2, 3))

    def forward(self, x):
        return self.linear(self.features(x)).squeeze(1)


ARCHITECTURES = ("sndcgan", "snresgan")


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


def build_gan(arch, *, channels=3, image_size=32, width=1.0, z_dim=128, g_spectral_norm=False, init="ortho"):
    """(generator, discriminator) for ``arch`` in ARCHITECTURES; init "ortho" (StudioGAN's) or "default"."""
    if arch == "sndcgan":
        if image_size != 32:
            raise ValueError(f"build_gan: sndcgan is defined at 32×32, got image_size={image_size}")
        G, D = DCGANGenerator(z_dim, channels, width, g_spectral_norm), DCGANDiscriminator(channels, width)
    elif arch == "snresgan":
        G = ResNetGenerator(z_dim, channels, image_size, width, g_spectral_norm)
        D = ResNetDiscriminator(channels, image_size, width)
    else:
        raise ValueError(f"build_gan: unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    if init == "ortho":
        init_orthogonal_(G)
        init_orthogonal_(D)
    return G, D
