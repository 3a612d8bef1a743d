"""BigGAN with the blocks and 32×32 configuration the Softlabel-GAN code uses (Katsumata et al. 2024) and
BigGAN-PyTorch's ``arch`` tables for 64 and 128 pixels, with cbgan_ext's fused spectral-norm layers and
projection head.

* G: SN-linear z → 4×4×C; residual up-blocks (BN → ReLU → nearest ×2 → 3×3 conv → BN → ReLU → 3×3 conv,
  shortcut nearest ×2 → 1×1 conv) whose BatchNorms are class-conditional: gain = 1 + W_g·y, bias = W_b·y with
  W bias-free linear maps of the label vector y (one-hot for hard labels; not spectrally normalised);
  BN → ReLU → SN 3×3 conv → tanh.
* D: residual down-blocks (the first without pre-activation; average pooling where the table says), ReLU,
  sum over space → h; out = ψ(h) + Σ_k y_k⟨E_k, h⟩ (``ProjectionHead``: SN ψ and SN bias-free E).
* SN (eps 1e-8, the released scripts') on every conv/linear but G's conditional-BN maps; orthogonal init
  (BigGAN's default; the Softlabel-GAN CIFAR script passes N(0, 0.02)).

Channel tables (× ``width``·ch, ch = 64): 32×32 G [4, 4, 4], D [4, 4, 4, 4] pooling on the first two;
64×64 G [16, 16, 8, 4, 2], D [1, 2, 4, 8, 16]; 128×128 G [16, 16, 8, 4, 2, 1], D [1, 2, 4, 8, 16, 16]
(pooling on all but the last D block); G lists the linear layer's channels, then each block's output.
BigGAN's shared embedding and hierarchical z are not implemented.
"""
import torch
from torch import nn
import torch.nn.functional as F

from ..nn import ProjectionHead, SNConv2d, SNLinear
from ..nn.upsample_conv import upsample_conv2d

SN_EPS = 1e-8
G_TABLE = {32: (4, 4, 4, 4), 64: (16, 16, 8, 4, 2), 128: (16, 16, 8, 4, 2, 1)}  # in of each block, then out
D_TABLE = {32: ((4, 4, 4, 4), (True, True, False, False)),
           64: ((1, 2, 4, 8, 16), (True, True, True, True, False)),
           128: ((1, 2, 4, 8, 16, 16), (True, True, True, True, True, False))}


def _c(mult, ch, width):
    return max(1, int(round(mult * ch * width)))


def label_vectors(y, num_classes, dtype=torch.float32):
    """Hard labels [B] int64 → one-hot [B, K]; label vectors [B, K] pass through (as ``dtype``)."""
    if y.dim() == 1 and not y.is_floating_point():
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
        return F.one_hot(y, num_classes).to(dtype)
    if y.dim() != 2 or y.shape[1] != num_classes:
        raise ValueError(f"label vectors must be [B, {num_classes}], got {tuple(y.shape)}")
    return y.to(dtype)


class LinearConditionalBatchNorm2d(nn.Module):
    """BatchNorm2d without affine parameters, then gain = 1 + W_g·y and bias = W_b·y for label vectors y."""

    def __init__(self, num_features, num_classes):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Linear(num_classes, num_features, bias=False)
        self.bias = nn.Linear(num_classes, num_features, bias=False)

    def forward(self, x, y):
        return self.bn(x) * (1 + self.gain(y))[:, :, None, None] + self.bias(y)[:, :, None, None]

    def class_gain_bias(self):
        """(each class's gain deviation from 1, its bias), [K, C] each, differentiable (for gSR)."""
        return self.gain.weight.t(), self.bias.weight.t()


def _sn_conv(*args, **kw):
    return SNConv2d(*args, eps=SN_EPS, **kw)


