"""CIFAR-style ResNet (He et al. 2016, §4.2) as LDAM-DRW and CBGAN use it: ResNet-32 = 3 stages × 5 basic blocks.

Follows LDAM-DRW's ``models/resnet_cifar.py``: 3×3 stem, stages of 16/32/64 channels (× ``width``), option-A
shortcuts (stride-2 subsampling + zero channel padding, no parameters), Kaiming-normal init, global average
pooling, and a cosine ``NormedLinear`` head for LDAM (``normed_linear=True``; the cosines are multiplied by
``logit_scale``, LDAM's s = 30, inside the model so its softmax at inference is the trained one). Inputs are
in [−1, 1], the generator's range, so the classifier sits in a GAN loop without renormalisation.
"""
import torch
import torch.nn.functional as F
from torch import nn


class NormedLinear(nn.Module):
    """Cosine similarity between normalised features and normalised class weights (LDAM's head)."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))

    def forward(self, x):
        return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


class _ShortcutA(nn.Module):
    def __init__(self, out_planes, in_planes):
        super().__init__()
        self.pad = (out_planes - in_planes) // 2
        self.extra = out_planes - in_planes - 2 * self.pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad + self.extra))


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(planes, in_planes) if (stride != 1 or in_planes != planes) else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; ``features(x)`` is the pooled penultimate vector [B, feature_dim]."""

    def __init__(self, num_classes=10, in_channels=3, depth=32, width=1.0, normed_linear=False, logit_scale=30.0):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CifarResNet: depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"CifarResNet: in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        if not width > 0:
            raise ValueError(f"CifarResNet: width must be > 0, got {width}")
        n = (depth - 2) // 6
        planes = [max(1, int(round(p * width))) for p in (16, 32, 64)]
        self.config = dict(num_classes=int(num_classes), in_channels=int(in_channels), depth=int(depth),
                           width=float(width), normed_linear=bool(normed_linear), logit_scale=float(logit_scale))
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        layers, in_planes = [], planes[0]
        for i, p in enumerate(planes):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, p, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = p
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.feature_dim = planes[2]
        self.linear = NormedLinear(planes[2], num_classes) if normed_linear else nn.Linear(planes[2], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @property
    def num_classes(self):
        return self.config["num_classes"]

    def features(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return out.mean(dim=(2, 3))

    def forward(self, x):
        out = self.linear(self.features(x))
        return out * self.config["logit_scale"] if self.config["normed_linear"] else out


def resnet32(num_classes=10, in_channels=3, width=1.0, normed_linear=False, logit_scale=30.0):
    return CifarResNet(num_classes, in_channels, 32, width, normed_linear, logit_scale)


def build_classifier(config):
    """A CifarResNet from its ``config`` dict (as stored in checkpoints)."""
    return CifarResNet(**config)


def load_classifier(path: str, map_location="cpu", eval_mode: bool = True, freeze: bool = True) -> "CifarResNet":
    """A trained classifier from a ``train-classifier`` checkpoint; the checkpoint dict is ``model.checkpoint_info``.

    It expects what it was trained on: images [B, C, S, S] in [-1, 1] (C and S from the checkpoint; a GAN's
    tanh output); other shapes are refused with one line. ``freeze`` (default) turns off its parameters'
    gradients, so a generator trained against it does not also fill gradients in it."""
    from ..train import checkpoint
    ckpt = checkpoint.load(path, map_location=map_location, what="classifier")
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        hint = " (it is a GAN run's checkpoint)" if isinstance(ckpt, dict) and "modules" in ckpt else ""
        raise ValueError(f"classifier {path} is not a cbgan_ext classifier checkpoint (from train-classifier){hint}")
    model = build_classifier(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])  # copies into the CPU-built model: move it where asked
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.checkpoint_info = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer")}
    size = (ckpt.get("dataset") or {}).get("image_size")
    model.register_forward_pre_hook(_input_check(path, int(ckpt["model_config"]["in_channels"]), size))
    if eval_mode:
        model.eval()
    if freeze:
        model.requires_grad_(False)
    return model


def _input_check(path, channels, size):
    want = f"[B, {channels}, {size}, {size}]" if size else f"[B, {channels}, H, W]"

    def check(module, args):
        x = args[0] if args else None
        ok = isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == channels
        if not (ok and (not size or tuple(x.shape[-2:]) == (size, size))):
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"classifier {path}: expects images {want} in [-1, 1], as it was trained, got {got}")
    return check