class GBlock(nn.Module):
    def __init__(self, cin, cout, num_classes):
        super().__init__()
        self.bn1 = LinearConditionalBatchNorm2d(cin, num_classes)
        self.conv1 = _sn_conv(cin, cout, 3, padding=1)
        self.bn2 = LinearConditionalBatchNorm2d(cout, num_classes)
        self.conv2 = _sn_conv(cout, cout, 3, padding=1)
        self.shortcut = _sn_conv(cin, cout, 1)

    def forward(self, x, y):
        # nearest ×2 then conv1 (and then the shortcut's 1×1 conv), computed without the upsampled tensors
        h = upsample_conv2d(F.relu(self.bn1(x, y)), self.conv1.forward_weight(), self.conv1.bias)
        h = self.conv2(F.relu(self.bn2(h, y)))
        return h + upsample_conv2d(x, self.shortcut.forward_weight(), self.shortcut.bias)


class DBlock(nn.Module):
    def __init__(self, cin, cout, downsample, preactivation):
        super().__init__()
        self.conv1 = _sn_conv(cin, cout, 3, padding=1)
        self.conv2 = _sn_conv(cout, cout, 3, padding=1)
        self.downsample, self.preactivation = downsample, preactivation
        self.shortcut = _sn_conv(cin, cout, 1) if (cin != cout or downsample) else None

    def forward(self, x):
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.preactivation:  # BigGAN's order: conv then pool after a pre-activated block, else pool then conv
            s = self.shortcut(s) if self.shortcut is not None else s
            s = F.avg_pool2d(s, 2) if self.downsample else s
        else:
            s = F.avg_pool2d(s, 2) if self.downsample else s
            s = self.shortcut(s) if self.shortcut is not None else s
        return h + s


class BigGANGenerator(nn.Module):
    def __init__(self, z_dim=128, channels=3, image_size=32, width=1.0, num_classes=10, ch=64):
        super().__init__()
        if image_size not in G_TABLE:
            raise ValueError(f"build_gan: biggan is defined at {sorted(G_TABLE)} pixels, got {image_size}")
        if num_classes < 1:
            raise ValueError(f"build_gan: biggan's generator is conditional: num_classes >= 1, got {num_classes}")
        c = [_c(m, ch, width) for m in G_TABLE[image_size]]
        self.z_dim, self.num_classes = int(z_dim), int(num_classes)
        self.linear = SNLinear(z_dim, 4 * 4 * c[0], eps=SN_EPS)
        self.blocks = nn.ModuleList(GBlock(a, b, num_classes) for a, b in zip(c[:-1], c[1:]))
        self.bn = nn.BatchNorm2d(c[-1])
        self.out = _sn_conv(c[-1], channels, 3, padding=1)

    def forward(self, z, y=None):
        if y is None:
            raise ValueError("biggan generator: needs labels y (hard [B] or label vectors [B, K])")
        y = label_vectors(y, self.num_classes, z.dtype)
        if y.shape[0] != z.shape[0]:
            raise ValueError(f"biggan generator: {z.shape[0]} latents but {y.shape[0]} labels")
        h = self.linear(z).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.out(F.relu(self.bn(h))))


class BigGANDiscriminator(nn.Module):
    """``features(x)`` is h; ``forward(x, y)`` the projection output [B] for hard [B] or soft [B, K] labels."""

    def __init__(self, channels=3, image_size=32, width=1.0, num_classes=10, ch=64):
        super().__init__()
        if image_size not in D_TABLE:
            raise ValueError(f"build_gan: biggan is defined at {sorted(D_TABLE)} pixels, got {image_size}")
        mults, down = D_TABLE[image_size]
        c = [channels] + [_c(m, ch, width) for m in mults]
        self.blocks = nn.ModuleList(DBlock(c[i], c[i + 1], down[i], preactivation=i > 0) for i in range(len(mults)))
        self.feature_dim, self.num_classes, self.d_head = c[-1], int(num_classes), "projection"
        self.head = ProjectionHead(c[-1], num_classes, spectral_norm=True)
        for m in (self.head.psi, self.head.embed):
            m._sn.eps = SN_EPS

    def features(self, x):
        h = x
        for block in self.blocks:
            h = block(h)
        return F.relu(h).sum(dim=(2, 3))

    def forward(self, x, y=None):
        if y is None:
            raise ValueError("biggan discriminator: the projection head needs labels y (hard [B] or soft [B, K])")
        return self.head(self.features(x), y)
